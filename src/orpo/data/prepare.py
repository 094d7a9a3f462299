"""From a user's preference dataset to tokenized pairs, with a report of everything done."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .formats import detect_format, to_text_triple
from .tokenize import TOKENIZED_COLUMNS, LengthLimits, TokenizeReport, tokenize_dataset

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class DataReport:
    """Counts of what preparation found and did, per split."""

    split: str = "train"
    rows_in: int = 0
    formats: Counter = field(default_factory=Counter)
    identical_pairs: int = 0
    empty_completions: int = 0
    duplicates: int = 0
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


def to_dataset(data: Any) -> Any:
    """Accept a datasets.Dataset, a list of row dicts or a dict of columns."""
    import datasets

    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, datasets.DatasetDict):
        raise ValueError(f"got a DatasetDict with splits {list(data)}; pass one split, e.g. dataset['train']")
    if isinstance(data, dict):
        return datasets.Dataset.from_dict(data)
    if isinstance(data, list):
        return datasets.Dataset.from_list(data)
    raise ValueError(f"unsupported dataset type {type(data).__name__}: use datasets.Dataset, a list of dicts or a dict of lists")


def _check_columns(dataset: Any, split: str) -> None:
    columns = set(dataset.column_names)
    missing = [name for name in ("chosen", "rejected") if name not in columns]
    if missing:
        raise ValueError(
            f"{split} data has no column {', '.join(repr(m) for m in missing)}; available columns: "
            f"{', '.join(sorted(columns)) or '(none)'} (map yours with prompt_text_column / text_column / "
            "rejected_text_column)"
        )


def _check_text(value: Any, split: str, index: int, column: str) -> None:
    if value is None:
        raise ValueError(f"{split} row {index}, column '{column}': value is null, expected text")
    if not isinstance(value, str | list):
        raise ValueError(f"{split} row {index}, column '{column}': expected text or messages, got {type(value).__name__} {value!r}")


class _Normaliser:
    """Picklable row function for datasets.map: any supported shape -> text triple."""

    def __init__(self, tokenizer: Any, split: str, has_prompt: bool) -> None:
        self.tokenizer = tokenizer
        self.split = split
        self.has_prompt = has_prompt

    def __call__(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        for column in TEXT_COLUMNS if self.has_prompt else TEXT_COLUMNS[1:]:
            _check_text(row.get(column), self.split, index, column)
        row = {name: row.get(name) for name in TEXT_COLUMNS}
        prompt, chosen, rejected = to_text_triple(row, self.tokenizer, f"{self.split} row {index}")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "format": detect_format(row)}


def _apply_policy(policy: str, count: int, first: int | None, label: str, split: str, report: DataReport) -> bool:
    """True if the rows must be dropped."""
    if not count:
        return False
    if policy == "error":
        raise ValueError(f"{split} row {first}: {label} ({count} such rows); fix the data or set the policy to drop/keep")
    if policy == "drop":
        report.dropped[label] += count
        logger.warning("%s: dropping %d rows: %s", split, count, label)
        return True
    logger.warning("%s: keeping %d rows: %s", split, count, label)
    return False


def prepare_preference_dataset(data: Any, tokenizer: Any, args: Any, split: str = "train") -> tuple[Any, DataReport]:
    """Validate, normalise and tokenize ``data`` according to ``args`` (an ORPOConfig)."""
    dataset = to_dataset(data)
    report = DataReport(split=split, rows_in=len(dataset))
    if all(name in dataset.column_names for name in TOKENIZED_COLUMNS):
        return dataset, report
    if len(dataset) == 0:
        raise ValueError(f"{split} data is empty: no preference pairs to train on")
    _check_columns(dataset, split)
    has_prompt = "prompt" in dataset.column_names
    num_proc = args.dataset_num_proc if args.dataset_num_proc and len(dataset) >= 2 * args.dataset_num_proc else None
    dataset = dataset.map(
        _Normaliser(tokenizer, split, has_prompt),
        with_indices=True,
        remove_columns=[c for c in dataset.column_names if c in TEXT_COLUMNS],
        num_proc=num_proc,
        desc=f"Normalising {split} pairs",
    )
    report.formats.update(dataset["format"])
    dataset = dataset.remove_columns("format")

    prompts, chosens, rejecteds = dataset["prompt"], dataset["chosen"], dataset["rejected"]
    identical = [i for i, (c, r) in enumerate(zip(chosens, rejecteds, strict=True)) if c == r]
    empty = [i for i, (c, r) in enumerate(zip(chosens, rejecteds, strict=True)) if not c.strip() or not r.strip()]
    seen: set[tuple[str, str, str]] = set()
    duplicates = []
    for index, triple in enumerate(zip(prompts, chosens, rejecteds, strict=True)):
        if triple in seen:
            duplicates.append(index)
        seen.add(triple)
    report.identical_pairs, report.empty_completions, report.duplicates = len(identical), len(empty), len(duplicates)

    drop: set[int] = set()
    for rows, policy, label in (
        (empty, args.on_empty_completion, "empty chosen or rejected"),
        (identical, args.on_identical_pair, "chosen == rejected"),
        (duplicates, args.on_duplicate, "duplicate row"),
    ):
        fresh = [i for i in rows if i not in drop]
        if _apply_policy(policy, len(fresh), fresh[0] if fresh else None, label, split, report):
            drop.update(fresh)
    if drop:
        dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
    if len(dataset) == 0:
        raise ValueError(f"{split} data: every row was dropped ({report.summary()})")

    dataset, report.tokenize = tokenize_dataset(
        dataset, tokenizer, LengthLimits.from_args(args), args.on_too_long, args.dataset_num_proc, split
    )
    if len(dataset) == 0:
        raise ValueError(f"{split} data: no pair survived tokenization ({report.summary()})")
    dataset = dataset.map(
        lambda row: {"length": len(row["prompt_input_ids"]) + max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))},
        desc=f"Measuring {split} pairs",
    )
    logger.info("prepared %s", report.summary())
    return dataset, report
