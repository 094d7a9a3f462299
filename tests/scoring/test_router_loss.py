"""The load-balancing loss of MoE models in every layout, against a float64 reference of
transformers' ``load_balancing_loss_func`` on the same real tokens."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from orpo.demo.tiny import tiny_causal_lm, tiny_moe_lm
from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.moe import RouterCapture, RouterLoss, forward_options
from orpo.scoring.packing import ORPOPaddingFreeCollator, ORPOSharedPromptCollator
from orpo.scoring.scorer import TokenScorer
from orpo.training.metrics import MetricWindows, window_loss


def reference_aux(gates: list[torch.Tensor], experts: int, top_k: int, mask: torch.Tensor) -> float:
    """Switch Transformer's load-balancing loss in float64 (transformers' formula): over every layer's
    real tokens, experts * sum_e (share of top-k assignments to e) * (mean router probability of e)."""
    logits = torch.cat([gate.double() for gate in gates])
    weight = mask.reshape(-1).double().repeat(len(gates))
    probs = torch.softmax(logits, dim=-1)
    chosen = torch.topk(probs, top_k, dim=-1).indices
    counts = torch.zeros(experts, dtype=torch.float64).scatter_add_(
        0, chosen.reshape(-1), weight.repeat_interleave(top_k)
    )
    tokens = weight.sum()
    return float(experts * ((counts / tokens) * ((probs * weight[:, None]).sum(0) / tokens)).sum())


def _features(seed: int = 0, n: int = 3) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)

    def ids(low: int, high: int) -> list[int]:
        return [rng.randrange(5, 300) for _ in range(rng.randrange(low, high))]

    return [
        {"prompt_input_ids": ids(3, 9), "chosen_input_ids": ids(2, 8), "rejected_input_ids": ids(2, 8)}
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def mixtral(tokenizer):
    return tiny_moe_lm(tokenizer, "mixtral", output_router_logits=True).eval()


def _aux(model, batch) -> float:
    _, aux = RouterLoss(enabled=True).score(TokenScorer(fused=False), model, batch)
    assert aux is not None and aux.dtype == torch.float32
    return float(aux.detach())


def _padded_gates(model, padded):
    """Router logits of every layer over the padded batch, from the model's own outputs."""
    with torch.no_grad():
        out = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], output_router_logits=True)
    return list(out.router_logits), out.aux_loss


def test_reference_is_transformers_own_function(mixtral):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    gates = [torch.randn(12, 4), torch.randn(12, 4)]
    mask = torch.tensor([[1] * 5 + [0], [1] * 6], dtype=torch.long)
    got = float(load_balancing_loss_func(tuple(gates), 4, 2, mask))
    assert got == pytest.approx(reference_aux(gates, 4, 2, mask), rel=1e-6)
    # padding counted would change it: the mask matters
    assert abs(float(load_balancing_loss_func(tuple(gates), 4, 2, None)) - got) > 1e-3


def test_padded_is_the_models_own_aux_loss_over_real_tokens(mixtral):
    padded = ORPODataCollator(pad_token_id=0)(_features())
    gates, own = _padded_gates(mixtral, padded)
    got = _aux(mixtral, padded)
    assert got == float(own)  # the same function on the same logits and mask
    assert got == pytest.approx(reference_aux(gates, 4, 2, padded["attention_mask"]), rel=1e-6)


@pytest.mark.parametrize("multiple", [None, 16], ids=["no-padding", "row-padded"])
def test_padding_free_counts_each_sequence_token_once_and_no_padding(mixtral, multiple):
    features = _features()
    padded = ORPODataCollator(pad_token_id=0)(features)
    row = ORPOPaddingFreeCollator(pad_token_id=0, pad_to_multiple_of=multiple)(features)
    assert (row["input_ids"].shape[1] > row["row_tokens"]) == (multiple is not None)
    gates, _ = _padded_gates(mixtral, padded)
    expected = reference_aux(gates, 4, 2, padded["attention_mask"])
    assert _aux(mixtral, row) == pytest.approx(expected, rel=1e-5)
    assert _aux(mixtral, row) == pytest.approx(_aux(mixtral, padded), rel=1e-5)


def test_shared_prompt_counts_each_prompt_once_per_pair(mixtral):
    features = _features()
    padded = ORPODataCollator(pad_token_id=0)(features)
    row = ORPOSharedPromptCollator(pad_token_id=0, pad_to_multiple_of=16)(features)
    gates, _ = _padded_gates(mixtral, padded)
    # the real tokens of the shared row, read off the padded rows: prompt and chosen from the chosen
    # row, the rejected completion (without its prompt) from the rejected row
    length, pairs = padded["input_ids"].shape[1], len(features)
    once = torch.zeros(2 * pairs, length, dtype=torch.long)
    for i, f in enumerate(features):
        p, c, r = (len(f[k]) for k in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"))
        once[i, : p + c] = 1
        once[pairs + i, p : p + r] = 1
    assert int(once.sum()) == row["row_tokens"]
    expected = reference_aux(gates, 4, 2, once)
    assert _aux(mixtral, row) == pytest.approx(expected, rel=1e-5)
    # not the padded value: each prompt is one forward position, counted once
    assert abs(_aux(mixtral, row) - reference_aux(gates, 4, 2, padded["attention_mask"])) > 1e-4


def test_a_row_run_padded_uses_the_padded_mask(mixtral):
    features = _features()
    row = ORPOPaddingFreeCollator(pad_token_id=0)(features)
    scorer = TokenScorer(fused=False)
    scorer._rows_ok[row["orpo_layout"]] = False  # what a failed probe leaves: the batch runs padded
    _, aux = RouterLoss(enabled=True).score(scorer, mixtral, row)
    padded = ORPODataCollator(pad_token_id=0)(features)
    assert float(aux) == _aux(mixtral, padded)


def test_the_fused_head_gives_the_same_aux_loss(mixtral):
    row = ORPOSharedPromptCollator(pad_token_id=0)(_features())
    scorer = TokenScorer(fused=True)
    _, aux = RouterLoss(enabled=True).score(scorer, mixtral, row)
    assert scorer.uses_fused is True
    assert float(aux) == pytest.approx(_aux(mixtral, row), rel=1e-6)


def test_the_scoring_forward_turns_the_models_own_aux_loss_off(tokenizer, mixtral):
    assert forward_options(mixtral) == {"use_cache": False, "output_router_logits": False}
    dense = tiny_causal_lm(tokenizer)
    assert forward_options(dense) == {"use_cache": False}
    assert RouterCapture.of(dense) is None
    capture = RouterCapture.of(mixtral)
    assert capture is not None and (len(capture.modules), capture.num_experts, capture.top_k) == (2, 4, 2)


def test_options_and_model_config_decide(tokenizer):
    model = tiny_moe_lm(tokenizer, "mixtral", router_aux_loss_coef=0.25)
    assert RouterLoss().resolve(model) == (False, 0.25)
    assert RouterLoss(enabled=True, coef=0.5).resolve(model) == (True, 0.5)
    assert not model.config.output_router_logits and model.config.router_aux_loss_coef == 0.25  # left as given
    with pytest.raises(ValueError, match=r"^output_router_logits: LlamaForCausalLM has no router"):
        RouterLoss(enabled=True).resolve(tiny_causal_lm(tokenizer))
    assert RouterLoss().resolve(tiny_causal_lm(tokenizer)) == (False, 0.0)


def test_disabled_scores_without_aux(mixtral):
    padded = ORPODataCollator(pad_token_id=0)(_features())
    _, aux = RouterLoss(enabled=False).score(TokenScorer(fused=False), mixtral, padded)
    assert aux is None


def test_the_window_averages_aux_loss_per_micro_batch_and_adds_it_to_the_loss():
    from orpo.loss import orpo_loss, pair_logps

    windows = MetricWindows()
    labels = torch.tensor([[0, 5, 6], [0, 7, -100]])
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    pairs = pair_logps(logps, labels)
    out = orpo_loss(pairs.chosen, pairs.rejected, 0.1, pairs.nll_logp_sum, *pairs.counts)
    scores = SimpleNamespace(logit_means=torch.zeros(2, 2))
    for aux in (1.5, 2.5):
        windows.record("train", out, pairs, scores, torch.tensor(aux))
    metrics = windows.pop("train", "cpu")
    assert metrics["aux_loss"] == 2.0
    assert window_loss(metrics, 0.1, 0.5) == metrics["nll_loss"] - 0.1 * metrics["log_odds_ratio"] + 0.5 * 2.0
    windows.record("train", out, pairs, scores)
    assert "aux_loss" not in windows.pop("train", "cpu")
