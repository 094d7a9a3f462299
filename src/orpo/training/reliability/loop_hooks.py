"""The one ``TrainerCallback`` that connects the reliability objects to ``Trainer``'s loop events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from transformers import TrainerCallback

from orpo.training.reliability.guard import NonFiniteGuard
from orpo.training.reliability.host_syncs import DeferredRead
from orpo.training.reliability.signals import SignalHandler
from orpo.training.reliability.stops import NonFiniteError


class _Unread(NamedTuple):
    """A step's agreed flags ([loss, gradient] or [loss, gradient, stop]), on their way to the host."""

    flags: DeferredRead
    step: int
    epoch: float


class ReliabilityCallback(TrainerCallback):
    """``on_train_begin``: restore the resumed loop state; ``on_pre_optimizer_step``: the guard's flags and the
    signal agreement, in one all-reduce, decided on the device; ``on_optimizer_step``: release the gate;
    ``on_step_end``: log the last step, save and stop after an agreed signal.

    No step waits for the device here: the flags are read back where the step ends in a log, save,
    evaluation or stop (which wait anyway), else at the next step's ``on_pre_optimizer_step``, when
    they have long been computed.  A held-back update is therefore reported (and, under ``"error"``,
    raised) at the latest one step late; nothing it held back is applied in between.

    The hooks take ``TrainerCallback``'s arguments (``args``, ``state``, ``control``, ``**kwargs``).

    Args:
        guard: the non-finite guard whose flags are agreed and judged.
        signals: the signal handler whose request is agreed across processes.
        restore: puts back the resumed checkpoint's loop state (at ``on_train_begin``).
        device: where the flags are formed and all-reduced.
        world_size: the number of processes (above 1: agree by all-reduce).
    """

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
        self._unread: _Unread | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Restore the resumed loop state."""
        self._unread = None
        self.restore()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Agree the guard's flags and any signal across processes, on the device, and close the window."""
        self.read_back(state)  # the previous step's, if its end did not read them
        flags = self.guard.local_flags(self.device)
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            stop = torch.full((1,), float(self.signals.requested is not None), device=self.device)
            flags = torch.cat([flags, stop])
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        else:  # one process: the signal is this process's to agree with
            self.signals.agreed = self.signals.requested is not None
        self.guard.close_window(flags[:2])
        self._unread = _Unread(DeferredRead(flags), state.global_step + 1, state.epoch or 0.0)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Release the gate for the next update."""
        self.guard.step_done()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Log the last step; read the flags back where the step ends in a log, save, evaluation or stop."""
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True  # the last step is always logged: no summary without a point
        if (
            control.should_log
            or control.should_save
            or control.should_evaluate
            or control.should_training_stop
            or self.signals.agreed  # about to save and stop
        ):
            self.read_back(state)  # the same on every process: their controls and agreed signals agree
        if self.signals.agreed:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Judge the last step's flags."""
        self.read_back(state)

    def read_back(self, state: Any) -> None:
        """Judge the last closed window on its flags, read on the host.

        Args:
            state: Trainer's state; its ``global_step`` is put back before the held update when that raises.

        Raises:
            NonFiniteError: the guard stops the run.
        """
        unread, self._unread = self._unread, None
        if unread is None:
            return
        values = unread.flags.values()
        if len(values) > 2:
            self.signals.agreed = values[2] > 0
        try:
            self.guard.judge(values[0] > 0, values[1] > 0, step=unread.step, epoch=unread.epoch)
        except NonFiniteError:
            state.global_step = unread.step - 1  # the held update was never applied: the run stopped before it
            raise
