"""Checks on preference data before and after normalisation.

- :func:`check_python_rows` / :func:`check_python_columns`: in-memory rows (list of dicts, dict
  of lists) before Arrow sees them, so a wrong type is named by row and column instead of
  failing inside Arrow.
- :func:`check_dataset`: a ``datasets.Dataset`` with canonical columns: not empty, text columns
  of a text or message type, no nulls (names the first null's file/line/row).
- :func:`find_row_issues`: questionable rows after normalisation (chosen == rejected, empty
  completion, empty prompt, duplicate rows) for the ``on_*`` policies and the inspect report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError, row_location, short, where
from .formats import check_text

TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def column_values(dataset: Any, name: str) -> list[Any]:
    """A whole column as a Python list, in one Arrow conversion (``dataset[name]`` in datasets >= 4
    is a lazy column whose element access formats one row at a time).

    Args:
        dataset: a ``datasets.Dataset``.
        name: the column.
    """
    return dataset.with_format("arrow")[name].to_pylist()


def check_python_rows(rows: Sequence[Any], split: str = "train") -> None:
    """Rows of a list of dicts: each a dict, text columns text or messages, one kind per column.

    A prompt that is None in every row is an implicit prompt; None in only some rows is an error.

    Args:
        rows: the rows.
        split: the split's name, for the messages.

    Raises:
        DataError: no rows, a row that is not a dict, a text column of another type or mixing text and messages,
            or a prompt missing in some rows.
    """
    if not rows:
        raise DataError(f"{split} data is empty: no preference pairs")
    kinds: dict[str, tuple[str, int]] = {}
    null_prompts: list[int] = []
    for index, row in enumerate(rows):
        location = f"{split} row {index}"
        if not isinstance(row, dict):
            raise DataError(
                f"{location}: expected a dict with prompt/chosen/rejected, got {type(row).__name__} {short(row)}"
            )
        for column in TEXT_COLUMNS:
            if column not in row:
                continue
            value = row[column]
            if column == "prompt" and value is None:
                null_prompts.append(index)  # a prompt column null everywhere means an implicit prompt
                continue
            check_text(value, where(location, column))
            kind = "text" if isinstance(value, str) else "messages"
            first_kind, first_row = kinds.setdefault(column, (kind, index))
            if first_kind != kind:
                raise DataError(
                    f"{where(location, column)}: is {_kind_name(kind)} but row {first_row} holds "
                    f"{_kind_name(first_kind)}; use one format per column"
                )
    if null_prompts and "prompt" in kinds:
        raise DataError(f"{where(f'{split} row {null_prompts[0]}', 'prompt')}: value is missing or null, expected text")


def _kind_name(kind: str) -> str:
    return "text" if kind == "text" else "a message list"


def check_python_columns(columns: dict[str, Any], split: str = "train") -> None:
    """A dict of lists: equal lengths, then the same checks as rows.

    Args:
        columns: column -> values.
        split: the split's name, for the messages.

    Raises:
        DataError: a column that is not a list, columns of different lengths, or what :func:`check_python_rows`
            refuses.
    """
    lengths = {name: len(values) for name, values in columns.items() if isinstance(values, Sequence)}
    not_lists = [
        name for name, values in columns.items() if not isinstance(values, Sequence) or isinstance(values, str)
    ]
    if not_lists:
        raise DataError(f"{split} data: column {not_lists[0]!r} is not a list of values (a dict of lists is expected)")
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"{split} data: columns have different lengths ({', '.join(f'{k}: {v}' for k, v in lengths.items())})"
        )
    n = next(iter(lengths.values()), 0)
    check_python_rows([{name: values[i] for name, values in columns.items()} for i in range(n)], split)


def _feature_kind(feature: Any) -> str:
    """'text', 'messages', 'json' (mixed, checked per row), 'null' or a description of a bad type."""
    import datasets

    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "text"
        if feature.dtype == "null":
            return "null"
        return f"{feature.dtype} values"
    json_type = getattr(datasets, "Json", None)
    if json_type is not None and isinstance(feature, json_type):
        return "json"
    inner = None
    if isinstance(feature, datasets.Sequence | getattr(datasets, "List", datasets.Sequence)):
        inner = feature.feature
    elif isinstance(feature, list) and feature:
        inner = feature[0]
    if inner is not None:
        if isinstance(inner, dict):
            return "messages"
        if isinstance(inner, datasets.Value) and inner.dtype == "null":
            return "messages"  # all lists empty; checked per row
        return f"lists of {_feature_kind(inner)}"
    if isinstance(feature, dict):
        return "objects"
    return type(feature).__name__


def check_dataset(dataset: Any, split: str = "train") -> None:
    """Schema-level checks of a dataset whose columns are already prompt/chosen/rejected.

    Args:
        dataset: a ``datasets.Dataset`` with canonical columns.
        split: the split's name, for the messages.

    Raises:
        DataError: no rows, a text column of another type, or a null value (a prompt null in every row is
            allowed).
    """
    import pyarrow.compute as pc

    if len(dataset) == 0:
        raise DataError(f"{split} data is empty: no preference pairs")
    for column in TEXT_COLUMNS:
        if column not in dataset.column_names:
            continue
        kind = _feature_kind(dataset.features[column])
        if kind == "null":
            if column == "prompt":
                continue  # null in every row: an implicit prompt (the column is dropped when mapping)
            raise DataError(
                f"{where(row_location(dataset, 0, split), column)}: value is missing or null, expected text"
            )
        if kind not in ("text", "messages", "json"):
            value = dataset[0][column]
            raise DataError(
                f"{where(row_location(dataset, 0, split), column)}: expected text or a list of messages, got {kind} "
                f"(e.g. {short(value)}); map the right column with prompt_text_column / text_column / "
                "rejected_text_column"
            )
        if kind == "json":  # mixed types across rows (e.g. text and numbers): check each value
            for index, value in enumerate(column_values(dataset, column)):
                check_text(value, where(row_location(dataset, index, split), column))
            continue
        array = dataset.with_format("arrow")[column]
        if array.null_count:
            first = pc.index(pc.is_null(array), True).as_py()
            raise DataError(
                f"{where(row_location(dataset, first, split), column)}: value is missing or null, expected text"
            )


@dataclass
class RowIssues:
    """Indices of questionable rows (after normalisation).

    Attributes:
        identical: rows whose chosen equals their rejected (surrounding whitespace aside).
        empty: rows with an empty chosen or rejected completion.
        empty_prompts: rows with an empty prompt.
        duplicates: rows equal to an earlier one (the first occurrence is not listed).
        distinct_prompts: how many different prompts there are.
        max_prompt_repeats: the most rows that share one prompt.
    """

    identical: list[int] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)
    empty_prompts: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    distinct_prompts: int = 0
    max_prompt_repeats: int = 0


def find_row_issues(
    prompts: Sequence[str],
    chosens: Sequence[str],
    rejecteds: Sequence[str],
    empty: Sequence[bool] | None = None,
    keys: Sequence[str] | None = None,
    empty_prompts: Sequence[bool] | None = None,
) -> RowIssues:
    """chosen == rejected (ignoring surrounding whitespace), an empty completion, an empty prompt,
    or a row equal to an earlier one (same prompt, chosen and rejected, and the same ``keys``
    entry: e.g. the same images).  A prompt repeating with other answers is fine.  ``empty`` and
    ``empty_prompts`` are the normaliser's verdicts on the content; without them the texts decide.

    Args:
        prompts: the rendered prompts.
        chosens: the chosen completions.
        rejecteds: the rejected completions.
        empty: per row, whether a completion is empty (the normaliser's ``_orpo_empty``).
        keys: per row, what else makes it distinct (e.g. its images); None: the texts alone.
        empty_prompts: per row, whether the prompt is empty.
    """
    issues = RowIssues()
    seen: set[tuple[str, ...]] = set()
    prompt_counts: dict[str, int] = {}
    for index, (prompt, chosen, rejected) in enumerate(zip(prompts, chosens, rejecteds, strict=True)):
        blank = bool(empty[index]) if empty is not None else (not chosen.strip() or not rejected.strip())
        if blank:
            issues.empty.append(index)
        if bool(empty_prompts[index]) if empty_prompts is not None else not prompt.strip():
            issues.empty_prompts.append(index)
        if chosen.strip() == rejected.strip():
            issues.identical.append(index)
        row = (prompt, chosen, rejected) if keys is None else (prompt, chosen, rejected, keys[index])
        if row in seen:
            issues.duplicates.append(index)
        seen.add(row)
        prompt_counts[prompt] = prompt_counts.get(prompt, 0) + 1
    issues.distinct_prompts = len(prompt_counts)
    issues.max_prompt_repeats = max(prompt_counts.values(), default=0)
    return issues


__all__ = [
    "RowIssues",
    "check_dataset",
    "check_python_columns",
    "check_python_rows",
    "column_values",
    "find_row_issues",
]
