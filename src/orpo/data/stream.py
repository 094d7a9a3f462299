"""Streamed preference data (``datasets.IterableDataset``): the pipeline of :mod:`.prepare`, applied lazily.

The same column mapping, normalisation, ``on_*`` row policies, tokenization and ``on_too_long`` run
batch by batch as the trainer draws rows; the :class:`~.prepare.DataReport` counts as rows flow
(``streamed=True``), so it holds what training has read so far.  What a stream cannot know up front:
its length (so training needs ``max_steps``), and the ``length`` column used by ``group_by_length``.
Duplicates are found against every row seen before (a set of row hashes, growing with the stream).
``on_*='error'`` raises when the offending row arrives, naming its location.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .errors import SOURCE_COLUMN, DataError
from .load import ColumnMapping
from .normalise import (
    EMPTY_COLUMN,
    EMPTY_PROMPT_COLUMN,
    ENCODED_COLUMN,
    FORMAT_COLUMN,
    KEY_COLUMN,
    Batch,
    decode_mixed,
)
from .policy import RowPolicies, apply_length_policy, apply_row_policies
from .tokenize import FLAGS_COLUMN, TOKENIZED_COLUMNS, TokenizeReport
from .validate import TEXT_COLUMNS, RowIssues

#: Which source of a mix a row came from (:mod:`.mix`); counted per source in the report.
MIX_COLUMN = "_orpo_mix_source"
#: How many rows that source had before mixing (-1 for a stream, not counted up front).
READ_COLUMN = "_orpo_mix_read"
#: Columns of the normaliser and of a mix that the tokenized rows do not carry.
BOOKKEEPING = (FORMAT_COLUMN, EMPTY_COLUMN, EMPTY_PROMPT_COLUMN, KEY_COLUMN, ENCODED_COLUMN, READ_COLUMN)


class _Locations:
    """The slice of a dataset's interface :func:`.errors.row_location` reads, for one batch."""

    column_names = (SOURCE_COLUMN,)

    def __init__(self, locations: Sequence[str]) -> None:
        self.locations = locations

    def __getitem__(self, index: int) -> dict[str, str]:
        return {SOURCE_COLUMN: self.locations[index]}


def _take(batch: Batch, keep: Sequence[int]) -> Batch:
    return {name: [values[i] for i in keep] for name, values in batch.items()}


class StreamPreparer:
    """Batch function for ``IterableDataset.map``: raw rows in, tokenized pairs out (fewer when dropped).

    Args:
        row_tokenizer: the model kind's row tokenizer (with its ``normaliser`` and ``describe``).
        policies: what to do with questionable rows.
        report: the split's :class:`~orpo.data.prepare.DataReport`; marked ``streamed`` and filled as rows pass.
        columns: how the data's column names map to orpo's; None: the usual names.
    """

    def __init__(self, row_tokenizer: Any, policies: RowPolicies, report: Any, columns: ColumnMapping | None) -> None:
        self.row_tokenizer = row_tokenizer
        self.policies = policies
        self.report = report
        report.streamed = True
        report.tokenize = report.tokenize or TokenizeReport()
        self.columns = columns or ColumnMapping()
        self.seen: set[bytes] = set()
        self.prompts: set[bytes] = set()

    def __call__(self, batch: Batch) -> Batch:
        split, report = self.report.split, self.report
        batch = self._mapped(batch, split)
        start = report.rows_in
        size = len(batch[SOURCE_COLUMN])
        report.rows_in += size
        self._count_sources(batch, 0)
        normalised = {**batch, **self.row_tokenizer.normaliser(decode_mixed(batch))}
        issues = self._issues(normalised)
        report.formats.update(normalised[FORMAT_COLUMN])
        count_source_formats(report, batch.get(MIX_COLUMN), normalised[FORMAT_COLUMN], batch.get(READ_COLUMN))
        report.identical_pairs += len(issues.identical)
        report.empty_completions += len(issues.empty)
        report.empty_prompts += len(issues.empty_prompts)
        report.duplicates += len(issues.duplicates)
        report.distinct_prompts = len(self.prompts)
        locations = _Locations(normalised[SOURCE_COLUMN])
        drop = apply_row_policies(issues, self.policies, locations, split, report.dropped)
        kept = _take(
            {k: v for k, v in normalised.items() if k not in BOOKKEEPING}, [i for i in range(size) if i not in drop]
        )
        if not kept[SOURCE_COLUMN]:
            return {name: [] for name in kept}
        tokenized = {**kept, **self.row_tokenizer(kept)}
        keep, part = apply_length_policy(
            tokenized.pop(FLAGS_COLUMN), self.policies.on_too_long, self.row_tokenizer.describe,
            _Locations(tokenized[SOURCE_COLUMN]), split,
        )  # fmt: skip
        part.dropped_rows = [start + i for i in part.dropped_rows]
        _accumulate(report.tokenize, part)
        out = _take(tokenized, keep)
        self._count_sources(out, 1)
        return out

    def _mapped(self, batch: Batch, split: str) -> Batch:
        """Columns renamed to prompt/chosen/rejected (as :func:`.load.apply_column_mapping`), located rows."""
        resolved = self.columns.resolve(list(batch), f"{split} data")
        taken = set(resolved) | set(resolved.values())
        out = {name: values for name, values in batch.items() if name not in taken}
        out.update({target: batch[source] for target, source in resolved.items()})
        if SOURCE_COLUMN not in out:
            size = len(next(iter(batch.values())))
            out[SOURCE_COLUMN] = [f"{split} row {self.report.rows_in + i}" for i in range(size)]
        return out

    def _issues(self, batch: Batch) -> RowIssues:
        """As :func:`.validate.find_row_issues`, with duplicates found against the whole stream so far."""
        issues = RowIssues()
        keys = batch.get(KEY_COLUMN)
        for index, (prompt, chosen, rejected) in enumerate(zip(*(batch[name] for name in TEXT_COLUMNS), strict=True)):
            if batch[EMPTY_COLUMN][index]:
                issues.empty.append(index)
            if batch[EMPTY_PROMPT_COLUMN][index]:
                issues.empty_prompts.append(index)
            if chosen.strip() == rejected.strip():
                issues.identical.append(index)
            row = "\x00".join((prompt, chosen, rejected, str(keys[index]) if keys else ""))
            digest = hashlib.blake2b(row.encode("utf-8"), digest_size=16).digest()
            if digest in self.seen:
                issues.duplicates.append(index)
            self.seen.add(digest)
            self.prompts.add(hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).digest())
        return issues

    def _count_sources(self, batch: Batch, slot: int) -> None:
        for name in batch.get(MIX_COLUMN, ()):
            counts = list(self.report.per_source.get(name, (0, 0)))
            counts[slot] += 1
            self.report.per_source[name] = (counts[0], counts[1])


def count_source_formats(
    report: Any, sources: Sequence[str] | None, formats: Sequence[str], read: Sequence[int] | None
) -> None:
    """A mix's rows: each source's formats (as the normaliser found them) and its row count before mixing.

    Args:
        report: the :class:`~orpo.data.prepare.DataReport` to add to (``source_formats``, ``source_rows``).
        sources: each row's source (:data:`MIX_COLUMN`); None: not a mix, nothing is counted.
        formats: each row's format, as the normaliser found it.
        read: each row's source's row count before mixing (:data:`READ_COLUMN`; -1: a stream, not recorded).
    """
    if sources is None:
        return
    for index, (name, fmt) in enumerate(zip(sources, formats, strict=True)):
        report.source_formats.setdefault(name, Counter())[fmt] += 1
        if read is not None and read[index] >= 0:
            report.source_rows[name] = read[index]


def _accumulate(total: TokenizeReport, part: TokenizeReport) -> None:
    for name in (
        "rows_in",
        "rows_out",
        "prompt_truncated",
        "chosen_truncated",
        "rejected_truncated",
        "dropped_no_room_for_completion",
        "dropped_image_truncated",
        "dropped_too_long",
    ):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.dropped_rows.extend(part.dropped_rows)


def stream_dataset(
    data: Any, row_tokenizer: Any, policies: RowPolicies, report: Any, columns: ColumnMapping | None = None
) -> Any:
    """``data`` (an ``IterableDataset``) prepared lazily; ``report`` fills as the rows are read.

    Data that is already tokenized is returned as it is.

    Args:
        data: a ``datasets.IterableDataset``.
        row_tokenizer: the model kind's row tokenizer.
        policies: what to do with questionable rows.
        report: the split's :class:`~orpo.data.prepare.DataReport`.
        columns: how the data's column names map to orpo's; None: the usual names.

    Raises:
        DataError: an empty stream (found when its columns are unknown); later, as rows arrive, what the
            policies refuse.
    """
    names = data.column_names
    if names is None:  # features unknown until read (e.g. JSON on the hub): the first row's keys
        first = next(iter(data.take(1)), None)
        if first is None:
            raise DataError(f"{report.split} data: the stream is empty")
        names = list(first)
    if set(TOKENIZED_COLUMNS) <= set(names):
        return data
    preparer = StreamPreparer(row_tokenizer, policies, report, columns)
    return data.map(preparer, batched=True, remove_columns=names)
