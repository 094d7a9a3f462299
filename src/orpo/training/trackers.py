"""A check of the ``report_to`` trackers before any data preparation: without it a missing tracker package
fails only when the Trainer is built, after the data has been read and tokenised.

The trackers and their packages are rows of orpo's one table of optional packages, :mod:`orpo.config.extras`.
"""

from __future__ import annotations

from orpo.config.extras import TRACKERS, check_trackers

__all__ = ["TRACKERS", "check_trackers"]
