"""SIGINT/SIGTERM during ``train()``: finish the step, save, stop with :class:`TrainingInterrupted`.

The same signal a second time stops at once: :class:`TrainingInterrupted` is raised from the
handler, wherever the loop is (a save in progress is abandoned; its ``tmp-checkpoint-*`` folder
is removed at the next start), and the message names the last complete checkpoint, never one
that was not written.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from orpo.training.reliability.stops import TrainingInterrupted

logger = logging.getLogger(__name__)

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class SignalHandler:
    """Records the first SIGINT/SIGTERM; the loop stops once every process has agreed on it.

    ``requested`` is this process's signal; ``agreed`` is set before an optimizer step when any
    process has one (see :class:`orpo.training.reliability.loop_hooks.ReliabilityCallback`), so all stop
    after the same step.  ``last_checkpoint`` and ``resume_hint`` are asked when a message needs them.

    Args:
        last_checkpoint: returns the last complete checkpoint, or None.
        resume_hint: returns how to resume the run.
    """

    def __init__(
        self,
        last_checkpoint: Callable[[], str | None] = lambda: None,
        resume_hint: Callable[[], str] = lambda: "resume with trainer.train(resume_from_checkpoint=True)",
    ) -> None:
        self.requested: int | None = None
        self.agreed = False
        self.last_checkpoint = last_checkpoint
        self.resume_hint = resume_hint
        self._previous: dict[int, Any] = {}

    def reset(self) -> None:
        """Forget a signal of an earlier ``train()``."""
        self.requested = None
        self.agreed = False

    @contextlib.contextmanager
    def installed(self, enabled: bool = True) -> Iterator[None]:
        """Handle SIGINT/SIGTERM inside the block (main thread only); the previous handlers come back after.

        Args:
            enabled: False: leave the handlers as they are (``ORPOTrainer.handle_signals``).
        """
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        self._previous = {signum: signal.signal(signum, self._handle) for signum in _SIGNALS}
        try:
            yield
        finally:
            self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = signum
            logger.warning(
                "received %s: finishing the current step, then saving a checkpoint and stopping "
                "(send %s again to stop at once, without that checkpoint)",
                name,
                name,
            )
        elif signum == self.requested:
            self._restore()
            last = self.last_checkpoint()
            where = (
                f"the last complete checkpoint is {last}; {self.resume_hint()}"
                if last
                else "no checkpoint to resume from"
            )
            logger.warning("received %s again: stopping at once, without a checkpoint of this step (%s)", name, where)
            raise TrainingInterrupted(signum, None, last)
        else:  # e.g. torchrun's SIGTERM after a Ctrl-C: already stopping
            logger.info("received %s while already stopping; ignored", name)

    def finish(self, global_step: int, max_steps: int, checkpoint: str | None) -> None:
        """After ``Trainer.train`` returned: raise :class:`TrainingInterrupted` if a signal stopped it early.

        ``checkpoint``: the newest checkpoint committed in this run, named as saved only when it is
        the one of the step the run stopped at.

        Args:
            global_step: the step the run ended at.
            max_steps: the run's total steps (a signal at the last one stops nothing).
            checkpoint: the newest checkpoint committed in this run, or None.

        Raises:
            TrainingInterrupted: an agreed signal stopped the run before ``max_steps``.
        """
        if self.requested is None:
            return
        name = signal.Signals(self.requested).name
        if self.agreed and not (max_steps and global_step >= max_steps):
            if checkpoint is not None and checkpoint.rstrip("/\\").endswith(f"checkpoint-{global_step}"):
                saved = f"checkpoint saved to {checkpoint}"
            else:
                last = self.last_checkpoint()
                saved = f"no checkpoint of this step was saved; the last complete one is {last or 'none'}"
            logger.warning(
                "training stopped by %s at step %d/%d; %s. To continue, %s.",
                name,
                global_step,
                max_steps,
                saved,
                self.resume_hint(),
            )
            raise TrainingInterrupted(self.requested, global_step, checkpoint)
        logger.warning("received %s as training finished; it completed normally", name)
