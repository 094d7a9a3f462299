"""Atomic checkpoint saving (via :mod:`orpo.checkpoint`) and exact resume of the loop's unlogged sums."""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import torch
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints

from ..checkpoint import (
    TRAINER_STATE_NAME,
    CheckpointError,
    check_structure,
    commit_checkpoint,
    describe_skipped,
    latest_complete_checkpoint,
    staging_dir,
    verify_checkpoint,
    write_manifest,
)

logger = logging.getLogger(__package__)  # "orpo.reliability", as before the split


def _state_file(world_size: int, process_index: int) -> str:
    return "orpo_state.json" if world_size <= 1 else f"orpo_state_{process_index}.json"


class CheckpointMixin:
    """Checkpoints written to a staging directory, verified and renamed; resume from a verified one."""

    def _resolve_resume(self, resume: str | bool | None) -> str | None:
        """The checkpoint to resume from: verified, or the newest complete one for ``True``."""
        if isinstance(resume, str) and not os.path.exists(resume):
            # From YAML or a command line: "true"/"latest" mean the newest complete checkpoint.
            word = resume.strip().lower()
            if word in ("true", "latest", "last", "yes"):
                resume = True
            elif word in ("false", "no", "none", ""):
                resume = None
        if resume is None or resume is False:
            return None
        if self.args.world_size > 1:
            from accelerate.utils import broadcast_object_list

            box: list[Any] = [None]
            if self.args.process_index == 0:
                try:
                    box[0] = ("ok", self._find_resume(resume))
                except ValueError as err:
                    box[0] = ("error", str(err))
            broadcast_object_list(box, from_process=0)
            status, value = box[0]
            if status == "error":
                raise ValueError(value)
            return value
        return self._find_resume(resume)

    def _find_resume(self, resume: str | bool) -> str:
        out = self.args.output_dir
        if resume is True:
            path, skipped = latest_complete_checkpoint(out)
            if path is None:
                detail = f"; skipped: {describe_skipped(skipped)}" if skipped else ""
                raise ValueError(f"resume_from_checkpoint=True but {out!r} has no complete checkpoint{detail}")
            if skipped:
                logger.warning(
                    "resuming from %s; newer checkpoint(s) skipped as incomplete or damaged: %s",
                    path,
                    describe_skipped(skipped),
                )
            return path
        path = os.fspath(resume)
        problems = verify_checkpoint(path)
        if problems and not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            # Trainer also accepts a folder of weights only; then only the weights must be sound.
            problems = [p for p in problems if not p.startswith(TRAINER_STATE_NAME)]
        if problems:
            raise ValueError(
                f"cannot resume from {path}: {'; '.join(problems)}. Pass resume_from_checkpoint=True to resume "
                "from the newest complete checkpoint in output_dir."
            )
        return path

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """``Trainer._save_checkpoint``, written to a staging directory that is verified and renamed."""
        args = self.args
        step = self.state.global_step
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        staging = staging_dir(run_dir, step)
        if args.should_save:
            os.makedirs(run_dir, exist_ok=True)
            if os.path.exists(staging):
                shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        try:
            self.save_model(staging, _internal_call=True)
            if (
                args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST)
                and self.state.best_global_step
            ):
                self.accelerator.wait_for_everyone()
                best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
                if self.state.best_global_step == step or os.path.exists(best):
                    self.state.best_model_checkpoint = best
            if not args.save_only_model:
                self._save_optimizer_and_scheduler(staging)
                self._save_scaler(staging)
                self._save_rng_state(staging)
            self._save_loop_state(staging)
            if args.should_save:
                for cb in [
                    c for c in [*self.callback_handler.callbacks, self.control] if isinstance(c, ExportableState)
                ]:
                    name = cb.__class__.__name__
                    if isinstance(self.state.stateful_callbacks.get(name), list):
                        self.state.stateful_callbacks[name].append(cb.state())
                    else:
                        self.state.stateful_callbacks[name] = cb.state()
                self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
            self.accelerator.wait_for_everyone()
            if args.should_save:
                problems = check_structure(staging)
                if problems:
                    raise CheckpointError(f"checkpoint at step {step} failed verification: {'; '.join(problems)}")
                write_manifest(staging, step)
                commit_checkpoint(staging, final)
        except (OSError, CheckpointError) as err:
            if args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            previous = self._last_checkpoint or "none written in this run"
            raise CheckpointError(
                f"could not write checkpoint {final}: {err}. Nothing was renamed into place; the last complete "
                f"checkpoint is {previous}."
            ) from err
        self.accelerator.wait_for_everyone()
        self._last_checkpoint = final
        if args.push_to_hub:
            self._push_from_checkpoint(final)
        if args.should_save:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _save_loop_state(self, output_dir: str) -> None:
        """What ``Trainer`` keeps only in memory between logging steps, per process."""
        tr_loss = getattr(self, "_tr_loss", None)
        state = {
            "global_step": self.state.global_step,
            "tr_loss": float(tr_loss) if tr_loss is not None else 0.0,
            "globalstep_last_logged": getattr(self, "_globalstep_last_logged", self.state.global_step),
            "metric_sums": self.metric_windows.export("train"),
            "skipped_batches": self._skipped_batches,
        }
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, _state_file(self.args.world_size, self.args.process_index))
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(state, handle)

    def _restore_loop_state(self) -> None:
        path = self._resume_checkpoint
        if not path:
            return
        file = os.path.join(path, _state_file(self.args.world_size, self.args.process_index))
        if not os.path.isfile(file):
            logger.info("%s has no orpo loop state: the first logged values after resuming cover fewer steps", path)
            return
        with open(file, encoding="utf-8") as handle:
            state = json.load(handle)
        if state.get("global_step") != self.state.global_step:
            return
        if getattr(self, "_tr_loss", None) is not None:
            self._tr_loss += state["tr_loss"]
        self._globalstep_last_logged = state["globalstep_last_logged"]
        self.metric_windows.load("train", state["metric_sums"], self.args.device)
        self._skipped_batches = state.get("skipped_batches", 0)
