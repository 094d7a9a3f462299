"""GPU checks of orpo.scoring.attention: compiled flex with a BlockMask from segment bounds (gradients,
GQA kept for a group size of 7 as in Qwen2-0.5B), sdpa per segment, flash varlen (if flash-attn
is installed), no host sync in a packed step, and the fused head's float32-output weight gradient.

Skipped without CUDA (CI has none).  ``python -m pytest -q -m gpu tests``.
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch

from _packed_rows import (
    SHARED_GRAD_TOLERANCE,
    assert_same,
    logits_and_grads,
    packed_rows,
    padded_rows,
    random_pairs,
    shared_rows,
)
from orpo.demo.tiny import build_tokenizer, tiny_causal_lm
from orpo.scoring import attention, fused
from orpo.scoring.attention import segment_forward_kwargs
from orpo.scoring.layouts import Layout
from orpo.scoring.routing import segment_route, use_segment_attention
from orpo.training.reliability.host_syncs import detect_host_syncs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
LAYOUTS = {"packed": packed_rows, "shared": shared_rows}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(["the sky is blue and the grass is green, yes or no"] * 20)


def _model(tok, attn="sdpa", dtype=torch.float32, **config):
    config = {"num_attention_heads": 14, "num_key_value_heads": 2, "head_dim": 16, **config}
    model = tiny_causal_lm(tok, arch="qwen2", hidden_size=224, attn_implementation=attn, **config)
    return model.to("cuda", dtype)


def _on_cuda(rows):
    rows.inputs = {k: v.cuda() for k, v in rows.inputs.items()}
    rows.source = rows.source.cuda()
    if rows.segments is not None:
        rows.segments = rows.segments.to("cuda")
    return rows


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def _compare(model, implementation, layout, tol, grad_tol=None, seed=0):
    """float32/float64: elementwise as on CPU; bf16: relative norms (rounding differs by layout)."""
    pairs = random_pairs(model.config.vocab_size, n=4, seed=seed, prompt=(20, 200), completion=(10, 150))
    padded = _on_cuda(padded_rows(pairs))
    upstream = torch.randn((*padded.source.shape, model.config.vocab_size), device="cuda", dtype=model.dtype)
    reference = logits_and_grads(model, padded, upstream)
    use_segment_attention(model, implementation)
    rows = _on_cuda(LAYOUTS[layout](pairs, padding=5))
    got = logits_and_grads(model, rows, upstream, **segment_forward_kwargs(rows.segments))
    if model.dtype != torch.bfloat16:
        assert_same(got, reference, tol, grad_tol)
        return
    assert _relative(got[0], reference[0]) < tol
    for name, grad in got[1].items():
        assert _relative(grad, reference[1][name]) < (grad_tol or tol), name


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_compiled_flex_equals_padded_with_gqa_kept(tok, layout, monkeypatch):
    shapes = []
    function = attention._flex_function

    def spy(device):
        compiled = function(device)

        def call(q, k, v, **kwargs):
            shapes.append((q.shape[1], k.shape[1], kwargs["enable_gqa"]))
            return compiled(q, k, v, **kwargs)

        return call

    monkeypatch.setattr(attention, "_flex_function", spy)
    model = _model(tok)
    assert segment_route(model, Layout.SHARED_PROMPT).implementation == "orpo_sdpa"
    model.set_attn_implementation("flex_attention")
    assert (
        segment_route(model, {"packed": Layout.PADDING_FREE, "shared": Layout.SHARED_PROMPT}[layout])[0] == "orpo_flex"
    )
    _compare(model, "orpo_flex", layout, 2e-4, 2e-3)
    assert shapes and set(shapes) == {(14, 2, True)}  # no repeat_kv copies


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
def test_sdpa_per_segment_equals_padded(tok, layout, dtype):
    if dtype == torch.float64:
        _compare(
            _model(tok, dtype=dtype), "orpo_sdpa", layout, 1e-10, SHARED_GRAD_TOLERANCE if layout == "shared" else None
        )
    else:
        _compare(_model(tok, dtype=dtype), "orpo_sdpa", layout, 2e-2, 5e-2)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_flash_varlen_equals_padded(tok, layout):
    model = _model(tok, dtype=torch.bfloat16)
    model.set_attn_implementation("flash_attention_2")
    assert segment_route(model, Layout.SHARED_PROMPT).implementation == "orpo_fa2"
    _compare(model, "orpo_fa2", layout, 2e-2, 5e-2)


@pytest.mark.parametrize(("attn", "implementation"), [("sdpa", "orpo_sdpa"), ("flex_attention", "orpo_flex")])
@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_no_host_sync_in_a_packed_step(tok, attn, implementation, layout):
    model = _model(tok, attn=attn, dtype=torch.bfloat16)
    use_segment_attention(model, implementation)
    rows = LAYOUTS[layout](random_pairs(model.config.vocab_size, n=4, seed=3), padding=5)
    batch = {k: v.cuda() for k, v in rows.inputs.items()}

    def step(strict: bool) -> list[str]:
        segments = rows.segments.to("cuda")  # as the data loader moves it, before the step
        # strict: every synchronizing CUDA call (from C++ too) raises; the Python-level detector
        # watches the eager path (under a TorchFunctionMode, compiled flex would trace the mode)
        torch.cuda.set_sync_debug_mode("error" if strict else "default")
        try:
            with detect_host_syncs(raise_on_sync=False) if attn == "sdpa" else contextlib.nullcontext() as syncs:
                out = model(**batch, **segment_forward_kwargs(segments), use_cache=False)
                out.logits.float().logsumexp(-1).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return syncs.events if syncs is not None else []

    step(False)  # compiles flex: warm-up
    step(False)
    torch.cuda.synchronize()
    assert step(True) == []


def test_fused_head_weight_gradient_in_float32_from_bf16():
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(2048, 896, device="cuda", generator=gen, dtype=torch.bfloat16).requires_grad_()
    weight = (torch.randn(32000, 896, device="cuda", generator=gen) * 0.02).bfloat16().requires_grad_()
    index = torch.randint(0, 32000, (2048,), device="cuda", generator=gen)
    logps, _ = fused.linear_selective_log_softmax(hidden, weight, index, chunk_rows=256)
    logps.sum().backward()
    assert fused._OUT_DTYPE_MATMUL["cuda"] is True, "no addmm(out_dtype=float32) from bf16 here: fallback path"
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    torch.log_softmax(h64 @ w64.T, -1).gather(1, index[:, None]).sum().backward()
    for got, ref in ((hidden.grad, h64.grad), (weight.grad, w64.grad)):
        assert ((got.double() - ref).norm() / ref.norm()).item() < 1e-2
