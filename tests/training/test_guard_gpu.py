"""GPU-only: the non-finite guard's device-side gate and the deferred flag read make CUDA wait for nothing
(``torch.cuda.set_sync_debug_mode("error")`` raises on any synchronizing CUDA call, C++ ones included).

Skipped without CUDA (CI has none); the same code is checked from Python on CPU by
tests/training/test_step_syncs.py.
"""

from __future__ import annotations

import pytest
import torch

from orpo.training.reliability.host_syncs import DeferredRead
from orpo.training.reliability.optimizer import GatedOptimizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("hold", [True, False])
def test_a_gated_fused_step_and_its_deferred_flags_do_not_sync(hold):
    param = torch.nn.Parameter(torch.ones(4096, device="cuda"))
    inner = torch.optim.AdamW([param], lr=0.1, weight_decay=0.5, fused=True)
    flags = torch.zeros(2, device="cuda")
    gated = GatedOptimizer(inner, lambda: flags.amax() <= 0)
    for step in range(3):  # the first step creates the state; the later ones are the steady state
        param.grad = torch.full_like(param, float("inf") if hold else 1.0)
        flags = torch.stack([torch.zeros((), device="cuda"), (~torch.isfinite(param.grad).all()).float()])
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            gated.step()
            read = DeferredRead(flags)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert read.values() == [0.0, 1.0 if hold else 0.0], step
    assert torch.equal(param.detach(), torch.ones_like(param)) == hold
    assert torch.isfinite(param).all()
