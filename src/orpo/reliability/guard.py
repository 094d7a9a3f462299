"""The non-finite guard: check every optimizer update's losses and gradient norm before applying it."""

from __future__ import annotations

import logging
import math
import types
from typing import Any

import torch

from .diagnose import _fmt

logger = logging.getLogger(__package__)  # "orpo.reliability", as before the split


class NonFiniteError(RuntimeError):
    """A loss or gradient was NaN/inf; the optimizer update was not applied."""


class NonFiniteGuardMixin:
    """``ORPOConfig.on_nonfinite``: raise :class:`NonFiniteError` or skip the update, agreed across processes."""

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        windows = self.metric_windows
        snapshot = windows.snapshot("train") if self.args.on_nonfinite == "skip" else None
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._window_losses.append(loss.detach())
        self._window_inputs.append(inputs)
        if snapshot is not None:
            # Leave a non-finite micro-batch out of the logged metrics, without a host sync.
            windows.keep_if("train", snapshot, torch.isfinite(loss.detach()))
        return loss

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._last_grad_norm = grad_norm
        return grad_norm

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        # Installed here, before the scheduler wraps ``optimizer.step``, on the optimizer Trainer steps.
        self._install_step_guard(optimizer if optimizer is not None else self.optimizer)
        return super().create_scheduler(num_training_steps, optimizer)

    def _install_step_guard(self, optimizer: Any) -> None:
        if optimizer is None:
            return
        inner = getattr(optimizer, "optimizer", None)
        for candidate in (optimizer, inner):
            if candidate is not None and getattr(candidate.step, "_orpo_guarded", False):
                return
        original = optimizer.step

        def step(_optimizer: Any, *step_args: Any, **step_kwargs: Any) -> Any:
            if self._before_optimizer_step():
                return original(*step_args, **step_kwargs)
            return None

        step._orpo_guarded = True  # type: ignore[attr-defined]
        # A bound method, as torch's LR schedulers expect to wrap.
        optimizer.step = types.MethodType(step, optimizer)

    def _before_optimizer_step(self) -> bool:
        """Check the window, agree across processes; False to skip the update."""
        losses, inputs = self._window_losses, self._window_inputs
        self._window_losses, self._window_inputs = [], []
        grad_norm, self._last_grad_norm = self._last_grad_norm, None
        loss_ok = torch.isfinite(torch.stack(losses)).tolist() if losses else []
        deepspeed = bool(getattr(self, "is_deepspeed_enabled", False))
        # With an fp16 GradScaler (or DeepSpeed's loss scaler), overflowing gradients are routine and the
        # scaler skips them; DeepSpeed's gradients are not ours to inspect.
        check_grads = getattr(self.accelerator, "scaler", None) is None and not deepspeed and grad_norm is not None
        grad_ok = not check_grads or _is_finite(grad_norm)
        flags = [float(not all(loss_ok)), float(not grad_ok), float(self._stop_signal is not None)]
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            tensor = torch.tensor(flags, device=self.args.device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            flags = tensor.tolist()
        self._stop_agreed = bool(flags[2])
        if not (flags[0] or flags[1]):
            return True
        report = self._nonfinite_report(losses, loss_ok, inputs, grad_norm if check_grads else None, grad_ok)
        if deepspeed:  # the engine stepped inside backward: nothing can be held back any more
            raise NonFiniteError(
                f"{report}\nDeepSpeed applies the update inside backward, so this step could not be held back "
                "(unless DeepSpeed's fp16 loss scaler skipped it): the weights in memory may be damaged. Training "
                f"stopped without saving; resume from the last checkpoint ({self._last_checkpoint or 'none yet'})."
            )
        if self.args.on_nonfinite == "skip":
            self._skipped_batches += 1
            logger.warning(
                "%s\nSkipped this update (on_nonfinite='skip'; %d skipped so far).", report, self._skipped_batches
            )
            return False
        raise NonFiniteError(
            f"{report}\nThe update was not applied and training stopped. Check the rows named above or lower "
            "learning_rate; set on_nonfinite='skip' to skip such batches instead."
        )

    # ---- the report -----------------------------------------------------------------------
    def _nonfinite_report(
        self,
        losses: list[torch.Tensor],
        loss_ok: list[bool],
        inputs: list[dict[str, Any]],
        grad_norm: Any,
        grad_ok: bool,
    ) -> str:
        step = self.state.global_step + 1
        what = " and ".join(w for w, bad in (("loss", not all(loss_ok)), ("gradient", not grad_ok)) if bad)
        where = f" on process {self.args.process_index}" if self.args.world_size > 1 else ""
        lines = [
            f"non-finite {what or 'value on another process'} at optimizer step {step}{where} (epoch {self.state.epoch or 0:.3f})"
        ]
        diagnose = self.args.world_size <= 1 and not (
            getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False)
        )
        count = len(inputs)
        for i, (loss, ok) in enumerate(zip(losses, loss_ok, strict=True)):
            if ok:
                continue
            rows = self._rows_of(inputs[i])
            line = f"  micro-batch {i + 1}/{count}: loss {float(loss)}; dataset rows {_fmt(rows)}"
            if diagnose:
                line += "; " + self._diagnose_rows(inputs[i], rows)
            lines.append(line)
        if not grad_ok:
            lines.append(f"  gradient norm {_scalar(grad_norm)}")
            if diagnose and all(loss_ok):
                lines.extend(self._diagnose_gradients(inputs))
            elif all(loss_ok):
                all_rows = [r for batch in inputs for r in self._rows_of(batch)]
                lines.append(f"  rows of this step: {_fmt(all_rows)}")
        return "\n".join(lines)

    # ---- logging ----------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.args.on_nonfinite == "skip" and "loss" in logs and not any(k.startswith("eval_") for k in logs):
            logs["skipped_batches"] = self._skipped_batches
        super().log(logs, start_time)


def _scalar(value: Any) -> float:
    if hasattr(value, "full_tensor"):  # a DTensor (FSDP2)
        value = value.full_tensor()
    return float(value)


def _is_finite(value: Any) -> bool:
    return math.isfinite(_scalar(value))
