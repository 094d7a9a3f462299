"""Padding-free batches: the packing collator, and packed scores == padded scores (fp32, exact)."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from orpo.data.collate import ORPODataCollator
from orpo.data.packing import ORPOPackingCollator, ORPOSharedPromptCollator
from orpo.layouts import LAYOUT_KEY, Layout, beyond_sliding_window, layout_of, packed_view, unpack_batch
from orpo.scoring import TokenScorer, plain_scores, rows_from_packed, verify_packing
from orpo.testing import tiny_causal_lm


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
    return ORPODataCollator(**kwargs)(features), ORPOPackingCollator(**kwargs)(features)


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
def test_packed_row_layout(tokenizer, nll_scope):
    features = _features(tokenizer)
    padded, packed = _collate(tokenizer, features, nll_scope)
    assert layout_of(packed) is Layout.PACKED and layout_of(padded) is Layout.PADDED
    assert "attention_mask" not in packed
    ids, pos, idx, lab = (packed[k][0] for k in ("input_ids", "position_ids", "sequence_index", "packed_labels"))
    lengths = padded["attention_mask"].sum(-1).tolist()
    assert ids.shape[0] == sum(lengths) == pos.shape[0] == idx.shape[0] == lab.shape[0]
    start = 0
    for row, length in enumerate(lengths):  # chosen 0..B-1 then rejected 0..B-1, in row order
        span = slice(start, start + length)
        assert torch.equal(ids[span], padded["input_ids"][row, :length])
        assert torch.equal(pos[span], torch.arange(length))
        assert (idx[span] == row).all()
        assert lab[start] == -100  # nothing predicts a sequence's first token across the boundary
        assert torch.equal(lab[span][1:], padded["labels"][row, 1:length])
        if nll_scope == "prompt_and_completion":
            nll = packed["packed_nll_labels"][0]
            assert nll[start] == -100
            assert torch.equal(nll[span][1:], padded["nll_labels"][row, 1:length])
        start += length
    # The padded layout's labels travel unchanged (the loss and the window counts read them).
    assert torch.equal(packed["labels"], padded["labels"])
    assert ("nll_labels" in packed) == (nll_scope == "prompt_and_completion")


def test_pad_to_multiple_of_pads_the_row_as_its_own_sequence(tokenizer):
    features = _features(tokenizer, seed=1)
    padded, packed = _collate(tokenizer, features, multiple=16)
    real = int(padded["attention_mask"].sum())
    total = packed["input_ids"].shape[1]
    assert total % 16 == 0 and real <= total < real + 16
    tail = slice(real, total)
    assert (packed["sequence_index"][0, tail] == -1).all()
    assert (packed["packed_labels"][0, tail] == -100).all()
    if total > real:
        assert packed["position_ids"][0, real] == 0


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
def test_unpack_restores_the_padded_batch(tokenizer, nll_scope):
    padded, packed = _collate(tokenizer, _features(tokenizer, seed=2), nll_scope, multiple=8)
    unpacked = unpack_batch(packed, pad_token_id=tokenizer.pad_token_id)
    assert set(unpacked) == set(padded)
    assert unpacked[LAYOUT_KEY] is padded[LAYOUT_KEY] is Layout.PADDED
    for key, value in padded.items():
        if key != LAYOUT_KEY:
            assert torch.equal(unpacked[key], value), key


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


def test_rows_from_packed_places_every_scored_token(tokenizer):
    model = tiny_causal_lm(tokenizer)
    _, packed = _collate(tokenizer, _features(tokenizer, seed=4))
    flat = plain_scores(model, packed_view(packed), -100)
    rows = rows_from_packed(flat, packed, -100)
    assert int(flat.mask.sum()) == int(rows.mask.sum())
    assert torch.equal(rows.logps != 0, rows.mask)
    torch.testing.assert_close(rows.logps.sum(), flat.logps.sum())


class _IgnoresPositions(torch.nn.Module):
    """A model whose forward drops position_ids: packed sequences would see each other."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_verify_packing_detects_a_model_that_mixes_sequences(tokenizer):
    model = tiny_causal_lm(tokenizer)
    _, packed = _collate(tokenizer, _features(tokenizer, seed=5))
    assert verify_packing(model, packed)
    assert not verify_packing(_IgnoresPositions(model), packed)


def test_unsupported_model_falls_back_to_padded_with_a_warning(tokenizer, caplog):
    inner = tiny_causal_lm(tokenizer)
    model = _IgnoresPositions(inner)
    padded, packed = _collate(tokenizer, _features(tokenizer, seed=6))
    weights = torch.ones(padded["labels"][:, 1:].shape)
    _, ref, ref_grads = _scores_and_grads(model, padded, False, weights)
    with caplog.at_level(logging.WARNING, logger="orpo.scoring"):
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


def test_shared_prompt_row_layout(tokenizer):
    features = _features(tokenizer, seed=8)
    padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8)(features)
    shared = _shared(tokenizer, features, multiple=8)
    assert layout_of(shared) is Layout.SHARED_PROMPT
    ids, pos, pair, kind = (shared[k][0] for k in ("input_ids", "position_ids", "shared_pair", "shared_kind"))
    real = sum(len(f["prompt_input_ids"]) + len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) for f in features)
    assert ids.shape[0] % 8 == 0 and (pair[real:] == -1).all() and (pair[:real] >= 0).all()
    for i, feature in enumerate(features):
        prompt = feature["prompt_input_ids"]
        for k, key in ((0, "prompt_input_ids"), (1, "chosen_input_ids"), (2, "rejected_input_ids")):
            where = (pair == i) & (kind == k)
            assert ids[where].tolist() == list(feature[key])
            first = 0 if k == 0 else len(prompt)
            assert pos[where].tolist() == list(range(first, first + len(feature[key])))
    # Each scored token's predictor is the token before it in its own sequence.
    targets = padded["labels"][:, 1:]
    rows, cols = (targets != -100).nonzero(as_tuple=True)
    assert torch.equal(ids[shared["score_source"]], padded["input_ids"][rows, cols])
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
    model = _IgnoresPositions(tiny_causal_lm(tokenizer))
    features = _features(tokenizer, seed=10)
    padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id)(features)
    weights = torch.ones(padded["labels"][:, 1:].shape)
    _, ref, _ = _scores_and_grads(model, padded, False, weights)
    with caplog.at_level(logging.WARNING, logger="orpo.scoring"):
        scorer, got, _ = _scores_and_grads(model, _shared(tokenizer, features), False, weights)
    assert scorer.uses_shared_prompt is False
    assert any("shared_prompt" in record.getMessage() for record in caplog.records)
    torch.testing.assert_close(got.logps, ref.logps, rtol=1e-6, atol=1e-6)


def test_speed_switches_are_config_fields(tmp_path):
    from orpo import ORPOConfig

    defaults = ORPOConfig(output_dir=str(tmp_path), report_to="none")
    assert (defaults.padding_free, defaults.shared_prompt, defaults.fused_lm_head) == (False, False, True)
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


def test_shared_prompt_runs_padded_beyond_a_sliding_window(tokenizer):
    """The shared-prompt mask replaces the model's masks: past a sliding window it would not be exact,
    so a batch with a sequence that long runs padded (a short first batch passes the probe)."""
    model = tiny_causal_lm(tokenizer, arch="mistral")
    model.config.sliding_window = 10
    short = [{"prompt_input_ids": [1, 7, 8], "chosen_input_ids": [9, 10], "rejected_input_ids": [11, 12, 13]}] * 2
    long = _features(tokenizer, seed=11)
    assert max(len(f["prompt_input_ids"]) + len(f["rejected_input_ids"]) for f in long) > 10
    scorer = TokenScorer(True)
    for features, shared_used in ((short, True), (long, False)):
        padded = ORPODataCollator(pad_token_id=tokenizer.pad_token_id)(features)
        ref = TokenScorer(True)(model, padded)
        got = scorer(model, _shared(tokenizer, features))
        assert scorer.uses_shared_prompt is True
        torch.testing.assert_close(got.logps, ref.logps, rtol=1e-5, atol=1e-5)
        assert beyond_sliding_window(_shared(tokenizer, features), model.config.sliding_window) is not shared_used


# ---- the one verifier behind the fused head, packing and the shared prompt ------------------------------


def test_verify_compares_warns_and_restores_the_mode(tokenizer, caplog):
    from orpo.scoring import verify

    model = tiny_causal_lm(tokenizer).train()
    reference = torch.tensor([1.0, -2.0, 3.0])
    seen = []

    def run(values):
        def call():
            seen.append((model.training, torch.is_grad_enabled()))
            return values

        return call

    with caplog.at_level(logging.WARNING, logger="orpo.scoring"):
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
    import orpo.scoring as scoring

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


class _NonFiniteFirst(torch.nn.Module):
    """Returns NaN logits on its first ``calls`` forwards (e.g. a bad first batch), then the real ones."""

    def __init__(self, inner: torch.nn.Module, calls: int) -> None:
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, calls

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        if self.calls > 0:
            self.calls -= 1
            out.logits = out.logits * float("nan")
        return out


def test_a_non_finite_probe_runs_padded_and_is_asked_again(tokenizer):
    model = _NonFiniteFirst(tiny_causal_lm(tokenizer), calls=2)  # both runs of the packing probe
    padded, packed = _collate(tokenizer, _features(tokenizer, seed=13))
    scorer = TokenScorer(fused=False)
    first = scorer(model, packed)
    assert scorer.uses_packing is None  # undecided: this batch ran padded
    torch.testing.assert_close(first.logps, plain_scores(model, padded, -100).logps, rtol=1e-6, atol=1e-6)
    second = scorer(model, packed)
    assert scorer.uses_packing is True
    torch.testing.assert_close(second.logps, first.logps, rtol=1e-5, atol=1e-5)
