"""The ORPO loss against a float64 reference, and at its numerical edges (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from orpo.loss import (
    MAX_AVG_LOGP,
    SequenceLogps,
    log1mexp,
    odds_ratio_loss,
    orpo_loss,
    pair_counts,
    pair_logps,
    selective_log_softmax,
    sequence_logps,
    token_logps,
)


def reference_or_loss(lp_c: torch.Tensor, lp_r: torch.Tensor, beta: float) -> torch.Tensor:
    """Textbook formula in float64 (no clamping), per pair, positive = minimised."""
    lp_c, lp_r = lp_c.double(), lp_r.double()
    log_odds = (lp_c - lp_r) - (torch.log(1 - torch.exp(lp_c)) - torch.log(1 - torch.exp(lp_r)))
    return -beta * F.logsigmoid(log_odds)


def test_log1mexp_matches_float64_reference_across_range():
    x = -torch.logspace(-5, 2, 500, dtype=torch.float64)
    expected = torch.log(-torch.expm1(x))
    assert torch.allclose(log1mexp(x.float()).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [0.0, -1e-30, -1e-8, -2.9e-8, -1e-7, -math.log(2), -50.0, -1e4, float("-inf")])
def test_log1mexp_finite_value_and_gradient_at_edges(value):
    x = torch.tensor([value], requires_grad=True)
    y = log1mexp(x)
    y.sum().backward()
    assert torch.isfinite(y).all(), y
    assert torch.isfinite(x.grad).all(), x.grad


def test_naive_where_formula_has_nan_gradient_that_ours_avoids():
    """Documents the peer defect: the unused branch poisons the gradient near 0."""
    x = torch.tensor([-1e-8], requires_grad=True)
    naive = torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))
    naive.sum().backward()
    naive_grad = x.grad.clone()
    x.grad = None
    log1mexp(x).sum().backward()
    assert not torch.isfinite(naive_grad).all() or naive_grad.abs().item() > 1e7
    assert torch.isfinite(x.grad).all()


def test_odds_ratio_loss_matches_reference_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    lp_c = -torch.rand(256, generator=gen, dtype=torch.float64) * 8 - 1e-3
    lp_r = -torch.rand(256, generator=gen, dtype=torch.float64) * 8 - 1e-3
    out = odds_ratio_loss(lp_c.float(), lp_r.float(), beta=0.25)
    ref = reference_or_loss(lp_c, lp_r, 0.25)
    assert torch.allclose(out.losses.double(), ref, rtol=1e-4, atol=1e-6)
    assert torch.allclose(out.chosen_rewards.double(), 0.25 * lp_c, rtol=1e-6)
    assert torch.allclose(out.log_sigmoid_odds.double(), -ref / 0.25, rtol=1e-4, atol=1e-6)
    # float64 in -> float64 out, same values to ~1e-12
    out64 = odds_ratio_loss(lp_c, lp_r, beta=0.25)
    assert out64.losses.dtype == torch.float64
    assert torch.allclose(out64.losses, ref, rtol=1e-10, atol=1e-12)


def test_odds_ratio_gradients_match_reference():
    gen = torch.Generator().manual_seed(1)
    lp_c = (-torch.rand(64, generator=gen, dtype=torch.float64) * 5 - 0.01).requires_grad_()
    lp_r = (-torch.rand(64, generator=gen, dtype=torch.float64) * 5 - 0.01).requires_grad_()
    odds_ratio_loss(lp_c, lp_r, 0.1).losses.sum().backward()
    ours = (lp_c.grad.clone(), lp_r.grad.clone())
    lp_c.grad = lp_r.grad = None
    reference_or_loss(lp_c, lp_r, 0.1).sum().backward()
    assert torch.allclose(ours[0], lp_c.grad, rtol=1e-8)
    assert torch.allclose(ours[1], lp_r.grad, rtol=1e-8)


def test_sign_convention_lower_loss_when_chosen_more_likely():
    better = odds_ratio_loss(torch.tensor([-0.5]), torch.tensor([-3.0]), 0.1).losses
    worse = odds_ratio_loss(torch.tensor([-3.0]), torch.tensor([-0.5]), 0.1).losses
    assert (better >= 0).all() and (worse >= 0).all()
    assert better.item() < worse.item()
    assert math.isclose(
        odds_ratio_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), 0.1).losses.item(), 0.1 * math.log(2), rel_tol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("c", "r"),
    [
        (0.0, 0.0),
        (0.0, -1.0),
        (-1.0, 0.0),
        (-1e-9, -1e-9),
        (float("-inf"), -1.0),
        (-1.0, float("-inf")),
        (float("-inf"), float("-inf")),
        (-1e4, -1e-3),
        (-30.0, -0.0),
    ],
)
def test_odds_ratio_finite_values_and_gradients_at_edges(dtype, c, r):
    lp_c = torch.tensor([c], dtype=dtype, requires_grad=True)
    lp_r = torch.tensor([r], dtype=dtype, requires_grad=True)
    out = odds_ratio_loss(lp_c, lp_r, beta=0.1)
    out.losses.sum().backward()
    for tensor in (out.losses, out.log_odds, out.log_sigmoid_odds, lp_c.grad, lp_r.grad):
        assert torch.isfinite(tensor.float()).all(), (c, r, dtype, tensor)
    assert out.losses.dtype == torch.float32  # half inputs are upcast


def test_invalid_pairs_contribute_nothing():
    lp_c = torch.tensor([-1.0, 0.0], requires_grad=True)
    lp_r = torch.tensor([-2.0, -1.0], requires_grad=True)
    out = odds_ratio_loss(lp_c, lp_r, 0.1, valid=torch.tensor([True, False]))
    out.losses.sum().backward()
    assert out.losses[1].item() == 0.0 and out.log_odds[1].item() == 0.0
    assert lp_c.grad[1].item() == 0.0 and lp_r.grad[1].item() == 0.0
    assert torch.isclose(out.losses[0], reference_or_loss(lp_c[:1], lp_r[:1], 0.1).float()[0])


def test_avg_logp_at_zero_is_clamped_documented_ceiling():
    out = odds_ratio_loss(torch.tensor([0.0]), torch.tensor([MAX_AVG_LOGP]), 0.1)
    assert out.log_odds.item() == 0.0


def test_selective_log_softmax_matches_log_softmax_and_grads():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(37, 53, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 53, (37,), generator=gen)
    assert torch.autograd.gradcheck(lambda x: selective_log_softmax(x, index).double(), (logits,), atol=1e-4)
    expected = torch.log_softmax(logits, -1).gather(-1, index[:, None]).squeeze(1)
    assert torch.allclose(selective_log_softmax(logits.float(), index).double(), expected, atol=1e-5)


def test_selective_log_softmax_bf16_close_to_fp32():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 1000, generator=gen) * 4
    index = torch.randint(0, 1000, (16,), generator=gen)
    lp_bf16 = selective_log_softmax(logits.bfloat16(), index)
    lp_fp32 = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, index[:, None]).squeeze(1)
    assert lp_bf16.dtype == torch.float32
    assert torch.allclose(lp_bf16, lp_fp32, atol=1e-5)


def test_sequence_logps_sums_counts_and_shift():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[-100, 0, 1, 2]])  # position t scores labels[t+1]
    out = sequence_logps(logits, labels)
    expected = math.log(0.5) + math.log(0.8) + math.log(0.6)
    assert out.count.tolist() == [3]
    assert math.isclose(out.sum.item(), expected, rel_tol=1e-6)
    assert math.isclose(out.mean.item(), expected / 3, rel_tol=1e-6)


def test_empty_completion_is_invalid_not_nan():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.full((2, 5), -100)
    labels[0, 2:] = 3
    out = sequence_logps(logits, labels)
    assert out.count.tolist() == [3, 0]
    assert out.valid.tolist() == [True, False]
    assert torch.isfinite(out.mean).all()
    chosen = SequenceLogps(*(t[:1] for t in out))
    rejected = SequenceLogps(*(t[1:] for t in out))
    result = orpo_loss(chosen, rejected, beta=0.1)
    result.loss.backward()
    assert torch.isfinite(result.loss) and torch.isfinite(logits.grad).all()
    assert result.or_loss.item() == 0.0  # the only pair is invalid
    assert result.nll_loss.item() == 0.0


def test_orpo_loss_total_equals_nll_plus_mean_or_term():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 6, 11, generator=gen)
    labels = torch.randint(0, 11, (4, 6), generator=gen)
    labels[:, :2] = -100
    per = sequence_logps(logits, labels)
    chosen, rejected = SequenceLogps(*(t[:2] for t in per)), SequenceLogps(*(t[2:] for t in per))
    out = orpo_loss(chosen, rejected, beta=0.3)
    lp = torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    lp = lp * (labels[:, 1:] != -100)
    nll = -lp[:2].sum() / (labels[:2, 1:] != -100).sum()
    avg = lp.sum(-1) / (labels[:, 1:] != -100).sum(-1)
    or_term = reference_or_loss(avg[:2], avg[2:], 0.3).mean()
    assert math.isclose(out.nll_loss.item(), nll.item(), rel_tol=1e-5)
    assert math.isclose(out.loss.item(), (nll + or_term).item(), rel_tol=1e-5)


def test_token_logps_zero_where_unscored():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[-100, -100, 2, -100]])
    logps, mask = token_logps(logits, labels)
    assert mask.tolist() == [[False, True, False]]
    assert logps[0, 0].item() == 0.0 and logps[0, 2].item() == 0.0 and logps[0, 1].item() < 0


# ---- pair_logps: the reduction compute_loss and the accumulation-window counts both use ---------------------


def _hand_batch():
    """3 pairs, L=6: pair 1's rejected completion is empty; nll_labels score prompt and completion."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 6, 7, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 7, (6, 6), generator=gen)
    lengths = [6, 5, 6, 4, 3, 6]  # real tokens per row (chosen 0..2, rejected 0..2)
    prompts = [2, 3, 1, 2, 3, 4]  # rejected of pair 1 (row 4): prompt 3 of 3 tokens, nothing left
    labels = torch.full((6, 6), -100)
    nll_labels = torch.full((6, 6), -100)
    for row, (length, prompt) in enumerate(zip(lengths, prompts, strict=True)):
        labels[row, prompt:length] = ids[row, prompt:length]
        nll_labels[row, 1:length] = ids[row, 1:length]
    return logits, labels, nll_labels


def _scored(logits, labels, nll_labels):
    """Token log-probs as orpo.scoring.logps lays them out: completion labels, plus the NLL's prompt labels."""
    targets = torch.where(labels != -100, labels, nll_labels) if nll_labels is not None else labels
    return token_logps(logits, targets)[0]


def test_pair_logps_equals_a_float64_hand_computation():
    logits, labels, nll_labels = _hand_batch()
    pairs = pair_logps(_scored(logits, labels, nll_labels), labels, nll_labels)
    logp = torch.log_softmax(logits, -1)

    def token(row, t):  # log-prob of the token at t, predicted from position t - 1
        return logp[row, t - 1, (labels[row, t] if labels[row, t] != -100 else nll_labels[row, t])].item()

    sums, counts = [], []
    for row in range(6):
        scored = [t for t in range(1, 6) if labels[row, t] != -100]
        sums.append(sum(token(row, t) for t in scored))
        counts.append(len(scored))
    assert counts == [4, 2, 5, 2, 0, 2]
    assert pairs.chosen.count.tolist() == counts[:3] and pairs.rejected.count.tolist() == counts[3:]
    for got, want in ((pairs.chosen, sums[:3]), (pairs.rejected, sums[3:])):
        torch.testing.assert_close(got.sum, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    means = [s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)]
    torch.testing.assert_close(pairs.chosen.mean, torch.tensor(means[:3], dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(pairs.rejected.mean, torch.tensor(means[3:], dtype=torch.float64), rtol=1e-12, atol=0)
    assert pairs.valid.tolist() == [True, False, True]
    # The NLL: every labelled token of the chosen rows of valid pairs, prompt included.
    nll_tokens = [(row, t) for row in (0, 2) for t in range(1, 6) if nll_labels[row, t] != -100]
    assert len(nll_tokens) == 5 + 5
    expected_mask = torch.zeros(3, 5, dtype=torch.bool)
    for row, t in nll_tokens:
        expected_mask[row, t - 1] = True
    assert torch.equal(pairs.nll_mask, expected_mask)
    assert pairs.nll_logp_sum.item() == pytest.approx(sum(token(r, t) for r, t in nll_tokens), rel=1e-12)
    assert [c.item() for c in pairs.counts] == [10, 2]
    assert [c.item() for c in pair_counts(labels, nll_labels)] == [10, 2]
    assert torch.equal(pairs.completion_mask, labels[:, 1:] != -100)
    # The loss: token-weighted NLL, odds-ratio term averaged over the 2 valid pairs.
    out = orpo_loss(pairs.chosen, pairs.rejected, 0.2, pairs.nll_logp_sum, *pairs.counts)
    nll = -sum(token(r, t) for r, t in nll_tokens) / 10
    chosen, rejected = (torch.tensor(m, dtype=torch.float64) for m in ([means[0], means[2]], [means[3], means[5]]))
    odds = reference_or_loss(chosen, rejected, 0.2)
    assert out.nll_loss.item() == pytest.approx(nll, rel=1e-12)
    assert out.or_loss.item() == pytest.approx(odds.mean().item(), rel=1e-12)
    assert out.odds.losses[1].item() == 0.0


def test_pair_logps_nll_defaults_to_the_chosen_completions():
    logits, labels, _ = _hand_batch()
    pairs = pair_logps(_scored(logits, labels, None), labels)
    assert torch.equal(pairs.nll_mask, (labels[:3, 1:] != -100) & torch.tensor([True, False, True])[:, None])
    assert pairs.nll_logp_sum.item() == pytest.approx((pairs.chosen.sum * pairs.valid).sum().item(), rel=1e-12)
    # the same NLL as orpo_loss's own default
    default = orpo_loss(pairs.chosen, pairs.rejected, 0.1)
    explicit = orpo_loss(pairs.chosen, pairs.rejected, 0.1, pairs.nll_logp_sum, *pairs.counts)
    assert explicit.loss.item() == pytest.approx(default.loss.item(), rel=1e-12)


def test_pair_logps_agrees_with_sequence_logps():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 7, 9, generator=gen)
    labels = torch.randint(0, 9, (4, 7), generator=gen)
    labels[:, :3] = -100
    labels[3, 5:] = -100
    per_seq = sequence_logps(logits, labels)
    pairs = pair_logps(token_logps(logits, labels)[0], labels)
    for got, rows in ((pairs.chosen, slice(0, 2)), (pairs.rejected, slice(2, 4))):
        for ours, theirs in zip(got, per_seq, strict=True):
            assert torch.equal(ours, theirs[rows])


def test_pair_counts_equal_the_reduction_counts_on_random_batches():
    gen = torch.Generator().manual_seed(7)
    for trial in range(20):
        labels = torch.randint(0, 5, (6, 8), generator=gen)
        labels[torch.rand(6, 8, generator=gen) < 0.6] = -100
        nll_labels = None
        if trial % 2:
            nll_labels = torch.randint(0, 5, (6, 8), generator=gen)
            nll_labels[torch.rand(6, 8, generator=gen) < 0.3] = -100
        scores = torch.randn(6, 7, generator=gen) * (labels[:, 1:] != -100)
        counts = pair_logps(scores, labels, nll_labels).counts
        assert [c.item() for c in pair_counts(labels, nll_labels)] == [c.item() for c in counts]


def test_pair_logps_names_a_malformed_batch():
    with pytest.raises(ValueError, match=r"labels of shape \(3, 4\): a batch holds 2B rows"):
        pair_counts(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token log-probs of shape \(4, 4\) do not match labels of shape \(4, 4\)"):
        pair_logps(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long))
