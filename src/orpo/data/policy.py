"""The ``on_*`` options of ``ORPOConfig``, applied one way for every kind of model.

:func:`apply_row_policies` decides on the questionable rows (``on_empty_completion``,
``on_identical_pair``, ``on_duplicate``, ``on_empty_prompt``); :func:`apply_length_policy` on the rows the length
limits cut (``on_too_long``).  Nothing is dropped without a count, and an ``error`` names the
first such row's file/line (or index) and the option that would accept it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DataError, row_location
from .tokenize import IMAGE_TRUNCATED, NO_ROOM_FOR_COMPLETION, UNUSABLE, TokenizeReport
from .validate import RowIssues

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowPolicies:
    """What to do with each kind of questionable row: ORPOConfig's options of the same names (no
    defaults here, so they are defined once, there).

    ``on_empty_prompt`` is ``keep`` by default there: a pair with an empty (or whitespace-only)
    prompt still carries a full preference signal (an unconditional pair, which the loss handles
    like any other), so dropping it would lose data and an error would refuse data that means it;
    it is kept, counted in the report and warned about with the first row's location, which is
    where a wrongly mapped or missing prompt column shows.

    Each is ``"error"``, ``"drop"`` or ``"keep"``; ``on_too_long`` is ``"truncate"``, ``"drop"`` or ``"error"``.

    Attributes:
        on_identical_pair: rows whose chosen equals their rejected (surrounding whitespace aside).
        on_empty_completion: rows with an empty chosen or rejected completion.
        on_duplicate: rows equal to an earlier one.
        on_too_long: rows over a length limit.
        on_empty_prompt: rows with an empty or whitespace-only prompt.
    """

    on_identical_pair: str
    on_empty_completion: str
    on_duplicate: str
    on_too_long: str
    on_empty_prompt: str

    @classmethod
    def from_args(cls, args: Any) -> RowPolicies:
        """The policies of an ``ORPOConfig`` (its ``on_*`` fields).

        Args:
            args: an ``ORPOConfig``.
        """
        return cls(
            args.on_identical_pair, args.on_empty_completion, args.on_duplicate, args.on_too_long, args.on_empty_prompt
        )


def apply_policy(
    policy: str, rows: Sequence[int], label: str, option: str, dataset: Any, split: str, dropped: Counter
) -> bool:
    """One option applied to the ``rows`` it concerns; True if they must be dropped (counted in ``dropped``).

    Args:
        policy: ``"error"``, ``"drop"`` or ``"keep"`` (a kept row is warned about).
        rows: the indices of the rows concerned; none: nothing happens.
        label: what is wrong with them, for the messages and the count.
        option: the option's name, for the error's advice.
        dataset: the dataset, for the first row's location.
        split: the split's name, for the messages.
        dropped: label -> dropped rows; increased in place.

    Raises:
        DataError: ``policy`` is ``"error"``; names the first row.
    """
    if not rows:
        return False
    first = row_location(dataset, rows[0], split)
    if policy == "error":
        raise DataError(
            f"{first}: {label} ({len(rows)} such row(s) in the {split} data); fix the data or set {option}='drop' "
            "or 'keep'"
        )
    if policy == "drop":
        dropped[label] += len(rows)
        logger.warning("%s: dropping %d row(s): %s (first: %s)", split, len(rows), label, first)
        return True
    logger.warning("%s: keeping %d row(s): %s (first: %s)", split, len(rows), label, first)
    return False


def apply_row_policies(
    issues: RowIssues, policies: RowPolicies, dataset: Any, split: str, dropped: Counter
) -> set[int]:
    """Indices of the rows to drop; a row is counted once, under the first policy that drops it.

    Args:
        issues: the questionable rows (:func:`~orpo.data.validate.find_row_issues`).
        policies: what to do with each kind.
        dataset: the normalised dataset, for the rows' locations.
        split: the split's name, for the messages.
        dropped: label -> dropped rows; increased in place.

    Raises:
        DataError: a policy is ``"error"`` and rows of its kind exist.
    """
    drop: set[int] = set()
    for rows, policy, label, option in (
        (issues.empty, policies.on_empty_completion, "empty chosen or rejected", "on_empty_completion"),
        (issues.identical, policies.on_identical_pair, "chosen == rejected", "on_identical_pair"),
        (issues.duplicates, policies.on_duplicate, "duplicate row", "on_duplicate"),
        (issues.empty_prompts, policies.on_empty_prompt, "empty prompt", "on_empty_prompt"),
    ):
        fresh = [index for index in rows if index not in drop]
        if apply_policy(policy, fresh, label, option, dataset, split, dropped):
            drop.update(fresh)
    return drop


def apply_length_policy(
    flags: Sequence[int], on_too_long: str, describe: Callable[[int], str], dataset: Any, split: str
) -> tuple[list[int], TokenizeReport]:
    """The rows to keep after the length limits, and the report counting what they cut.

    Every truncation is counted.  A row the limits leave unusable (no room for a completion, an
    image cut) is dropped under any policy; a row merely over a limit is kept truncated
    (``truncate``) or dropped (``drop``).  ``error`` raises on the first row either would drop,
    described by ``describe`` (the row tokenizer's account of its limits).

    Args:
        flags: each tokenized row's truncation flags (0: not cut).
        on_too_long: ``"truncate"``, ``"drop"`` or ``"error"``.
        describe: flags -> why a row was cut, in words.
        dataset: the dataset, for the first row's location.
        split: the split's name, for the messages.

    Returns:
        (indices of the rows to keep, the report of truncations and drops).

    Raises:
        DataError: ``on_too_long="error"`` and a row over a limit (or unusable).
    """
    report = TokenizeReport(rows_in=len(flags))
    keep: list[int] = []
    for index, flag in enumerate(flags):
        report.count_truncations(flag)
        if flag & UNUSABLE or (flag and on_too_long != "truncate"):
            report.dropped_rows.append(index)
        else:
            keep.append(index)
    over = report.dropped_rows
    if over and on_too_long == "error":
        raise DataError(
            f"{row_location(dataset, over[0], split)}: {describe(flags[over[0]])} ({len(over)} such row(s) in the "
            f"{split} data); raise the limits, or set on_too_long='truncate' or 'drop'"
        )
    for index in over:
        if flags[index] & IMAGE_TRUNCATED:
            report.dropped_image_truncated += 1
        elif flags[index] & NO_ROOM_FOR_COMPLETION:
            report.dropped_no_room_for_completion += 1
        else:
            report.dropped_too_long += 1
    report.rows_out = len(keep)
    return keep, report
