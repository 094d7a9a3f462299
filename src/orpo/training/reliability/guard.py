"""The non-finite guard: check every optimizer update's losses and gradients before it is applied.

The trainer feeds it each micro-batch (:meth:`NonFiniteGuard.begin_micro_batch` /
:meth:`~NonFiniteGuard.end_micro_batch`, from ``training_step``).  Before the optimizer step the
callback agrees its flags across processes and closes the window (:meth:`~NonFiniteGuard.close_window`):
the decision to hold the update back stays on the device, where the
:class:`~orpo.training.reliability.optimizer.GatedOptimizer` applies it (:meth:`~NonFiniteGuard.allow_step`),
so the step never waits for the device.  The flags are read on the host later (at the step's end
when it logs, saves, evaluates or stops, else one step late) and :meth:`~NonFiniteGuard.judge`
reports the held update, counts it, or raises :class:`NonFiniteError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from orpo.training.metrics import MetricWindows
from orpo.training.reliability.diagnose import Diagnosis, format_rows, rows_of
from orpo.training.reliability.stops import NonFiniteError

logger = logging.getLogger(__name__)

Verdict = Literal["apply", "skip", "stop"]


def decide(loss_bad: bool, grad_bad: bool, policy: str) -> Verdict:
    """The decision table, on flags already agreed across processes.

    Args:
        loss_bad: some micro-batch's loss was non-finite.
        grad_bad: the gradient norm was non-finite.
        policy: ``ORPOConfig.on_nonfinite`` (``"error"`` or ``"skip"``).
    """
    if not (loss_bad or grad_bad):
        return "apply"
    return "skip" if policy == "skip" else "stop"


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of this process's gradients (its shards under FSDP), on device: no host sync.

    Args:
        parameters: the model's parameters; those without a gradient are left out.

    Returns:
        A 0-d tensor, or None when no parameter has a gradient.
    """
    grads = [_local(p.grad) for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(tensor, DTensor):
            return tensor.to_local()
    return tensor


@dataclass
class _Window:
    """One optimizer step's micro-batches: what a report names."""

    losses: list[torch.Tensor] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    grad_norm: torch.Tensor | None = None


class NonFiniteGuard:
    """``ORPOConfig.on_nonfinite``: raise :class:`NonFiniteError` or skip the update.

    ``check_gradients`` is False where a loss scaler owns overflow handling (fp16) or the gradients
    are not ours to read (DeepSpeed); ``deepspeed`` means the update already happened inside backward,
    so a bad step can only be reported. ``diagnose`` re-runs micro-batches to name rows and parameters
    (one process, unsharded model only).

    Args:
        policy: ``"error"`` or ``"skip"``.
        windows: the trainer's metric windows (a skipped micro-batch is left out of them).
        diagnosis: re-runs micro-batches for the report.
        check_gradients: whether the gradient norm is checked.
        deepspeed: whether DeepSpeed applies the update inside backward.
        diagnose: whether reports re-run micro-batches to name rows and parameters.
        world_size: the number of processes.
        process_index: this process's rank, named in reports.
        last_checkpoint: returns the last checkpoint committed in this run, for messages.
    """

    def __init__(
        self,
        policy: str,
        windows: MetricWindows,
        diagnosis: Diagnosis,
        *,
        check_gradients: bool = True,
        deepspeed: bool = False,
        diagnose: bool = True,
        world_size: int = 1,
        process_index: int = 0,
        last_checkpoint: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.policy = policy
        self.windows = windows
        self.diagnosis = diagnosis
        self.check_gradients = check_gradients
        self.deepspeed = deepspeed
        self.diagnose = diagnose
        self.world_size = world_size
        self.process_index = process_index
        self.last_checkpoint = last_checkpoint
        self.reset()
        if policy == "skip" and deepspeed:
            logger.warning(
                "on_nonfinite='skip' cannot undo a DeepSpeed update (the engine steps inside backward); "
                "DeepSpeed's own fp16 loss scaler skips overflowing steps, other non-finite steps raise"
            )

    def reset(self) -> None:
        """Forget the current window (at the start of ``train()``); ``skipped`` counts per run."""
        self.skipped = 0
        self._clear_window()

    def _clear_window(self) -> None:
        self._current = _Window()  # being filled by training_step
        self._closed: _Window | None = None  # its flags not yet judged
        self._snapshot: dict[str, Any] | None = None
        self._allowed: torch.Tensor | None = None  # 0-d bool on device: the coming update may be applied

    # ---- fed by training_step ---------------------------------------------------------------
    def begin_micro_batch(self) -> None:
        """Before a micro-batch: under ``"skip"``, snapshot the metric sums it may have to be left out of."""
        if self.policy == "skip":  # to leave a non-finite micro-batch out of the logged metrics
            self._snapshot = self.windows.snapshot("train")

    def end_micro_batch(
        self, loss: torch.Tensor, inputs: dict[str, Any], gradients: Iterable[torch.nn.Parameter] | None = None
    ) -> None:
        """Record a micro-batch's loss; ``gradients`` after the accumulation window's last backward.

        Args:
            loss: the micro-batch's loss (detached here).
            inputs: the micro-batch, kept for the report.
            gradients: the model's parameters at the window's end, else None.
        """
        loss = loss.detach()
        self._current.losses.append(loss)
        self._current.inputs.append(inputs)
        if self._snapshot is not None:
            self.windows.keep_if("train", self._snapshot, torch.isfinite(loss))  # on device, no host sync
            self._snapshot = None
        if gradients is not None and self.check_gradients:
            self._current.grad_norm = gradient_norm(gradients)

    # ---- before and at the optimizer step ---------------------------------------------------
    def local_flags(self, device: Any) -> torch.Tensor:
        """[non-finite loss, non-finite gradient] on this process, as floats on ``device`` (no host sync).

        Args:
            device: where the flags go (to be all-reduced there).
        """
        zero = torch.zeros((), device=device)
        losses = self._current.losses
        loss_bad = (~torch.isfinite(torch.stack(losses))).any().float().to(device) if losses else zero
        norm = self._current.grad_norm
        grad_bad = (~torch.isfinite(norm)).float().to(device) if norm is not None else zero
        return torch.stack([loss_bad, grad_bad])

    def close_window(self, flags: torch.Tensor) -> None:
        """The step's micro-batches are in and ``flags`` (``local_flags``, agreed across processes) say whether
        its update may be applied: decided on the device, for the gate; :meth:`judge` reads them later.

        Args:
            flags: ``[loss, gradient]`` flags, agreed across processes (non-zero: non-finite).
        """
        self._allowed = flags.amax() <= 0
        self._closed = self._current
        self._current = _Window()

    def judge(self, loss_bad: bool, grad_bad: bool, step: int, epoch: float) -> None:
        """Report, count or stop on the closed window's update (the gate applied or held it already on the
        device); the flags read back from :meth:`close_window`'s.

        Args:
            loss_bad: the agreed loss flag, read on the host.
            grad_bad: the agreed gradient flag, read on the host.
            step: the optimizer step (1-based), for the report.
            epoch: the epoch, for the report.

        Raises:
            NonFiniteError: the policy is ``"error"``, or DeepSpeed already applied the update.
        """
        assert self._closed is not None, "close_window() comes first"
        verdict = decide(loss_bad, grad_bad, self.policy)
        report = self.report(step, epoch) if verdict != "apply" else ""
        self._closed = None
        if verdict == "apply":
            return
        if self.deepspeed:  # the engine stepped inside backward: nothing can be held back any more
            raise NonFiniteError(
                f"{report}\nDeepSpeed applies the update inside backward, so this step could not be held back "
                "(unless DeepSpeed's fp16 loss scaler skipped it): the weights in memory may be damaged. Training "
                f"stopped without saving; resume from the last checkpoint ({self.last_checkpoint() or 'none yet'})."
            )
        if verdict == "skip":
            self.skipped += 1
            logger.warning("%s\nSkipped this update (on_nonfinite='skip'; %d skipped so far).", report, self.skipped)
            return
        raise NonFiniteError(
            f"{report}\nThe update was not applied and training stopped. Check the rows named above or lower "
            "learning_rate; set on_nonfinite='skip' to skip such batches instead."
        )

    def allow_step(self) -> torch.Tensor | bool:
        """The gate of :class:`~orpo.training.reliability.optimizer.GatedOptimizer`: a 0-d bool tensor on the device
        (False: hold the update back) once :meth:`close_window` ran, else True."""
        return True if self._allowed is None else self._allowed

    def step_done(self) -> None:
        """After the optimizer step: open the gate for the next one."""
        self._allowed = None

    def log_fields(self, logs: dict[str, float]) -> dict[str, float]:
        """``skipped_batches`` for a training log under the ``"skip"`` policy.

        Args:
            logs: the log being written.
        """
        if self.policy == "skip" and "loss" in logs and not any(key.startswith("eval_") for key in logs):
            return {"skipped_batches": self.skipped}
        return {}

    # ---- the report -------------------------------------------------------------------------
    def report(self, step: int, epoch: float) -> str:
        """What went non-finite at optimizer step ``step`` (1-based), and where.

        Args:
            step: the optimizer step.
            epoch: the epoch.
        """
        window = self._closed
        assert window is not None, "close_window() comes first"
        losses, inputs = window.losses, window.inputs
        loss_ok = torch.isfinite(torch.stack(losses)).tolist() if losses else []
        norm = float(window.grad_norm) if window.grad_norm is not None else None
        grad_ok = norm is None or math.isfinite(norm)
        what = " and ".join(w for w, bad in (("loss", not all(loss_ok)), ("gradient", not grad_ok)) if bad)
        where = f" on process {self.process_index}" if self.world_size > 1 else ""
        lines = [f"non-finite {what or 'value on another process'} at optimizer step {step}{where} (epoch {epoch:.3f})"]
        for i, (loss, ok) in enumerate(zip(losses, loss_ok, strict=True)):
            if ok:
                continue
            line = f"  micro-batch {i + 1}/{len(inputs)}: loss {float(loss)}; dataset rows {format_rows(rows_of(inputs[i]))}"
            if self.diagnose:
                line += "; " + self.diagnosis.bad_rows(inputs[i])
            lines.append(line)
        if not grad_ok:
            lines.append(f"  gradient norm {norm}")
            if self.diagnose and all(loss_ok):
                lines.extend(self.diagnosis.bad_gradients(inputs))
            elif all(loss_ok):
                lines.append(f"  rows of this step: {format_rows([r for batch in inputs for r in rows_of(batch)])}")
        return "\n".join(lines)
