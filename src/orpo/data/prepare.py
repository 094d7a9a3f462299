"""From a user's preference dataset to tokenized pairs, with a report of everything done.

Steps: accept the data (Dataset, list of dicts, dict of lists), map columns, check the schema,
normalise every row to (prompt, chosen, rejected) texts (:mod:`.formats`), count questionable
rows and apply the ``on_*`` policies of ``ORPOConfig``, tokenize (:mod:`.tokenize`).  Every
``datasets.map`` here is deterministic, so for file-backed data a second run with the same
data and tokenizer is served from the ``datasets`` cache instead of re-tokenizing.  Errors name
the row's file/line (kept in the ``_orpo_source`` column) or its index.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .errors import SOURCE_COLUMN, DataError
from .formats import FORMAT_REVISION, normalize_row
from .load import ColumnMapping, apply_column_mapping, dataset_from_columns, dataset_from_rows
from .tokenize import (
    CHOSEN_TRUNCATED,
    NO_ROOM_FOR_COMPLETION,
    PROMPT_TRUNCATED,
    REJECTED_TRUNCATED,
    TOKENIZED_COLUMNS,
    LengthLimits,
    PairTokenizer,
    TokenizeReport,
    tokenize_dataset,
)
from .validate import TEXT_COLUMNS, check_dataset, column_values, find_row_issues

logger = logging.getLogger(__name__)

FORMAT_COLUMN = "_orpo_format"
EMPTY_COLUMN = "_orpo_empty"


@dataclass
class DataReport:
    """Counts of what preparation found and did, per split."""

    split: str = "train"
    rows_in: int = 0
    formats: Counter = field(default_factory=Counter)
    identical_pairs: int = 0
    empty_completions: int = 0
    duplicates: int = 0
    distinct_prompts: int = 0
    dropped: Counter = field(default_factory=Counter)
    tokenize: TokenizeReport | None = None

    @property
    def rows_out(self) -> int:
        return self.tokenize.rows_out if self.tokenize else self.rows_in - sum(self.dropped.values())

    def summary(self) -> str:
        parts = [f"{self.split}: {self.rows_in} rows"]
        if self.formats:
            parts.append("format " + ", ".join(f"{name} x{count}" for name, count in sorted(self.formats.items())))
        for label, count in (
            ("chosen == rejected", self.identical_pairs),
            ("empty completion", self.empty_completions),
            ("duplicate rows", self.duplicates),
        ):
            if count:
                parts.append(f"{count} {label}")
        for reason, count in sorted(self.dropped.items()):
            parts.append(f"dropped {count} ({reason})")
        if self.tokenize is not None:
            parts.append(self.tokenize.summary())
        return "; ".join(parts)


def to_dataset(data: Any, split: str = "train") -> Any:
    """Accept a datasets.Dataset, a list of row dicts, a dict of columns or a pandas DataFrame."""
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
        return datasets.Dataset.from_pandas(data, preserve_index=False)
    raise DataError(
        f"unsupported dataset type {type(data).__name__}: use datasets.Dataset, a list of dicts or a dict of lists "
        "(or orpo.data.load_preference_data for files and hub ids)"
    )


def with_source_column(dataset: Any, split: str) -> Any:
    """Give every row a location ('train row 7') unless loading already recorded its file/line."""
    if SOURCE_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(SOURCE_COLUMN, [f"{split} row {index}" for index in range(len(dataset))])


class _Normaliser:
    """Picklable batch function for datasets.map: any supported row shape -> text triple."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.revision = FORMAT_REVISION  # in the cache fingerprint: new normalisation code, new cache entry

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in (*TEXT_COLUMNS, FORMAT_COLUMN, EMPTY_COLUMN)}
        present = [name for name in TEXT_COLUMNS if name in batch]
        columns = [name for name in batch if not name.startswith("_orpo_")]
        for index, location in enumerate(batch[SOURCE_COLUMN]):
            row = {name: batch[name][index] for name in present}
            result = normalize_row(row, self.tokenizer, location, columns)
            for name in TEXT_COLUMNS:
                out[name].append(result[name])
            out[FORMAT_COLUMN].append(result["format"])
            out[EMPTY_COLUMN].append(result["empty"])
        return out


def _num_proc(num_proc: int | None, rows: int) -> int | None:
    return num_proc if num_proc and num_proc > 1 and rows >= 2 * num_proc else None


def normalise_dataset(dataset: Any, tokenizer: Any, split: str = "train", num_proc: int | None = None) -> Any:
    """Canonical columns -> prompt/chosen/rejected texts plus ``_orpo_format`` and ``_orpo_empty``."""
    dataset = with_source_column(dataset, split)
    return dataset.map(
        _Normaliser(tokenizer),
        batched=True,
        remove_columns=[name for name in TEXT_COLUMNS if name in dataset.column_names],
        num_proc=_num_proc(num_proc, len(dataset)),
        desc=f"Normalising {split} pairs",
    )


def _location(dataset: Any, index: int, split: str) -> str:
    value = dataset[int(index)].get(SOURCE_COLUMN) if SOURCE_COLUMN in dataset.column_names else None
    return value or f"{split} row {index}"


def _apply_policy(
    policy: str, rows: list[int], label: str, option: str, dataset: Any, split: str, report: DataReport
) -> bool:
    """True if the rows must be dropped."""
    if not rows:
        return False
    if policy == "error":
        raise DataError(
            f"{_location(dataset, rows[0], split)}: {label} ({len(rows)} such row(s) in the {split} data); fix the "
            f"data or set {option}='drop' or 'keep'"
        )
    if policy == "drop":
        report.dropped[label] += len(rows)
        logger.warning(
            "%s: dropping %d row(s): %s (first: %s)", split, len(rows), label, _location(dataset, rows[0], split)
        )
        return True
    logger.warning("%s: keeping %d row(s): %s (first: %s)", split, len(rows), label, _location(dataset, rows[0], split))
    return False


def describe_flags(flags: int, limits: LengthLimits) -> str:
    """What a length limit does to a row, from its tokenize flags."""
    if flags & NO_ROOM_FOR_COMPLETION:
        return f"the prompt fills max_length={limits.max_length} and leaves no room for a completion"
    parts = []
    if flags & PROMPT_TRUNCATED:
        parts.append(f"the prompt is longer than max_prompt_length={limits.max_prompt_length}")
    if flags & (CHOSEN_TRUNCATED | REJECTED_TRUNCATED):
        which = " and ".join(
            name for name, bit in (("chosen", CHOSEN_TRUNCATED), ("rejected", REJECTED_TRUNCATED)) if flags & bit
        )
        parts.append(
            f"{which} does not fit (max_length={limits.max_length}, max_completion_length={limits.max_completion_length})"
        )
    return "; ".join(parts) or "over a length limit"


def _pair_length(batch: dict[str, list[Any]]) -> dict[str, list[int]]:
    return {
        "length": [
            len(prompt) + max(len(chosen), len(rejected))
            for prompt, chosen, rejected in zip(
                batch["prompt_input_ids"], batch["chosen_input_ids"], batch["rejected_input_ids"], strict=True
            )
        ]
    }


def tokenize_with_policy(
    dataset: Any, tokenizer: Any, limits: LengthLimits, on_too_long: str, num_proc: int | None, split: str
) -> tuple[Any, TokenizeReport]:
    """``tokenize_dataset`` whose on_too_long='error' names the row's file/line."""
    tokenized, report = tokenize_dataset(
        dataset, tokenizer, limits, "drop" if on_too_long == "error" else on_too_long, num_proc, split
    )
    if on_too_long == "error" and report.dropped_rows:
        index = report.dropped_rows[0]
        row = dataset[int(index)]
        flags = PairTokenizer(tokenizer, limits).one(row["prompt"], row["chosen"], row["rejected"])["tokenize_flags"]
        raise DataError(
            f"{_location(dataset, index, split)}: {describe_flags(flags, limits)} ({len(report.dropped_rows)} such "
            f"row(s) in the {split} data); raise the limits, or set on_too_long='truncate' or 'drop'"
        )
    return tokenized, report


def prepare_preference_dataset(
    data: Any, tokenizer: Any, args: Any, split: str = "train", columns: ColumnMapping | None = None
) -> tuple[Any, DataReport]:
    """Validate, normalise and tokenize ``data`` according to ``args`` (an ORPOConfig)."""
    dataset = to_dataset(data, split)
    report = DataReport(split=split, rows_in=len(dataset))
    if all(name in dataset.column_names for name in TOKENIZED_COLUMNS):
        return dataset, report
    dataset = apply_column_mapping(dataset, columns, f"{split} data")
    check_dataset(dataset, split)
    dataset = normalise_dataset(dataset, tokenizer, split, args.dataset_num_proc)
    report.formats.update(column_values(dataset, FORMAT_COLUMN))

    issues = find_row_issues(*(column_values(dataset, name) for name in (*TEXT_COLUMNS, EMPTY_COLUMN)))
    report.identical_pairs, report.empty_completions = len(issues.identical), len(issues.empty)
    report.duplicates, report.distinct_prompts = len(issues.duplicates), issues.distinct_prompts
    dataset = dataset.remove_columns([FORMAT_COLUMN, EMPTY_COLUMN])

    drop: set[int] = set()
    for rows, policy, label, option in (
        (issues.empty, args.on_empty_completion, "empty chosen or rejected", "on_empty_completion"),
        (issues.identical, args.on_identical_pair, "chosen == rejected", "on_identical_pair"),
        (issues.duplicates, args.on_duplicate, "duplicate row", "on_duplicate"),
    ):
        fresh = [i for i in rows if i not in drop]
        if _apply_policy(policy, fresh, label, option, dataset, split, report):
            drop.update(fresh)
    if drop:
        dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
    if len(dataset) == 0:
        raise DataError(f"{split} data: every row was dropped ({report.summary()})")

    dataset, report.tokenize = tokenize_with_policy(
        dataset, tokenizer, LengthLimits.from_args(args), args.on_too_long, args.dataset_num_proc, split
    )
    if len(dataset) == 0:
        raise DataError(f"{split} data: no pair survived tokenization ({report.summary()})")
    dataset = dataset.map(_pair_length, batched=True, desc=f"Measuring {split} pairs")
    logger.info("prepared %s", report.summary())
    return dataset, report
