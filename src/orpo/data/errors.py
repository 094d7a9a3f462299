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
    """Bad preference data.  The message is one line naming file/line/row/column where known.

    Args:
        message: the message; its whitespace (newlines included) is collapsed to single spaces.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def where(location: str, column: str | None = None) -> str:
    """``"data.jsonl, line 3 (row 2), column 'chosen'"``.

    Args:
        location: the row's location (``"data.jsonl, line 3 (row 2)"``).
        column: the column; None: the row alone.
    """
    return f"{location}, column '{column}'" if column else location


def row_location(dataset: Any, index: int, split: str = "train") -> str:
    """Location of row ``index`` of ``dataset``: its source column if present, else '<split> row i'.

    Args:
        dataset: a ``datasets.Dataset`` (or anything with ``column_names`` and row access).
        index: the row's index.
        split: the split's name, for the fallback.
    """
    if SOURCE_COLUMN in getattr(dataset, "column_names", ()):
        value = dataset[int(index)][SOURCE_COLUMN]
        if value:
            return value
    return f"{split} row {index}"


def short(value: Any, limit: int = 60) -> str:
    """repr of a value, cut for an error message.

    Args:
        value: anything.
        limit: the most characters, ``...`` included.
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
