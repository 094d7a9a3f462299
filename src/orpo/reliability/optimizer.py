"""An optimizer whose next update can be held back, for the non-finite guard's ``"skip"`` policy.

Composition instead of patching ``optimizer.step``: ``ORPOTrainer.create_optimizer`` wraps the
optimizer ``Trainer`` built (or was given) before accelerate wraps it in turn, so the call chain is
``AcceleratedOptimizer.step -> (GradScaler.step ->) GatedOptimizer.step -> inner.step``.  A held
step never reaches the inner optimizer: no Adam moment, step count or weight decay moves.  LR
schedulers and accelerate only need what :class:`torch.optim.Optimizer` offers, so everything but
``step`` is forwarded (as accelerate's own ``AcceleratedOptimizer`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class GatedOptimizer(torch.optim.Optimizer):
    """Forwards to ``optimizer``; ``step`` runs only when ``gate()`` returns True."""

    # Deliberately no ``__init__`` of the base class: state and parameter groups stay the inner optimizer's.
    def __init__(self, optimizer: torch.optim.Optimizer, gate: Callable[[], bool]) -> None:
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
        if self.gate():
            return self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        return None

    def __repr__(self) -> str:
        return f"GatedOptimizer({self.optimizer!r})"
