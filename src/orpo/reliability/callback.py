"""The one ``TrainerCallback`` that connects the reliability objects to ``Trainer``'s loop events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from .guard import NonFiniteGuard
from .signals import SignalHandler


def agree(flags: torch.Tensor, world_size: int) -> list[float]:
    """The maximum of each flag over all processes (one small all-reduce), as floats on the host."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return [float(flag) for flag in flags.tolist()]


class ReliabilityCallback(TrainerCallback):
    """``on_train_begin``: restore the resumed loop state; ``on_pre_optimizer_step``: the guard's verdict and
    the signal agreement, in one all-reduce; ``on_optimizer_step``: release a held update;
    ``on_step_end``: log the last step, save and stop after an agreed signal."""

    def __init__(
        self,
        guard: NonFiniteGuard,
        signals: SignalHandler,
        restore: Callable[[], None],
        device: Any,
        world_size: int,
    ) -> None:
        self.guard = guard
        self.signals = signals
        self.restore = restore
        self.device = device
        self.world_size = world_size

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        stop = torch.tensor([float(self.signals.requested is not None)], device=self.device)
        loss_bad, grad_bad, stop_agreed = agree(torch.cat([self.guard.local_flags(self.device), stop]), self.world_size)
        self.signals.agreed = bool(stop_agreed)
        self.guard.judge(bool(loss_bad), bool(grad_bad), step=state.global_step + 1, epoch=state.epoch or 0.0)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.guard.step_done()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True  # the last step is always logged: no summary without a point
        if self.signals.agreed:
            control.should_save = True
            control.should_training_stop = True
