"""Exact resume: which checkpoint to resume from, and the loop's not-yet-logged sums saved with it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Literal

from orpo.training.reliability.checkpoint import (
    MANIFEST_NAME,
    TRAINER_STATE_NAME,
    describe_skipped,
    latest_complete_checkpoint,
    verify_checkpoint,
)

logger = logging.getLogger(__name__)

#: Checkpoints verified in this process: path -> the manifest's mtime then.  ``orpo train`` checks the
#: checkpoint before loading data, and the trainer again at ``train()``: hashing it once is enough.
_VERIFIED: dict[str, int] = {}


def _stamp(path: str) -> int | None:
    try:
        return os.stat(os.path.join(path, MANIFEST_NAME)).st_mtime_ns
    except OSError:
        return None


_TRUE_WORDS = ("true", "latest", "last", "yes")
_FALSE_WORDS = ("false", "no", "none", "")


def resolve_resume(
    resume: str | os.PathLike[str] | bool | None, output_dir: str, world_size: int = 1, process_index: int = 0
) -> str | None:
    """The checkpoint to resume from, verified; ``True`` (or "true"/"latest") for the newest complete one.

    Under several processes the main one decides and broadcasts, so all resume from the same place.

    Args:
        resume: a checkpoint folder, True or a word ("true", "latest", "last", "yes"; "false", "no", "none"),
            or None/False: start afresh.
        output_dir: where ``True`` looks for checkpoints.
        world_size: the number of processes.
        process_index: this process's rank (0 decides).

    Raises:
        ValueError: no complete checkpoint to resume from, or the one named does not verify.
    """
    if isinstance(resume, str) and not os.path.exists(resume):
        # From YAML or a command line: "true"/"latest" mean the newest complete checkpoint.
        word = resume.strip().lower()
        if word in _TRUE_WORDS:
            resume = True
        elif word in _FALSE_WORDS:
            resume = None
    if resume is None or resume is False:
        return None
    if world_size <= 1:
        return find_resume(resume, output_dir)
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if process_index == 0:
        try:
            box[0] = ("ok", find_resume(resume, output_dir))
        except ValueError as err:
            box[0] = ("error", str(err))
    broadcast_object_list(box, from_process=0)
    status, value = box[0]
    if status == "error":
        raise ValueError(value)
    return str(value)


def find_resume(resume: str | os.PathLike[str] | Literal[True], output_dir: str) -> str:
    """The checkpoint ``resume`` names, verified (once per process); True: the newest complete one.

    Args:
        resume: a checkpoint folder, or True.
        output_dir: where ``True`` looks for checkpoints.

    Raises:
        ValueError: no complete checkpoint in ``output_dir``, or the one named does not verify.
    """
    if resume is True:
        path, skipped = latest_complete_checkpoint(output_dir)
        if path is not None and (stamp := _stamp(path)) is not None:
            _VERIFIED[os.path.abspath(path)] = stamp
        if path is None:
            detail = f"; skipped: {describe_skipped(skipped)}" if skipped else ""
            raise ValueError(
                f"nothing to resume: {output_dir!r} has no complete checkpoint{detail}; leave out "
                "resume_from_checkpoint (--resume-from-checkpoint) to start afresh"
            )
        if skipped:
            logger.warning(
                "resuming from %s; newer checkpoint(s) skipped as incomplete or damaged: %s",
                path,
                describe_skipped(skipped),
            )
        return path
    path = os.fspath(resume)
    stamp = _stamp(path)
    if stamp is not None and _VERIFIED.get(os.path.abspath(path)) == stamp:
        return path
    problems = verify_checkpoint(path)
    if problems and not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
        # Trainer also accepts a folder of weights only; then only the weights must be sound.
        problems = [p for p in problems if not p.startswith(TRAINER_STATE_NAME)]
    if problems:
        raise ValueError(
            f"cannot resume from {path}: {'; '.join(problems)}. Pass resume_from_checkpoint=True to resume "
            "from the newest complete checkpoint in output_dir."
        )
    if stamp is not None:
        _VERIFIED[os.path.abspath(path)] = stamp
    return path


@dataclasses.dataclass
class LoopState:
    """What ``Trainer`` keeps only in memory between logging steps, per process.

    ``tr_loss`` is the sum of the losses since ``globalstep_last_logged``; ``metric_sums`` are
    :meth:`orpo.training.metrics.MetricWindows.export`'s; ``skipped_batches`` the guard's count.

    Attributes:
        global_step: the step the state was saved at.
        tr_loss: the sum of the losses since ``globalstep_last_logged``.
        globalstep_last_logged: the step of the last log.
        metric_sums: the train metric sums not yet logged.
        skipped_batches: the guard's count of skipped updates.
    """

    global_step: int
    tr_loss: float
    globalstep_last_logged: int
    metric_sums: dict[str, float]
    skipped_batches: int = 0

    @staticmethod
    def file_name(world_size: int, process_index: int) -> str:
        """``orpo_state.json``, or ``orpo_state_<rank>.json`` under several processes.

        Args:
            world_size: the number of processes.
            process_index: this process's rank.
        """
        return "orpo_state.json" if world_size <= 1 else f"orpo_state_{process_index}.json"

    def save(self, directory: str, world_size: int = 1, process_index: int = 0) -> None:
        """Write this process's state into the (staging) checkpoint ``directory``.

        Args:
            directory: the checkpoint folder.
            world_size: the number of processes.
            process_index: this process's rank.
        """
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, self.file_name(world_size, process_index)), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f)

    @classmethod
    def load(cls, checkpoint: str, global_step: int, world_size: int = 1, process_index: int = 0) -> LoopState | None:
        """The state saved in ``checkpoint``, if it has one for this process and ``global_step``.

        Args:
            checkpoint: the resumed checkpoint folder.
            global_step: the step Trainer resumed at (a state of another step is ignored).
            world_size: the number of processes.
            process_index: this process's rank.
        """
        path = os.path.join(checkpoint, cls.file_name(world_size, process_index))
        if not os.path.isfile(path):
            logger.info(
                "%s has no orpo loop state: the first logged values after resuming cover fewer steps", checkpoint
            )
            return None
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
        if values.get("global_step") != global_step:
            return None
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})
