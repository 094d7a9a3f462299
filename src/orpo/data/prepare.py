"""From a user's preference dataset to tokenized pairs, with a report of everything done.

One pipeline for every kind of model; only the row tokenizer differs (:class:`.RowTokenizer`:
text, vision, encoder-decoder).  Steps: accept the data (Dataset, list of dicts, dict of lists,
DataFrame), map columns, check the schema, normalise every row to (prompt, chosen, rejected)
texts, find the questionable rows and apply the ``on_*`` policies (:mod:`.policy`), tokenize
the rows kept and apply ``on_too_long``, measure each pair's ``length``.

Every ``datasets.map`` here is deterministic, so for file-backed data a second run with the
same data and settings is served from the ``datasets`` cache instead of re-tokenizing.  Errors
are :class:`.DataError` naming the row's file/line (kept in the ``_orpo_source`` column) or
its index, the column where there is one, and the option to change.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError
from .load import ColumnMapping, apply_column_mapping, dataset_from_columns, dataset_from_pandas, dataset_from_rows
from .normalise import (
    EMPTY_COLUMN,
    EMPTY_PROMPT_COLUMN,
    FORMAT_COLUMN,
    KEY_COLUMN,
    Batch,
    map_workers,
    normalise_dataset,
)
from .policy import RowPolicies, apply_length_policy, apply_row_policies
from .stream import MIX_COLUMN, READ_COLUMN, count_source_formats, stream_dataset
from .tokenize import FLAGS_COLUMN, TOKENIZED_COLUMNS, LengthLimits, PairTokenizer, RowTokenizer, TokenizeReport
from .validate import TEXT_COLUMNS, check_dataset, column_values, find_row_issues

logger = logging.getLogger(__name__)


@dataclass
class DataReport:
    """Counts of what preparation found and did, per split."""

    #: The split's name in messages (``train``, ``eval``, ``eval[<name>]``).
    split: str = "train"
    #: Rows given, before anything was dropped.
    rows_in: int = 0
    #: Rows per detected format (``standard``, ``conversational``...).
    formats: Counter = field(default_factory=Counter)
    #: Rows whose chosen and rejected completions are the same (surrounding whitespace aside).
    identical_pairs: int = 0
    #: Rows with an empty chosen or rejected completion.
    empty_completions: int = 0
    #: Rows with an empty prompt.
    empty_prompts: int = 0
    #: Rows equal to an earlier one (same prompt, chosen and rejected, and the same images where rows have them).
    duplicates: int = 0
    #: Distinct prompts among the rows.
    distinct_prompts: int = 0
    #: Plain-string rows trained without the tokenizer's chat template (which generation applies).
    untemplated: int = 0
    #: Rows dropped, per reason (the ``on_*`` policies).
    dropped: Counter = field(default_factory=Counter)
    #: What tokenization cut and dropped (``on_too_long``); None before tokenization.
    tokenize: TokenizeReport | None = None
    #: Mixed data: {source: (rows in, rows kept)}.
    per_source: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Mixed data: {source: its rows' formats, as the normaliser detected them}.
    source_formats: dict[str, Counter] = field(default_factory=dict)
    #: Mixed data: {source: rows the source had before mixing} (streamed sources: not counted, absent).
    source_rows: dict[str, int] = field(default_factory=dict)
    #: Streamed data: the counts are of the rows read so far (:mod:`.stream`).
    streamed: bool = False

    @property
    def rows_out(self) -> int:
        """Rows kept: after tokenization, else the rows given less those dropped."""
        return self.tokenize.rows_out if self.tokenize else self.rows_in - sum(self.dropped.values())

    def summary(self) -> str:
        """Everything counted, as one log line."""
        parts = [f"{self.split}: {self.rows_in} rows" + (" streamed so far" if self.streamed else "")]
        if self.formats:
            parts.append("format " + ", ".join(f"{name} x{count}" for name, count in sorted(self.formats.items())))
        for label, count in (
            ("chosen == rejected", self.identical_pairs),
            ("empty completion", self.empty_completions),
            ("empty prompt", self.empty_prompts),
            ("duplicate rows", self.duplicates),
            ("plain-text rows without the chat template", self.untemplated),
        ):
            if count:
                parts.append(f"{count} {label}")
        for reason, count in sorted(self.dropped.items()):
            parts.append(f"dropped {count} ({reason})")
        if self.tokenize is not None:
            parts.append(self.tokenize.summary())
        for name, (rows_in, kept) in self.per_source.items():
            parts.append(self.source_line(name, rows_in, kept))
        return "; ".join(parts)

    def source_line(self, name: str, rows_in: int, kept: int) -> str:
        """One source of a mix: its format(s), the rows it had, those the mix took and those kept.

        Args:
            name: the source's name in the mix.
            rows_in: the rows the mix took from it.
            kept: its rows left after preparation.
        """
        formats = self.source_formats.get(name, Counter())
        shown = ", ".join(fmt if len(formats) == 1 else f"{fmt} x{n}" for fmt, n in sorted(formats.items()))
        read = self.source_rows.get(name)
        counts = f"{read} rows read, {rows_in} mixed in" if read is not None else f"{rows_in} mixed in"
        return f"source {name} ({shown or 'no rows'}): {counts}, {kept} kept"


def to_dataset(data: Any, split: str = "train") -> Any:
    """Accept a datasets.Dataset, a list of row dicts, a dict of columns or a pandas DataFrame.

    Args:
        data: the data as the user gave it.
        split: the split's name in error messages.

    Raises:
        DataError: a ``DatasetDict``, a streamed dataset, or a type none of these.
    """
    import datasets

    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, datasets.DatasetDict):
        raise DataError(f"got a DatasetDict with splits {list(data)}; pass one split, e.g. dataset['train']")
    if isinstance(data, dict):
        return dataset_from_columns(data, split)
    if isinstance(data, list):
        return dataset_from_rows(data, split)
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_dict"):
        return dataset_from_pandas(data, split)
    if isinstance(data, datasets.IterableDataset):
        raise DataError(f"{split} data: streamed data (IterableDataset) is supported for text models only")
    raise DataError(
        f"unsupported dataset type {type(data).__name__}: use datasets.Dataset, a list of dicts or a dict of lists "
        "(or orpo.data.load_preference_data for files and hub ids)"
    )


def _pair_length(batch: Batch) -> dict[str, list[int]]:
    return {
        "length": [
            len(prompt) + max(len(chosen), len(rejected))
            for prompt, chosen, rejected in zip(
                batch["prompt_input_ids"], batch["chosen_input_ids"], batch["rejected_input_ids"], strict=True
            )
        ]
    }


def drop_questionable_rows(dataset: Any, policies: RowPolicies, split: str, report: DataReport) -> Any:
    """Count the normalised rows' formats and issues into ``report``, apply the row policies, and
    remove the normaliser's bookkeeping columns.

    Args:
        dataset: normalised rows, with the normaliser's bookkeeping columns.
        policies: the ``on_*`` row policies.
        split: the split's name in messages.
        report: filled in with the counts.

    Raises:
        DataError: a policy raises on a row, or every row was dropped.
    """
    formats = column_values(dataset, FORMAT_COLUMN)
    report.formats.update(formats)
    if MIX_COLUMN in dataset.column_names:
        count_source_formats(report, column_values(dataset, MIX_COLUMN), formats, None)
    keys = column_values(dataset, KEY_COLUMN) if KEY_COLUMN in dataset.column_names else None
    prompts, chosens, rejecteds, empty = (column_values(dataset, name) for name in (*TEXT_COLUMNS, EMPTY_COLUMN))
    issues = find_row_issues(prompts, chosens, rejecteds, empty, keys, column_values(dataset, EMPTY_PROMPT_COLUMN))
    report.identical_pairs, report.empty_completions = len(issues.identical), len(issues.empty)
    report.empty_prompts = len(issues.empty_prompts)
    report.duplicates, report.distinct_prompts = len(issues.duplicates), issues.distinct_prompts
    bookkeeping = (FORMAT_COLUMN, EMPTY_COLUMN, EMPTY_PROMPT_COLUMN, KEY_COLUMN)
    dataset = dataset.remove_columns([c for c in bookkeeping if c in dataset.column_names])
    drop = apply_row_policies(issues, policies, dataset, split, report.dropped)
    if drop:
        dataset = dataset.select([index for index in range(len(dataset)) if index not in drop])
    if len(dataset) == 0:
        raise DataError(f"{split} data: every row was dropped ({report.summary()})")
    return dataset


def tokenize_dataset(
    dataset: Any,
    row_tokenizer: RowTokenizer,
    on_too_long: str = "truncate",
    num_proc: int | None = None,
    split: str = "train",
) -> tuple[Any, TokenizeReport]:
    """Tokenize normalised rows (prompt/chosen/rejected texts) and apply ``on_too_long``.

    Returns the rows kept (text columns kept too, for generation and inspection) and the report
    of what the limits cut and dropped.

    Args:
        dataset: normalised rows (``prompt``, ``chosen``, ``rejected`` texts).
        row_tokenizer: the kind of model's row tokenizer.
        on_too_long: the policy for pairs over the length limits (``ORPOConfig.on_too_long``).
        num_proc: worker processes for ``datasets.map``; None: the default.
        split: the split's name in messages.
    """
    tokenized = dataset.map(
        row_tokenizer,
        batched=True,
        num_proc=map_workers(num_proc, len(dataset)),
        desc=f"Tokenizing {split} pairs",
    )
    flags = column_values(tokenized, FLAGS_COLUMN)
    keep, report = apply_length_policy(flags, on_too_long, row_tokenizer.describe, tokenized, split)
    if len(keep) < len(tokenized):
        tokenized = tokenized.select(keep)
    return tokenized.remove_columns(FLAGS_COLUMN), report


def prepare_dataset(
    data: Any,
    row_tokenizer: RowTokenizer,
    policies: RowPolicies,
    split: str = "train",
    columns: ColumnMapping | None = None,
    num_proc: int | None = None,
) -> tuple[Any, DataReport]:
    """Validate, normalise, filter and tokenize ``data`` with ``row_tokenizer`` (data already holding
    the three ``*_input_ids`` columns is taken as is).

    Args:
        data: a Dataset, list of row dicts, dict of columns, DataFrame or (text models) IterableDataset.
        row_tokenizer: the kind of model's row tokenizer.
        policies: the ``on_*`` row policies.
        split: the split's name in messages and in the report.
        columns: which source columns hold prompt/chosen/rejected/images; None: the defaults.
        num_proc: worker processes for ``datasets.map``; None: the default.

    Returns:
        ``(tokenized pairs, report)``.

    Raises:
        DataError: the data cannot be read, mapped or validated, or no pair is left.
    """
    import datasets

    if isinstance(data, datasets.IterableDataset):
        report = DataReport(split=split)
        return stream_dataset(data, row_tokenizer, policies, report, columns), report
    dataset = to_dataset(data, split)
    report = DataReport(split=split, rows_in=len(dataset))
    if all(name in dataset.column_names for name in TOKENIZED_COLUMNS):
        return dataset, report
    mixed = MIX_COLUMN in dataset.column_names
    sources_in = Counter(column_values(dataset, MIX_COLUMN)) if mixed else Counter()
    if READ_COLUMN in dataset.column_names:  # each source's row count before mixing, then not carried on
        read = zip(column_values(dataset, MIX_COLUMN), column_values(dataset, READ_COLUMN), strict=True)
        report.source_rows = {name: rows for name, rows in read if rows >= 0}
        dataset = dataset.remove_columns(READ_COLUMN)
    dataset = apply_column_mapping(dataset, columns, f"{split} data")
    check_dataset(dataset, split)
    dataset = normalise_dataset(dataset, row_tokenizer.normaliser, split, num_proc)
    dataset = drop_questionable_rows(dataset, policies, split, report)
    dataset, report.tokenize = tokenize_dataset(dataset, row_tokenizer, policies.on_too_long, num_proc, split)
    if len(dataset) == 0:
        raise DataError(f"{split} data: no pair survived tokenization ({report.summary()})")
    dataset = dataset.map(_pair_length, batched=True, desc=f"Measuring {split} pairs")
    if mixed:
        kept = Counter(column_values(dataset, MIX_COLUMN))
        report.per_source = {name: (rows, kept[name]) for name, rows in sources_in.items()}
    logger.info("prepared %s", report.summary())
    return dataset, report


def prepare_preference_dataset(
    data: Any, tokenizer: Any, args: Any, split: str = "train", columns: ColumnMapping | None = None
) -> tuple[Any, DataReport]:
    """Preference data for a causal LM, by ``args`` (an ORPOConfig: limits, ``on_*`` policies).

    Args:
        data: the preference data (see :func:`prepare_dataset`).
        tokenizer: the model's tokenizer.
        args: the ``ORPOConfig`` whose length limits, row policies, chat template kwargs and
            ``dataset_num_proc`` apply.
        split: the split's name in messages and in the report.
        columns: which source columns hold prompt/chosen/rejected; None: the defaults.

    Returns:
        ``(tokenized pairs, report)``.
    """
    row_tokenizer = PairTokenizer(tokenizer, LengthLimits.from_args(args), args.chat_template_kwargs)
    dataset, report = prepare_dataset(
        data, row_tokenizer, RowPolicies.from_args(args), split, columns, args.dataset_num_proc
    )
    warn_untemplated(report, tokenizer)
    return dataset, report


def warn_untemplated(report: DataReport, tokenizer: Any) -> None:
    """Count (and warn about) plain-string rows of a tokenizer with a chat template: they are trained on the text
    as it is, while ``orpo generate`` / ``orpo chat`` (:mod:`orpo.models.generation`) render prompts with the template.

    Args:
        report: the split's report; its ``untemplated`` count is set.
        tokenizer: the tokenizer the rows were prepared with.
    """
    plain = report.formats.get("standard", 0) + report.formats.get("implicit_standard", 0)
    if not plain or not getattr(tokenizer, "chat_template", None):
        return
    report.untemplated = plain
    logger.warning(
        "%s: %d of %d rows are plain strings, trained without the tokenizer's chat template, while orpo generate "
        "and orpo chat apply it (orpo generate --no-chat-template does not); give prompt/chosen/rejected as "
        "message lists to train with the template",
        report.split,
        plain,
        report.rows_in,
    )
