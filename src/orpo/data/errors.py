"""Data errors that say where: file, line, row and column (and the option to change, where one decides).

:class:`DataError` is the one error type of data preparation, for every kind of model.

Every row carries a location string in the ``_orpo_source`` column from the moment it is
loaded ("data/train.jsonl, line 7 (row 6)" for files, "train row 6" otherwise), so an error
found at any later stage (normalisation, policies, tokenization) names the place to fix.
"""

from __future__ import annotations

from typing import Any

#: Column holding each row's location; kept through loading, normalisation and tokenization.
SOURCE_COLUMN = "_orpo_source"


class DataError(ValueError):
    """Bad preference data.  The message is one line naming file/line/row/column where known."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def where(location: str, column: str | None = None) -> str:
    """``"data.jsonl, line 3 (row 2), column 'chosen'"``."""
    return f"{location}, column '{column}'" if column else location


def row_location(dataset: Any, index: int, split: str = "train") -> str:
    """Location of row ``index`` of ``dataset``: its source column if present, else '<split> row i'."""
    if SOURCE_COLUMN in getattr(dataset, "column_names", ()):
        value = dataset[int(index)][SOURCE_COLUMN]
        if value:
            return value
    return f"{split} row {index}"


def short(value: Any, limit: int = 60) -> str:
    """repr of a value, cut for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
