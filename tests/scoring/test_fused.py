"""The fused LM head: same log-probs and gradients as log_softmax(h @ W.T + b), on tensors and on
tiny llama / qwen2 (tied embeddings) / gemma2 (final logit softcapping) models; fallback to the
plain path where it cannot be exact."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import learnable_pairs
from orpo.data import LengthLimits, PairTokenizer
from orpo.demo.tiny import tiny_causal_lm
from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.fused import linear_selective_log_softmax
from orpo.scoring.logps import fused_scores, plain_scores
from orpo.scoring.model_view import output_head
from orpo.scoring.scorer import TokenScorer


def reference(hidden, weight, index, bias=None, softcap=None, scale=None):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits, -1).gather(1, index[:, None]).squeeze(1), logits.mean(-1)


def _inputs(dtype, bias, n=13, h=8, v=37, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(v, h, generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(v, generator=gen, dtype=dtype).requires_grad_() if bias else None
    index = torch.randint(0, v, (n,), generator=gen)
    upstream = torch.randn(n, generator=gen, dtype=dtype)
    return hidden, weight, b, index, upstream


TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(
    ("softcap", "scale", "bias", "chunk_rows"),
    [
        (None, None, False, None),
        (None, None, True, 4),
        (3.0, None, True, 1),
        (None, 0.5, False, 5),
        (2.0, 1.7, True, 3),
    ],
    ids=["plain", "bias-chunked", "softcap-rows1", "scale", "softcap+scale+bias"],
)
def test_values_and_gradients_match_log_softmax(dtype, softcap, scale, bias, chunk_rows):
    hidden, weight, b, index, upstream = _inputs(dtype, bias)
    logps, means = linear_selective_log_softmax(
        hidden, weight, index, b, softcap=softcap, scale=scale, chunk_rows=chunk_rows
    )
    params = [hidden, weight] + ([b] if bias else [])
    grads = torch.autograd.grad((logps * upstream).sum(), params)
    ref, ref_means = reference(hidden, weight, index, b, softcap, scale)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), params)
    tol = TOLERANCE[dtype]
    assert logps.dtype == dtype
    torch.testing.assert_close(logps, ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(means, ref_means.detach(), rtol=tol, atol=tol)
    assert not means.requires_grad
    for name, ours, theirs in zip(("hidden", "weight", "bias"), grads, ref_grads, strict=False):
        torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol, msg=name)


def test_gradcheck_float64():
    hidden, weight, b, index, _ = _inputs(torch.float64, True, n=5, h=3, v=7)
    fn = lambda h, w, bb: linear_selective_log_softmax(h, w, index, bb, softcap=2.0, scale=1.3, chunk_rows=2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight, b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_chunk_size_does_not_change_the_result(dtype):
    """Chunking only reorders float sums: exact to float64 rounding, and within fp32 rounding of
    sums over 17 rows (the weight gradient adds one chunk's contribution at a time)."""
    hidden, weight, b, index, upstream = _inputs(dtype, True, n=17)
    results = []
    for rows in (1, 4, 17, 1000):
        logps, _ = linear_selective_log_softmax(hidden, weight, index, b, chunk_rows=rows)
        results.append((logps, *torch.autograd.grad((logps * upstream).sum(), [hidden, weight, b])))
    tol = TOLERANCE[dtype]
    for other in results[1:]:
        for a, c in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, c, rtol=tol, atol=tol)


def test_backward_recomputes_in_the_forward_precision_under_autocast():
    """Under bf16 autocast the backward must recompute the logits as forward did: the softmax
    gradients of each row then sum to zero (sum of probabilities = 1)."""
    hidden, weight, b, index, _ = _inputs(torch.float32, True, n=64, h=32, v=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = linear_selective_log_softmax(hidden, weight, index, b)
    (grad_b,) = torch.autograd.grad(logps.sum(), [b])
    assert abs(grad_b.sum().item()) < 1e-3  # was ~0.16 when backward recomputed in float32


# ---- on models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batches(tokenizer):
    pair_tokenizer = PairTokenizer(tokenizer, LengthLimits())
    features = [pair_tokenizer.one(**row) for row in learnable_pairs(3, seed=5)]
    return {
        scope: ORPODataCollator(tokenizer.pad_token_id, nll_scope=scope)(features)
        for scope in ("completion", "prompt_and_completion")
    }


def _scores_and_grads(model, fn, batch):
    model.zero_grad()
    scores = fn(model, batch)
    upstream = torch.randn(scores.logps.shape, generator=torch.Generator().manual_seed(1), dtype=scores.logps.dtype)
    (scores.logps * upstream).sum().backward()
    return scores, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


MODELS = [("llama", False), ("qwen2", True), ("gemma2", False)]


@pytest.mark.parametrize(("arch", "tied"), MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize("scope", ["completion", "prompt_and_completion"])
def test_fused_scores_equal_plain_scores_on_models(tokenizer, batches, arch, tied, scope):
    model = tiny_causal_lm(tokenizer, arch=arch, hidden_size=32, tie_word_embeddings=tied).double()
    model.train()
    head = output_head(model)
    assert head is not None
    if tied:
        assert head.weight is model.get_input_embeddings().weight
    if arch == "gemma2":
        assert model.config.final_logit_softcapping == 5.0
    batch = batches[scope]
    plain, plain_grads = _scores_and_grads(model, lambda m, b: plain_scores(m, b, -100), batch)
    fused, fused_grads = _scores_and_grads(model, lambda m, b: fused_scores(m, b, -100, head), batch)
    assert torch.equal(plain.mask, fused.mask) and torch.equal(plain.targets, fused.targets)
    assert int(plain.mask.sum()) > 0
    torch.testing.assert_close(fused.logps, plain.logps, rtol=1e-10, atol=1e-10)
    # the plain path averages logits in float32
    torch.testing.assert_close(fused.logit_means.float(), plain.logit_means, rtol=1e-6, atol=1e-6)
    assert plain_grads.keys() == fused_grads.keys() and len(plain_grads) > 10
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-9, atol=1e-11, msg=name)


def test_fused_scores_fp32_model(tokenizer, batches):
    model = tiny_causal_lm(tokenizer, arch="gemma2", hidden_size=32)
    head = output_head(model)
    batch = batches["prompt_and_completion"]
    plain, plain_grads = _scores_and_grads(model, lambda m, b: plain_scores(m, b, -100), batch)
    fused, fused_grads = _scores_and_grads(model, lambda m, b: fused_scores(m, b, -100, head), batch)
    torch.testing.assert_close(fused.logps, plain.logps, rtol=1e-5, atol=1e-5)
    for name in plain_grads:  # float32 rounding, relative to the gradient's scale
        scale = plain_grads[name].abs().max().item()
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-5, atol=2e-6 * scale, msg=name)


def test_scorer_uses_fused_when_exact(tokenizer, batches):
    model = tiny_causal_lm(tokenizer, hidden_size=32)
    scorer = TokenScorer(fused=True)
    assert scorer.uses_fused is None  # decided on the first batch
    scores = scorer(model, batches["completion"])
    assert scorer.uses_fused is True
    torch.testing.assert_close(scores.logps, plain_scores(model, batches["completion"], -100).logps)
    assert TokenScorer(fused=False).uses_fused is False


def test_scorer_falls_back_for_a_lora_wrapped_head(tokenizer, batches, caplog):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_causal_lm(tokenizer, hidden_size=32), LoraConfig(r=4, target_modules=["q_proj", "lm_head"])
    )
    scorer = TokenScorer(fused=True)
    with caplog.at_level(logging.WARNING, logger="orpo.scoring.logps"):
        scores = scorer(model, batches["completion"])
    assert scorer.uses_fused is False
    assert "not a plain torch.nn.Linear" in caplog.text
    torch.testing.assert_close(scores.logps, plain_scores(model, batches["completion"], -100).logps)


def test_scorer_falls_back_when_verification_fails(tokenizer, batches, caplog):
    """A model that transforms its logits in a way the fused path does not know (here: x2)."""
    model = tiny_causal_lm(tokenizer, hidden_size=32)
    forward = model.forward

    def doubled(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out

    model.forward = doubled
    scorer = TokenScorer(fused=True)
    with caplog.at_level(logging.WARNING, logger="orpo.scoring.logps"):
        scores = scorer(model, batches["completion"])
    assert scorer.uses_fused is False
    assert "using the plain path" in caplog.text
    torch.testing.assert_close(scores.logps, plain_scores(model, batches["completion"], -100).logps)
    caplog.clear()
    scorer(model, batches["completion"])  # decided once, no second warning
    assert "plain path" not in caplog.text
