"""The error type of a wrong option or combination of options."""

from __future__ import annotations


class UsageError(ValueError):
    """A wrong option, value or combination of options (exit status 2 on the command line)."""
