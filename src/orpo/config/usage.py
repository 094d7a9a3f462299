"""The error type of a wrong option or combination of options, and the one line an error is reported by
(for a failed write: what failed, and the free space where the disk is full).

Every layer reports errors through these, so they sit with the options at the bottom of the package.
"""

from __future__ import annotations

import errno
import os
import shutil


class UsageError(ValueError):
    """A wrong option, value or combination of options (exit status 2 on the command line)."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type's name when it has none): hub and file errors run to many
    lines, and orpo's own message around them is one."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


#: errno values of a full disk or quota.
NO_SPACE_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
#: What torch's zip writer says when a write comes up short (in practice: the disk filled up).
_TORCH_WRITER_FAILURES = ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")


def format_bytes(count: float) -> str:
    """A size a person reads at a glance: '512 B', '3.4 MB', '12.1 GB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def free_bytes(path: str) -> int | None:
    """Free space on the filesystem holding ``path`` (or its nearest existing parent); None if unknown."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def is_no_space(err: BaseException) -> bool:
    """A full disk: ENOSPC/EDQUOT, or torch's writer failing mid-file (``unexpected pos``)."""
    if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _TORCH_WRITER_FAILURES)


def describe_write_error(err: BaseException, directory: str) -> str:
    """What went wrong writing into ``directory``, in a few words; with the free space for a full disk."""
    free = free_bytes(directory)
    free_text = f"has {format_bytes(free)} free" if free is not None else "has an unknown amount of free space"
    first = first_line(err)
    if isinstance(err, OSError):
        detail = (err.strerror or first) + (f" writing {err.filename}" if err.filename else "")
    else:
        detail = (
            first if type(err).__module__.startswith("orpo.") else f"{type(err).__name__}: {first}"
        )  # orpo's own say it all
    if not is_no_space(err):
        return detail
    if isinstance(err, OSError):
        written = f" writing {err.filename}" if err.filename else ""
        return f"no space left on the device{written} (the disk holding {directory} {free_text})"
    return f"torch's file writer stopped mid-file ({detail}): the disk is probably full ({directory} {free_text})"
