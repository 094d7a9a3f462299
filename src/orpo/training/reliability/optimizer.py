"""An optimizer whose next update can be held back, for the non-finite guard's ``"skip"`` policy.

Composition instead of patching ``optimizer.step``: ``ORPOTrainer.create_optimizer`` wraps the
optimizer ``Trainer`` built (or was given) before accelerate wraps it in turn, so the call chain is
``AcceleratedOptimizer.step -> (GradScaler.step ->) GatedOptimizer.step -> inner.step``.  A held
step never reaches the inner optimizer: no Adam moment, step count or weight decay moves.  LR
schedulers and accelerate only need what :class:`torch.optim.Optimizer` offers, so everything but
``step`` is forwarded (as accelerate's own ``AcceleratedOptimizer`` does).

The gate may answer on the device (a 0-d bool tensor, as the guard does): then the host never waits
for it where the inner optimizer can skip an update on the device, as torch's fused Adam, AdamW,
SGD and Adagrad do for ``GradScaler`` (``found_inf``: their kernels leave weights and moments alone
and the step count is put back; on a held first step their state is created at its initial values).
Any other optimizer has no such switch, so its gate is read on the host (one small wait per step);
copying and restoring its weights and state instead would double their memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class GatedOptimizer(torch.optim.Optimizer):
    """Forwards to ``optimizer``; ``step`` applies the update only when ``gate()`` is True (a bool, or a
    0-d bool tensor on the device).

    Args:
        optimizer: the optimizer that does the work; its state and parameter groups are this one's.
        gate: asked at every ``step``: whether the update may be applied.
    """

    # Deliberately no ``__init__`` of the base class: state and parameter groups stay the inner optimizer's.
    def __init__(self, optimizer: torch.optim.Optimizer, gate: Callable[[], bool | torch.Tensor]) -> None:
        self.optimizer = optimizer
        self.gate = gate

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        self.optimizer.state = state

    @property
    def param_groups(self) -> Any:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, param_groups: Any) -> None:
        self.optimizer.param_groups = param_groups

    @property
    def defaults(self) -> Any:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults: Any) -> None:
        self.optimizer.defaults = defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """The inner optimizer's step, unless the gate holds it back (on the device where it can).

        Args:
            closure: as in :meth:`torch.optim.Optimizer.step`.
        """
        allowed = self.gate()
        if isinstance(allowed, torch.Tensor) and self.skips_on_device:
            return self._step_unless(allowed, closure)
        if allowed:  # a bool, or a tensor this optimizer cannot act on without reading it
            return self._inner_step(closure)
        return None

    @property
    def skips_on_device(self) -> bool:
        """The inner optimizer takes torch's ``found_inf`` switch (and no loss scaler is using it)."""
        inner = self.optimizer
        return bool(getattr(inner, "_step_supports_amp_scaling", False)) and getattr(inner, "found_inf", None) is None

    def _step_unless(self, allowed: torch.Tensor, closure: Callable[[], float] | None) -> Any:
        inner: Any = self.optimizer
        inner.found_inf = (~allowed).float()  # 1.0: the fused kernels skip the update
        try:
            return self._inner_step(closure)
        finally:
            del inner.found_inf

    def _inner_step(self, closure: Callable[[], float] | None) -> Any:
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def __repr__(self) -> str:
        return f"GatedOptimizer({self.optimizer!r})"
