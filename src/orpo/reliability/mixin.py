"""The mixin composing the reliability parts; see :mod:`orpo.reliability`."""

from __future__ import annotations

import logging
import signal
from typing import Any

import torch
from transformers import TrainerCallback

from ..checkpoint import remove_stale_staging
from .diagnose import ROW_INDEX_COLUMN, RowDiagnosticsMixin
from .guard import NonFiniteGuardMixin
from .preflight import PreflightMixin, _carries_row_index, _is_hf_dataset, check_output_dir
from .resume import CheckpointMixin
from .signals import SignalMixin, TrainingInterrupted

logger = logging.getLogger(__package__)  # "orpo.reliability", as before the split


class _ReliabilityCallback(TrainerCallback):
    """Hooks into the loop where ``Trainer`` offers no method: after its per-run resets, after each step."""

    def __init__(self, trainer: ReliabilityMixin) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._restore_loop_state()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer._stop_agreed:
            control.should_save = True
            control.should_training_stop = True


class ReliabilityMixin(PreflightMixin, CheckpointMixin, SignalMixin, NonFiniteGuardMixin, RowDiagnosticsMixin):
    """Trainer overrides for safe, resumable, honest training; see the :mod:`orpo.reliability` docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        training_args = kwargs.get("args")
        if training_args is not None and training_args.should_save:  # Trainer creates output_dir right away
            check_output_dir(training_args.output_dir)
        dataset = kwargs.get("train_dataset")
        if (
            _carries_row_index(kwargs.get("data_collator"))
            and _is_hf_dataset(dataset)
            and ROW_INDEX_COLUMN not in dataset.column_names
        ):
            kwargs["train_dataset"] = dataset.add_column(ROW_INDEX_COLUMN, list(range(len(dataset))))
        super().__init__(*args, **kwargs)
        self._skipped_batches = 0
        self._stop_signal: int | None = None
        self._stop_agreed = False
        self._resume_checkpoint: str | None = None
        self._last_checkpoint: str | None = None
        self._window_losses: list[torch.Tensor] = []
        self._window_inputs: list[dict[str, Any]] = []
        self._last_grad_norm: Any = None
        self.add_callback(_ReliabilityCallback(self))
        if getattr(self.args, "on_nonfinite", "error") == "skip" and getattr(self, "is_deepspeed_enabled", False):
            logger.warning(
                "on_nonfinite='skip' cannot undo a DeepSpeed update (the engine steps inside backward); "
                "DeepSpeed's own fp16 loss scaler skips overflowing steps, other non-finite steps raise"
            )

    # ---- train ------------------------------------------------------------------------
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        self._check_output_dir()
        self._check_batch_size()
        if self.args.should_save:
            remove_stale_staging(self.args.output_dir)
        resume = self._resolve_resume(resume_from_checkpoint)
        self._resume_checkpoint = resume
        self._stop_signal = None
        self._stop_agreed = False
        self._window_losses, self._window_inputs = [], []
        self._skipped_batches = 0
        with self._signal_guard():
            output = super().train(
                resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        if self._stop_signal is not None:
            name = signal.Signals(self._stop_signal).name
            finished = self.state.max_steps and self.state.global_step >= self.state.max_steps
            if self._stop_agreed and not finished:
                logger.warning(
                    "training stopped by %s at step %d/%d; checkpoint saved to %s. Resume with "
                    "train(resume_from_checkpoint=True) and the same output_dir.",
                    name,
                    self.state.global_step,
                    self.state.max_steps,
                    self._last_checkpoint,
                )
                raise TrainingInterrupted(self._stop_signal, self.state.global_step, self._last_checkpoint)
            logger.warning("received %s as training finished; it completed normally", name)
        return output
