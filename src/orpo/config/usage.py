"""The error type of a wrong option or combination of options, and the one line an error is reported by."""

from __future__ import annotations


class UsageError(ValueError):
    """A wrong option, value or combination of options (exit status 2 on the command line)."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type's name when it has none): hub and file errors run to many
    lines, and orpo's own message around them is one."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
