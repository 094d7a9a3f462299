"""The non-finite guard: check every optimizer update's losses and gradients before it is applied.

The trainer feeds it each micro-batch (:meth:`NonFiniteGuard.begin_micro_batch` /
:meth:`~NonFiniteGuard.end_micro_batch`, from ``training_step``); before the optimizer step the
callback agrees its flags across processes and calls :meth:`~NonFiniteGuard.judge`, which lets the
update through, holds it back (the :class:`~orpo.reliability.optimizer.GatedOptimizer` asks
:meth:`~NonFiniteGuard.allow_step`) or raises :class:`NonFiniteError` with a report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch

from ..metrics import MetricWindows
from .diagnose import Diagnosis, format_rows, rows_of
from .errors import NonFiniteError

logger = logging.getLogger(__name__)

Verdict = Literal["apply", "skip", "stop"]


def decide(loss_bad: bool, grad_bad: bool, policy: str) -> Verdict:
    """The decision table, on flags already agreed across processes."""
    if not (loss_bad or grad_bad):
        return "apply"
    return "skip" if policy == "skip" else "stop"


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of this process's gradients (its shards under FSDP), on device: no host sync."""
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


class NonFiniteGuard:
    """``ORPOConfig.on_nonfinite``: raise :class:`NonFiniteError` or skip the update.

    ``check_gradients`` is False where a loss scaler owns overflow handling (fp16) or the gradients
    are not ours to read (DeepSpeed); ``deepspeed`` means the update already happened inside backward,
    so a bad step can only be reported. ``diagnose`` re-runs micro-batches to name rows and parameters
    (one process, unsharded model only).
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
        self._losses: list[torch.Tensor] = []
        self._inputs: list[dict[str, Any]] = []
        self._grad_norm: torch.Tensor | None = None
        self._snapshot: dict[str, Any] | None = None
        self._hold = False

    # ---- fed by training_step ---------------------------------------------------------------
    def begin_micro_batch(self) -> None:
        if self.policy == "skip":  # to leave a non-finite micro-batch out of the logged metrics
            self._snapshot = self.windows.snapshot("train")

    def end_micro_batch(
        self, loss: torch.Tensor, inputs: dict[str, Any], gradients: Iterable[torch.nn.Parameter] | None = None
    ) -> None:
        """Record a micro-batch's loss; ``gradients`` after the accumulation window's last backward."""
        loss = loss.detach()
        self._losses.append(loss)
        self._inputs.append(inputs)
        if self._snapshot is not None:
            self.windows.keep_if("train", self._snapshot, torch.isfinite(loss))  # on device, no host sync
            self._snapshot = None
        if gradients is not None and self.check_gradients:
            self._grad_norm = gradient_norm(gradients)

    # ---- before and at the optimizer step ---------------------------------------------------
    def local_flags(self, device: Any) -> torch.Tensor:
        """[non-finite loss, non-finite gradient] on this process, as floats on ``device``."""
        zero = torch.zeros((), device=device)
        loss_bad = (~torch.isfinite(torch.stack(self._losses))).any().float().to(device) if self._losses else zero
        norm = self._grad_norm
        grad_bad = (~torch.isfinite(norm)).float().to(device) if norm is not None else zero
        return torch.stack([loss_bad, grad_bad])

    def judge(self, loss_bad: bool, grad_bad: bool, step: int, epoch: float) -> None:
        """Apply, hold back or stop the coming update; flags agreed across processes. Clears the window."""
        verdict = decide(loss_bad, grad_bad, self.policy)
        report = self.report(step, epoch) if verdict != "apply" else ""
        self._clear_window()
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
            self._hold = True
            logger.warning("%s\nSkipped this update (on_nonfinite='skip'; %d skipped so far).", report, self.skipped)
            return
        raise NonFiniteError(
            f"{report}\nThe update was not applied and training stopped. Check the rows named above or lower "
            "learning_rate; set on_nonfinite='skip' to skip such batches instead."
        )

    def allow_step(self) -> bool:
        """The gate of :class:`~orpo.reliability.optimizer.GatedOptimizer`: False for a held-back update."""
        return not self._hold

    def step_done(self) -> None:
        self._hold = False

    def log_fields(self, logs: dict[str, float]) -> dict[str, float]:
        """``skipped_batches`` for a training log under the ``"skip"`` policy."""
        if self.policy == "skip" and "loss" in logs and not any(key.startswith("eval_") for key in logs):
            return {"skipped_batches": self.skipped}
        return {}

    # ---- the report -------------------------------------------------------------------------
    def report(self, step: int, epoch: float) -> str:
        """What went non-finite at optimizer step ``step`` (1-based), and where."""
        losses, inputs = self._losses, self._inputs
        loss_ok = torch.isfinite(torch.stack(losses)).tolist() if losses else []
        norm = float(self._grad_norm) if self._grad_norm is not None else None
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
