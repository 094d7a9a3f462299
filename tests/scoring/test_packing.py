"""Row batches (padding-free, shared prompt): the collators, and row scores == padded scores (fp32, exact),
attention per segment, without host syncs."""

from __future__ import annotations

import logging
import os
import random

import pytest
import torch

import orpo
from orpo.demo.tiny import tiny_causal_lm
from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.layouts import LAYOUT_KEY, SEGMENTS_KEY, Layout, layout_of, padded_of
from orpo.scoring.logps import fused_scores, plain_scores, row_scores, verify_packing
from orpo.scoring.packing import ORPOPaddingFreeCollator, ORPOSharedPromptCollator
from orpo.scoring.routing import use_segment_attention
from orpo.scoring.scorer import TokenScorer
from orpo.scoring.segments import Call
from orpo.training.reliability.host_syncs import detect_host_syncs


def _features(tokenizer, n: int = 3, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    vocab = len(tokenizer)

    def ids(low: int, high: int) -> list[int]:
        return [rng.randrange(5, vocab) for _ in range(rng.randrange(low, high))]

    return [
        {
            "prompt_input_ids": [tokenizer.bos_token_id, *ids(2, 9)],
            "chosen_input_ids": ids(1, 7),
            "rejected_input_ids": ids(1, 7),
        }
        for _ in range(n)
    ]


def _collate(tokenizer, features, nll_scope="completion", multiple=None):
    kwargs = {"pad_token_id": tokenizer.pad_token_id, "nll_scope": nll_scope, "pad_to_multiple_of": multiple}
    return ORPODataCollator(**kwargs)(features), ORPOPaddingFreeCollator(**kwargs)(features)


def _assert_scored_positions(row, padded, nll_scope):
    """score_index lists the padded layout's scored positions (row-major); score_source the row token
    that predicts each: the token before the target in its own sequence."""
    targets = padded["labels"][:, 1:]
    if nll_scope == "prompt_and_completion":
        targets = torch.where(targets != -100, targets, padded["nll_labels"][:, 1:])
    rows, cols = (targets != -100).nonzero(as_tuple=True)
    assert torch.equal(row["score_index"], rows * targets.shape[1] + cols)
    assert torch.equal(row["input_ids"][0, row["score_source"]], padded["input_ids"][rows, cols])
    # ... and the token after the source, in the same sequence, is the target (positions go up by one)
    assert torch.equal(row["position_ids"][0, row["score_source"]], cols)


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
def test_packed_row_layout(tokenizer, nll_scope):
    features = _features(tokenizer)
    padded, packed = _collate(tokenizer, features, nll_scope)
    assert layout_of(packed) is Layout.PADDING_FREE and layout_of(padded) is Layout.PADDED
    assert "attention_mask" not in packed
    ids, pos = packed["input_ids"][0], packed["position_ids"][0]
    lengths = padded["attention_mask"].sum(-1).tolist()
    assert ids.shape[0] == sum(lengths) == pos.shape[0]
    segments = packed[SEGMENTS_KEY]
    assert segments.layout is Layout.PADDING_FREE and segments.total == sum(lengths)
    start, calls = 0, []
    for row, length in enumerate(lengths):  # chosen 0..B-1 then rejected 0..B-1, in row order
        span = slice(start, start + length)
        assert torch.equal(ids[span], padded["input_ids"][row, :length])
        assert torch.equal(pos[span], torch.arange(length))
        calls.append(Call(start, start + length))
        start += length
    assert segments.calls == tuple(calls)  # one causal call per sequence
    _assert_scored_positions(packed, padded, nll_scope)
    # The padded layout's labels travel unchanged (the loss and the window counts read them).
    assert torch.equal(packed["labels"], padded["labels"])
    assert ("nll_labels" in packed) == (nll_scope == "prompt_and_completion")


def test_pad_to_multiple_of_pads_the_row_as_its_own_sequence(tokenizer):
    features = _features(tokenizer, seed=1)
    padded, packed = _collate(tokenizer, features, multiple=16)
    real = int(padded["attention_mask"].sum())
    total = packed["input_ids"].shape[1]
    assert total % 16 == 0 and real < total < real + 16  # seed 1 leaves a remainder
    assert packed[SEGMENTS_KEY].total == total
    assert packed[SEGMENTS_KEY].calls[-1] == Call(real, total)
    assert torch.equal(packed["position_ids"][0, real:], torch.arange(total - real))
    assert (packed["input_ids"][0, real:] == tokenizer.pad_token_id).all()
    assert int(packed["score_source"].max()) < real  # nothing scored on padding


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
@pytest.mark.parametrize("collator", [ORPOPaddingFreeCollator, ORPOSharedPromptCollator])
def test_padded_of_restores_the_padded_batch(tokenizer, nll_scope, collator):
    features = _features(tokenizer, seed=2)
    kwargs = {"pad_token_id": tokenizer.pad_token_id, "nll_scope": nll_scope, "pad_to_multiple_of": 8}
    padded, row = ORPODataCollator(**kwargs)(features), collator(**kwargs)(features)
    restored = padded_of(row)
    assert set(restored) == set(padded)
    assert restored[LAYOUT_KEY] is padded[LAYOUT_KEY] is Layout.PADDED
    for key, value in padded.items():
        if key != LAYOUT_KEY:
            assert torch.equal(restored[key], value), key


def _scores_and_grads(model, batch, fused, weights):
    model.zero_grad(set_to_none=True)
    scorer = TokenScorer(fused)
    scores = scorer(model, batch)
    (scores.logps * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return scorer, scores, grads


@pytest.mark.parametrize(
    ("arch", "attn", "fused", "tied"),
    [
        ("llama", "sdpa", True, False),
        ("llama", "eager", False, False),
        ("qwen2", "sdpa", False, True),
        ("qwen2", "eager", True, True),
    ],
)
def test_packed_scores_and_gradients_match_padded(tokenizer, arch, attn, fused, tied):
    model = tiny_causal_lm(tokenizer, arch=arch, tie_word_embeddings=tied)
    model.config._attn_implementation = attn
    padded, packed = _collate(tokenizer, _features(tokenizer, n=3, seed=3), "prompt_and_completion")
    weights = torch.rand(padded["labels"][:, 1:].shape, generator=torch.Generator().manual_seed(0))
    _, ref, ref_grads = _scores_and_grads(model, padded, fused, weights)
    scorer, got, grads = _scores_and_grads(model, packed, fused, weights)
    assert scorer.uses_packing is True
    assert scorer.uses_fused is fused
    assert torch.equal(got.mask, ref.mask) and torch.equal(got.targets, ref.targets)
    torch.testing.assert_close(got.logps, ref.logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logit_means, ref.logit_means, rtol=1e-5, atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("collator", [ORPOPaddingFreeCollator, ORPOSharedPromptCollator])
def test_row_scores_place_every_scored_token(tokenizer, collator):
    model = tiny_causal_lm(tokenizer)
    features = _features(tokenizer, seed=4)
    padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id)(features)
    row = collator(pad_token_id=tokenizer.pad_token_id)(features)
    use_segment_attention(model, "orpo_sdpa")
    ref = plain_scores(model, padded, -100)
    got = row_scores(model, row, -100, None)
    assert torch.equal(got.mask, ref.mask) and torch.equal(got.targets, ref.targets)
    assert torch.equal(got.logps != 0, got.mask)
    torch.testing.assert_close(got.logps, ref.logps, rtol=1e-5, atol=1e-5)


class _MixesSequences(torch.nn.Module):
    """A model whose forward drops the segments, the mask and the position ids: the sequences of a row see each other."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, position_ids=None, **kwargs):
        kwargs.pop("attention_mask", None)
        kwargs.pop(SEGMENTS_KEY, None)
        return self.inner(input_ids=input_ids, **kwargs)


def test_verify_packing_detects_a_model_that_mixes_sequences(tokenizer):
    model = tiny_causal_lm(tokenizer)
    use_segment_attention(model, "orpo_sdpa")
    _, packed = _collate(tokenizer, _features(tokenizer, seed=5))
    assert verify_packing(model, packed)
    assert not verify_packing(_MixesSequences(model), packed)


def test_unsupported_model_falls_back_to_padded_with_a_warning(tokenizer, caplog):
    inner = tiny_causal_lm(tokenizer)
    model = _MixesSequences(inner)
    padded, packed = _collate(tokenizer, _features(tokenizer, seed=6))
    weights = torch.ones(padded["labels"][:, 1:].shape)
    _, ref, ref_grads = _scores_and_grads(model, padded, False, weights)
    with caplog.at_level(logging.WARNING, logger="orpo.scoring.logps"):
        scorer, got, grads = _scores_and_grads(model, packed, False, weights)
    assert scorer.uses_packing is False
    assert any("padding_free" in record.getMessage() for record in caplog.records)
    torch.testing.assert_close(got.logps, ref.logps, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7)


def test_compiled_model_keeps_fused_and_packed_paths_exact(tokenizer):
    """torch.compile (what ``torch_compile=True`` does) must not lose the LM-head capture:
    dynamo does not guard on module hooks.  The eager backend checks dynamo without code generation."""
    model = tiny_causal_lm(tokenizer, arch="qwen2", num_layers=1, tie_word_embeddings=True)
    padded, batch = _collate(tokenizer, _features(tokenizer, seed=7), "prompt_and_completion")
    weights = torch.rand(padded["labels"][:, 1:].shape, generator=torch.Generator().manual_seed(1))
    _, ref, ref_grads = _scores_and_grads(model, padded, False, weights)
    compiled = torch.compile(model, backend="eager")
    for _ in range(2):  # the second call runs the cached graphs
        scorer, got, grads = _scores_and_grads(compiled, batch, True, weights)
        assert scorer.uses_fused is True
        assert scorer.uses_packing is True
        torch.testing.assert_close(got.logps, ref.logps, rtol=1e-5, atol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name.removeprefix("_orig_mod.")], rtol=1e-4, atol=1e-6)
    # Outside the scorer the compiled model still returns full logits.
    assert compiled(input_ids=padded["input_ids"][:1], use_cache=False).logits.shape[-1] == len(tokenizer)


# ---- shared prompt: prompt | chosen | rejected, the prompt run once ------------------------------------


def _shared(tokenizer, features, nll_scope="completion", multiple=None):
    kwargs = {"pad_token_id": tokenizer.pad_token_id, "nll_scope": nll_scope, "pad_to_multiple_of": multiple}
    return ORPOSharedPromptCollator(**kwargs)(features)


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
def test_shared_prompt_row_layout(tokenizer, nll_scope):
    features = _features(tokenizer, seed=8)
    padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8, nll_scope=nll_scope)(features)
    shared = _shared(tokenizer, features, nll_scope, multiple=8)
    assert layout_of(shared) is Layout.SHARED_PROMPT
    ids, pos = shared["input_ids"][0], shared["position_ids"][0]
    real = sum(len(f["prompt_input_ids"]) + len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in features)
    assert ids.shape[0] % 8 == 0 and ids.shape[0] > real
    start, calls = 0, []
    for feature in features:
        p, c, r = (list(feature[k]) for k in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"))
        assert ids[start : start + len(p + c + r)].tolist() == p + c + r
        assert pos[start : start + len(p + c + r)].tolist() == [*range(len(p + c)), *range(len(p), len(p + r))]
        # prompt + chosen causal; rejected sees the prompt, then itself causally
        calls += [
            Call(start, start + len(p + c)),
            Call(start + len(p + c), start + len(p + c + r), start, start + len(p)),
        ]
        start += len(p + c + r)
    calls.append(Call(real, ids.shape[0]))  # padding: a sequence of its own
    assert shared[SEGMENTS_KEY].calls == tuple(calls)
    assert torch.equal(pos[real:], torch.arange(ids.shape[0] - real))
    _assert_scored_positions(shared, padded, nll_scope)
    assert torch.equal(shared["labels"], padded["labels"])
    assert torch.equal(shared["padded_input_ids"], padded["input_ids"])


@pytest.mark.parametrize(
    ("arch", "attn", "fused", "nll_scope"),
    [
        ("llama", "sdpa", True, "completion"),
        ("llama", "eager", False, "prompt_and_completion"),
        ("qwen2", "sdpa", False, "prompt_and_completion"),
        ("qwen2", "eager", True, "completion"),
    ],
)
def test_shared_prompt_scores_and_gradients_match_padded(tokenizer, arch, attn, fused, nll_scope):
    model = tiny_causal_lm(tokenizer, arch=arch, tie_word_embeddings=arch == "qwen2")
    model.config._attn_implementation = attn
    features = _features(tokenizer, n=3, seed=9)
    padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id, nll_scope=nll_scope, pad_to_multiple_of=16)(features)
    shared = _shared(tokenizer, features, nll_scope, multiple=16)
    weights = torch.rand(padded["labels"][:, 1:].shape, generator=torch.Generator().manual_seed(2))
    _, ref, ref_grads = _scores_and_grads(model, padded, fused, weights)
    scorer, got, grads = _scores_and_grads(model, shared, fused, weights)
    assert scorer.uses_shared_prompt is True
    assert scorer.uses_fused is fused
    assert torch.equal(got.mask, ref.mask) and torch.equal(got.targets, ref.targets)
    torch.testing.assert_close(got.logps, ref.logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logit_means, ref.logit_means, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_shared_prompt_falls_back_to_padded_for_a_model_that_ignores_it(tokenizer, caplog):
    model = _MixesSequences(tiny_causal_lm(tokenizer))
    features = _features(tokenizer, seed=10)
    padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id)(features)
    weights = torch.ones(padded["labels"][:, 1:].shape)
    _, ref, _ = _scores_and_grads(model, padded, False, weights)
    with caplog.at_level(logging.WARNING, logger="orpo.scoring.logps"):
        scorer, got, _ = _scores_and_grads(model, _shared(tokenizer, features), False, weights)
    assert scorer.uses_shared_prompt is False
    assert any("shared_prompt" in record.getMessage() for record in caplog.records)
    torch.testing.assert_close(got.logps, ref.logps, rtol=1e-6, atol=1e-6)


def test_speed_switches_are_config_fields(tmp_path):
    from orpo import ORPOConfig

    defaults = ORPOConfig(output_dir=str(tmp_path), report_to="none")
    assert (defaults.layout, defaults.padding_free, defaults.shared_prompt, defaults.fused_lm_head) == (
        "auto",
        False,
        False,
        True,
    )
    assert (defaults.use_liger_kernel, defaults.torch_compile) == (False, False)
    on = ORPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        padding_free=True,
        shared_prompt=True,
        use_liger_kernel=True,
        torch_compile=True,
        train_sampling_strategy="group_by_length",
    )
    assert on.padding_free and on.shared_prompt and on.use_liger_kernel and on.torch_compile
    assert on.length_column_name == "length"  # the column prepare_preference_dataset adds


def test_shared_prompt_stays_exact_beyond_a_sliding_window(tokenizer):
    """Attention per segment applies the model's sliding window inside each call: a batch with
    sequences longer than the window runs shared too, and exactly."""
    model = tiny_causal_lm(tokenizer, arch="mistral")
    model.config.sliding_window = 10
    short = [{"prompt_input_ids": [1, 7, 8], "chosen_input_ids": [9, 10], "rejected_input_ids": [11, 12, 13]}] * 2
    long = _features(tokenizer, seed=11)
    assert max(len(f["prompt_input_ids"]) + len(f["rejected_input_ids"]) for f in long) > 10
    scorer = TokenScorer(True)
    for features in (short, long):
        padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id)(features)
        ref = TokenScorer(True)(model, padded)
        got = scorer(model, _shared(tokenizer, features))
        assert scorer.uses_shared_prompt is True
        torch.testing.assert_close(got.logps, ref.logps, rtol=1e-5, atol=1e-5)
    assert model.config._attn_implementation == "orpo_sdpa"


# ---- the one verifier behind the fused head, packing and the shared prompt ------------------------------


def test_verify_compares_warns_and_restores_the_mode(tokenizer, caplog):
    from orpo.scoring.logps import verify

    model = tiny_causal_lm(tokenizer).train()
    reference = torch.tensor([1.0, -2.0, 3.0])
    seen = []

    def run(values):
        def call():
            seen.append((model.training, torch.is_grad_enabled()))
            return values

        return call

    with caplog.at_level(logging.WARNING, logger="orpo.scoring.logps"):
        assert verify(model, run(reference), run(reference + 3e-3), 1e-3, "problem", "fallback") is True
        assert not caplog.records  # 3e-3 <= 1e-3 * (1 + 3)
        assert verify(model, run(reference), run(reference + 5e-3), 1e-3, "what differs", "what runs instead") is False
        assert [r.getMessage() for r in caplog.records] == ["what differs (max abs diff 0.005); what runs instead"]
        caplog.clear()
        # rtol adds rtol * |reference| per element: 5e-3 <= 1e-3 * 4 + 1e-3 * |3|
        assert verify(model, run(reference), run(reference + torch.tensor([0, 0, 5e-3])), 1e-3, "p", "f", 1e-3)
        nan = torch.tensor([float("nan"), 0.0, 0.0])
        assert verify(model, run(reference), run(nan), 1e-3, "p", "f") is None  # proves nothing: asked again later
        assert verify(model, run(reference * float("inf")), run(reference), 1e-3, "p", "f") is None
        assert not caplog.records
    assert set(seen) == {(False, False)}  # eval mode, no gradients
    assert model.training


def test_every_path_check_goes_through_the_one_verifier(tokenizer, monkeypatch):
    import orpo.scoring.logps as scoring

    model = tiny_causal_lm(tokenizer)
    features = _features(tokenizer, seed=12)
    padded, packed = _collate(tokenizer, features)
    checked: list[str] = []

    def disagree(model, reference, candidate, tolerance, problem, fallback, rtol=0.0):
        checked.append(problem.split(":")[0].split(" ")[0])
        return False

    monkeypatch.setattr(scoring, "verify", disagree)
    expected = plain_scores(model, padded, -100).logps
    for batch, layout in ((packed, "padding_free"), (_shared(tokenizer, features), "shared_prompt")):
        checked.clear()
        scorer = TokenScorer(fused=True)
        got = scorer(model, batch)
        assert checked == [layout, "fused"]  # the layout's check, then the fused head's on the padded batch
        assert scorer.uses_fused is False
        assert (scorer.uses_packing, scorer.uses_shared_prompt) == (
            (False, None) if layout == "padding_free" else (None, False)
        )
        torch.testing.assert_close(got.logps, expected, rtol=1e-6, atol=1e-6)


def _non_finite_first(model, calls: int):
    """NaN logits on the model's first ``calls`` forwards (e.g. a bad first batch), then the real ones."""
    left = [calls]

    def hook(_module, _args, out):
        if left[0] > 0:
            left[0] -= 1
            out.logits = out.logits * float("nan")
        return out

    model.register_forward_hook(hook)
    return model


def test_a_non_finite_probe_runs_padded_and_is_asked_again(tokenizer):
    model = _non_finite_first(tiny_causal_lm(tokenizer), calls=2)  # both runs of the packing probe
    padded, packed = _collate(tokenizer, _features(tokenizer, seed=13))
    scorer = TokenScorer(fused=False)
    first = scorer(model, packed)
    assert scorer.uses_packing is None  # undecided: this batch ran padded
    torch.testing.assert_close(first.logps, plain_scores(model, padded, -100).logps, rtol=1e-6, atol=1e-6)
    second = scorer(model, packed)
    assert scorer.uses_packing is True
    torch.testing.assert_close(second.logps, first.logps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("collator", [ORPOPaddingFreeCollator, ORPOSharedPromptCollator])
def test_scoring_a_row_batch_makes_no_host_sync(tokenizer, collator, fused):
    """After the first batch's checks, scoring a row batch (forward and backward) reads nothing
    back from the device: indices come from the collator, attention slices by host ints."""
    model = tiny_causal_lm(tokenizer)
    features = _features(tokenizer, seed=14)
    row = collator(pad_token_id=tokenizer.pad_token_id, nll_scope="prompt_and_completion")(features)
    scorer = TokenScorer(fused)
    scorer(model, row)  # the checks (probes may sync; they run once)
    assert scorer.uses_fused is fused and (scorer.uses_packing or scorer.uses_shared_prompt)
    with detect_host_syncs() as syncs:
        scores = scorer(model, row)
        scores.logps.sum().backward()
    assert syncs.events == []
    padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id)(features)
    orpos = os.path.dirname(orpo.__file__)  # transformers' own mask building in a padded forward is not ours
    with detect_host_syncs(within=orpos) as syncs:  # the padded collator's score_index: gathered as well
        scorer(model, padded).logps.sum().backward()
    assert syncs.events == []
    del padded["score_index"]  # a caller's collator gives no index: selected by mask, which the detector sees
    with detect_host_syncs(raise_on_sync=False, within=orpos) as syncs:
        scorer(model, padded)
    assert any(event.startswith("boolean-mask indexing at ") for event in syncs.events)


@pytest.mark.parametrize("collator", [ORPOPaddingFreeCollator, ORPOSharedPromptCollator])
def test_row_scoring_attends_per_sequence_without_a_row_mask(tokenizer, monkeypatch, collator):
    model = tiny_causal_lm(tokenizer)  # sdpa
    row = collator(pad_token_id=tokenizer.pad_token_id)(_features(tokenizer, seed=15))
    scorer = TokenScorer(False)
    scorer(model, row)  # the first batch's checks
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def spy(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[-2], key.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    scorer(model, row)
    expected = [(c.length, c.prefix + c.length) for c in row[SEGMENTS_KEY].calls] * model.config.num_hidden_layers
    assert [(q, k) for q, k, _ in calls] == expected  # one call per sequence and layer, never the whole row
    assert all(mask is None or mask == (q, k) for q, k, mask in calls)  # masks only within a call


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
@pytest.mark.parametrize("fused", [True, False])
def test_padded_scores_gathered_by_index_equal_those_selected_by_mask(tokenizer, fused, nll_scope):
    """The padded collator's score_index (gathered) and a caller's batch without one (masked) give
    the same scores and the same gradients, in float64, bit for bit."""
    model = tiny_causal_lm(tokenizer).double()
    padded, _ = _collate(tokenizer, _features(tokenizer, n=4, seed=16), nll_scope=nll_scope)
    without = {key: value for key, value in padded.items() if key != "score_index"}
    head = model.get_output_embeddings()

    def scored(batch):
        model.zero_grad()
        scores = fused_scores(model, batch, -100, head) if fused else plain_scores(model, batch, -100)
        (scores.logps * torch.linspace(0.5, 1.5, scores.logps.numel()).view_as(scores.logps)).sum().backward()
        return scores, [p.grad.clone() for p in model.parameters()]

    (by_index, index_grads), (by_mask, mask_grads) = scored(padded), scored(without)
    assert torch.equal(by_index.mask, by_mask.mask) and int(by_index.mask.sum()) == padded["score_index"].numel()
    assert torch.equal(by_index.logps, by_mask.logps) and torch.equal(by_index.logit_means, by_mask.logit_means)
    assert all(torch.equal(a, b) for a, b in zip(index_grads, mask_grads, strict=True))
