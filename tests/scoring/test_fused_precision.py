"""The fused head in low precision: bf16 matmul operands (autocast or bf16 weights) with the weight
gradient accumulated in float32 stay within bf16 rounding of the float64 result, for any chunking."""

from __future__ import annotations

import pytest
import torch

from orpo.scoring import fused
from orpo.scoring.fused import linear_selective_log_softmax


def _inputs(n=96, h=64, v=500, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) * 0.2
    bias = torch.randn(v, generator=gen) * 0.1
    index = torch.randint(0, v, (n,), generator=gen)
    upstream = torch.randn(n, generator=gen)
    return hidden, weight, bias, index, upstream


def _grads(hidden, weight, bias, index, upstream, chunk_rows=None, autocast=False):
    params = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logps, _ = linear_selective_log_softmax(params[0], params[1], index, params[2], chunk_rows=chunk_rows)
    grads = torch.autograd.grad((logps * upstream.to(logps.dtype)).sum(), params)
    return logps.detach(), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("chunk_rows", [None, 7, 1])
@pytest.mark.parametrize("mode", ["autocast", "bf16-weights"])
def test_bf16_matmuls_stay_within_bf16_rounding(mode, chunk_rows):
    inputs = _inputs()
    ref_logps, ref_grads = _grads(*(t.double() if t.is_floating_point() else t for t in inputs))
    if mode == "autocast":
        logps, grads = _grads(*inputs, chunk_rows=chunk_rows, autocast=True)
    else:
        logps, grads = _grads(*(t.bfloat16() if t.is_floating_point() else t for t in inputs), chunk_rows=chunk_rows)
    assert logps.dtype == torch.float32
    assert _relative(logps, ref_logps) < 1e-2
    for name, got, ref in zip(("hidden", "weight", "bias"), grads, ref_grads, strict=True):
        assert got.dtype == (torch.float32 if mode == "autocast" else torch.bfloat16), name
        assert _relative(got, ref) < 2e-2, name


def test_weight_gradient_accumulates_in_float32_over_many_chunks():
    """One row per chunk: 1024 bf16 partial products summed in a float32 accumulator stay as close
    to float64 as one unchunked product; summed in bf16 they would drift."""
    inputs = _inputs(n=1024, h=32, v=200, seed=1)
    ref = _grads(*(t.double() if t.is_floating_point() else t for t in inputs))[1][1]
    whole = _grads(*inputs, autocast=True)[1][1]
    per_row = _grads(*inputs, chunk_rows=1, autocast=True)[1][1]
    assert _relative(per_row, ref) < 1.5 * _relative(whole, ref) + 1e-3


def test_accumulate_matmul_paths():
    acc = torch.zeros(3, 5)
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    fused._accumulate_matmul(acc, a, b)  # same dtype: in place
    torch.testing.assert_close(acc, a @ b)
    fused._accumulate_matmul(acc, a.bfloat16(), b.bfloat16())  # CPU: no out_dtype matmul, bf16 product added
    assert fused._OUT_DTYPE_MATMUL["cpu"] is False
    torch.testing.assert_close(acc, a @ b + (a.bfloat16() @ b.bfloat16()).float())
