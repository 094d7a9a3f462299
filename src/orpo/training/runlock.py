"""One run per output dir: ``<output_dir>/.orpo-run.lock`` names the process that holds it.

A second launcher on the same output dir would overwrite the first one's checkpoints and model.  The
launch's main process creates the lock (``O_EXCL``), the others learn the outcome from it, and it is
removed when the run ends.  A lock left by a process that no longer exists on this host is stale and
taken over; one from another host cannot be checked and is reported with the way to clear it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from orpo.config.usage import UsageError

logger = logging.getLogger(__name__)

LOCK_NAME = ".orpo-run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            holder = json.load(handle)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _refusal(path: str, holder: dict[str, Any]) -> str:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
    return (
        f"{os.path.dirname(path)} is in use by another orpo run ({who}): two runs on one output dir overwrite "
        f"each other's checkpoints. Wait for it to end, choose another --output-dir, or delete {path} if that "
        "run is gone"
    )


def acquire(output_dir: str) -> str | None:
    """Create the lock; None on success, else why it is held.  Takes over a stale lock of this host.

    Args:
        output_dir: the run's output folder; created if missing.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            pid = holder.get("pid")
            if holder.get("host") == me["host"] and isinstance(pid, int) and not _alive(pid):
                logger.warning("removing a stale run lock %s: process %d is gone", path, pid)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            return _refusal(path, holder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        return None
    return _refusal(path, _read(path))


def release(output_dir: str) -> None:
    """Remove the lock if this process holds it.

    Args:
        output_dir: the run's output folder.
    """
    path = os.path.join(output_dir, LOCK_NAME)
    holder = _read(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def holding(output_dir: str, is_main: bool, share: Callable[[str | None], str | None] | None = None) -> Iterator[None]:
    """Hold the output dir's lock for the block; ``share`` hands the main process's outcome to every process.

    Args:
        output_dir: the run's output folder.
        is_main: whether this process creates (and removes) the lock.
        share: broadcasts the main process's outcome (None or the refusal) to all; None for one process.

    Raises:
        UsageError: another run holds the lock.
    """
    problem = acquire(output_dir) if is_main else None
    if share is not None:
        problem = share(problem)
    if problem is not None:
        raise UsageError(problem)
    try:
        yield
    finally:
        if is_main:
            release(output_dir)
