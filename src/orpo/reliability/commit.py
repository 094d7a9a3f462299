"""The checkpoint commit: write into a staging folder, verify, describe by a manifest, rename.

:class:`CheckpointCommitter` knows nothing of ``Trainer``: it is handed a ``write(staging)``
function that writes every file of the checkpoint (``ORPOTrainer`` binds it to Trainer's savers,
see :mod:`orpo.reliability.trainer_internals`), a ``barrier`` for several processes, and whether
this process is the one that writes shared files.  A ``checkpoint-<step>`` folder therefore only
ever appears complete; a failed save raises :class:`~orpo.checkpoint.CheckpointError` and leaves
the earlier checkpoints as they were.

On several nodes the committing process is chosen per filesystem (:func:`elect_committer`): with a
shared output dir only process 0 verifies and renames; without one each node's main process commits
what its node staged, so no node's shards stay in ``tmp-checkpoint-*``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from ..checkpoint import (
    CheckpointError,
    check_structure,
    checkpoint_dir,
    commit_checkpoint,
    staging_dir,
    write_manifest,
)


def elect_committer(run_dir: str, process_index: int, node_main: bool, token: str, barrier: Callable[[], None]) -> bool:
    """Whether this process commits checkpoints in ``run_dir``: the lowest-ranked node main process that
    sees the same folder (each node main leaves a marker, then reads which markers it sees).

    Every process must call it (two barriers).
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
    """Atomic checkpoints; ``last`` is the newest one committed in this run.

    ``is_main``: whether this process verifies and renames (see :func:`elect_committer` for several nodes).
    """

    def __init__(self, barrier: Callable[[], None], is_main: bool) -> None:
        self.barrier = barrier
        self.is_main = is_main
        self.last: str | None = None

    def save(self, run_dir: str, step: int, write: Callable[[str], None]) -> str:
        """Commit ``run_dir/checkpoint-<step>`` from what ``write`` puts in the staging folder; returns its path."""
        final = checkpoint_dir(run_dir, step)
        staging = staging_dir(run_dir, step)
        if self.is_main:
            os.makedirs(run_dir, exist_ok=True)
            if os.path.exists(staging):
                shutil.rmtree(staging)
        self.barrier()
        try:
            write(staging)
            self.barrier()
            if self.is_main:
                problems = check_structure(staging)
                if problems:
                    raise CheckpointError(f"checkpoint at step {step} failed verification: {'; '.join(problems)}")
                write_manifest(staging, step)
                commit_checkpoint(staging, final)
        except (OSError, CheckpointError) as err:
            if self.is_main:
                shutil.rmtree(staging, ignore_errors=True)
            previous = self.last or "none written in this run"
            raise CheckpointError(
                f"could not write checkpoint {final}: {err}. Nothing was renamed into place; the last complete "
                f"checkpoint is {previous}."
            ) from err
        self.barrier()
        self.last = final
        return final
