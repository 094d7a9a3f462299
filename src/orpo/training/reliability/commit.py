"""The checkpoint commit: write into a staging folder, verify, describe by a manifest, rename.

:class:`CheckpointCommitter` knows nothing of ``Trainer``: it is handed a ``write(staging)``
function that writes every file of the checkpoint (``ORPOTrainer`` binds it to Trainer's savers,
see :mod:`orpo.internals.private`), a ``barrier`` for several processes, whether
this process is the one that writes shared files, and how to tell the user to resume.  A
``checkpoint-<step>`` folder therefore only ever appears complete; a failed save (an ``OSError``,
or the ``RuntimeError`` torch's writer raises when the disk fills mid-file) removes the partial
folder and raises :class:`~orpo.training.reliability.checkpoint.CheckpointError` naming the checkpoint, the cause, the
last complete checkpoint and what to do.

On several nodes the committing process is chosen per filesystem (:func:`elect_committer`): with a
shared output dir only process 0 verifies and renames; without one each node's main process commits
what its node staged, so no node's shards stay in ``tmp-checkpoint-*``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable

from orpo.training.reliability.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    check_structure,
    checkpoint_dir,
    commit_checkpoint,
    describe_write_error,
    format_bytes,
    free_bytes,
    is_no_space,
    latest_complete_checkpoint,
    staging_dir,
    write_manifest,
)

logger = logging.getLogger(__name__)


def save_failure(what: str, directory: str, err: BaseException, last: str | None, resume_hint: str) -> str:
    """The one-line message of a failed save: what, why, the last complete checkpoint, what to do.

    Args:
        what: what was being written ("checkpoint ...", "the model to ...").
        directory: where, for the free-space part of the cause.
        err: the error the save raised.
        last: the last complete checkpoint, or None.
        resume_hint: how to resume (:func:`~orpo.training.reliability.stops.resume_advice`).
    """
    cause = describe_write_error(err, directory)
    fix = "Free space or save less (save_total_limit, save_only_model=True)" if is_no_space(err) else "Fix that"
    if last:  # no final period: the hint may end with a command to copy
        return f"could not write {what}: {cause}. The last complete checkpoint is {last}. {fix}, then {resume_hint}"
    return f"could not write {what}: {cause}. There is no complete checkpoint. {fix}, then start the run again."


def elect_committer(run_dir: str, process_index: int, node_main: bool, token: str, barrier: Callable[[], None]) -> bool:
    """Whether this process commits checkpoints in ``run_dir``: the lowest-ranked node main process that
    sees the same folder (each node main leaves a marker, then reads which markers it sees).

    Every process must call it (two barriers).

    Args:
        run_dir: the folder the checkpoints go to.
        process_index: this process's global rank.
        node_main: whether this process is its node's main one (local rank 0).
        token: the same random string on every process, naming this election's markers.
        barrier: waits for every process.
    """
    prefix = f".orpo-node-{token}-"
    marker = os.path.join(run_dir, f"{prefix}{process_index}")
    if node_main:
        os.makedirs(run_dir, exist_ok=True)
        with open(marker, "w", encoding="utf-8"):
            pass
    barrier()
    elected = False
    if node_main:
        seen = [int(name[len(prefix) :]) for name in os.listdir(run_dir) if name.startswith(prefix)]
        elected = min(seen) == process_index
    barrier()
    if node_main:
        os.remove(marker)
    return elected


class CheckpointCommitter:
    """Atomic checkpoints; ``last`` is the newest one committed in this run, ``size`` its bytes.

    ``is_main``: whether this process verifies and renames (see :func:`elect_committer` for several nodes).

    Args:
        barrier: waits for every process (accelerate's ``wait_for_everyone``).
        is_main: whether this process verifies and renames.
        resume_hint: how to resume, asked when a message needs it.
    """

    def __init__(self, barrier: Callable[[], None], is_main: bool, resume_hint: Callable[[], str]) -> None:
        self.barrier = barrier
        self.is_main = is_main
        self.resume_hint = resume_hint
        self.last: str | None = None
        self.size = 0

    def last_complete(self, run_dir: str) -> str | None:
        """The newest complete checkpoint: this run's, else one an earlier run left in ``run_dir``.

        Args:
            run_dir: the folder of the checkpoints.
        """
        return self.last or latest_complete_checkpoint(run_dir, hashes=False)[0]

    def save(self, run_dir: str, step: int, write: Callable[[str], None]) -> str:
        """Commit ``run_dir/checkpoint-<step>`` from what ``write`` puts in the staging folder; returns its path.

        Args:
            run_dir: the folder of the checkpoints.
            step: the global step.
            write: writes every file of the checkpoint into the staging folder it is given (on every process).

        Raises:
            CheckpointError: writing or verifying failed; the partial folder was removed.
        """
        final = checkpoint_dir(run_dir, step)
        staging = staging_dir(run_dir, step)
        if self.is_main:
            os.makedirs(run_dir, exist_ok=True)
            if os.path.exists(staging):
                shutil.rmtree(staging)
            self._warn_if_short_of_space(run_dir)
        self.barrier()
        try:
            write(staging)
            self.barrier()
            if self.is_main:
                problems = check_structure(staging)
                if problems:
                    raise CheckpointError(f"checkpoint at step {step} failed verification: {'; '.join(problems)}")
                manifest = write_manifest(staging, step)
                commit_checkpoint(staging, final)
                listed = sum(int(entry["size"]) for entry in manifest["files"].values())
                self.size = listed + os.path.getsize(os.path.join(final, MANIFEST_NAME))
        except (OSError, RuntimeError) as err:  # CheckpointError is a RuntimeError, as is torch's full-disk error
            if self.is_main:
                shutil.rmtree(staging, ignore_errors=True)  # before the free space is measured for the message
            what = f"checkpoint {final} (its partial files were removed)"
            raise CheckpointError(
                save_failure(what, run_dir, err, self.last_complete(run_dir), self.resume_hint())
            ) from err
        except BaseException:  # a second Ctrl-C stops at once: leave no partial folder behind
            if self.is_main:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        self.barrier()
        self.last = final
        return final

    def _warn_if_short_of_space(self, run_dir: str) -> None:
        """Before a save: warn when the disk has less room than the last checkpoint took."""
        free = free_bytes(run_dir)
        if self.size and free is not None and free < self.size:
            logger.warning(
                "the disk holding %s has %s free but the last checkpoint took %s: this save will probably fail",
                run_dir,
                format_bytes(free),
                format_bytes(self.size),
            )
