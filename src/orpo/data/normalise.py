"""Normalisation: any supported row shape -> a (prompt, chosen, rejected) text triple.

The first ``datasets.map`` of preparation.  A normaliser writes the three texts plus the row's
format (:data:`FORMAT_COLUMN`), whether a completion is empty (:data:`EMPTY_COLUMN`) or the prompt
is (:data:`EMPTY_PROMPT_COLUMN`) and, where
the text alone does not identify a row (images), a duplicate key (:data:`KEY_COLUMN`).  Those
columns are what :func:`orpo.data.validate.find_row_issues` reads; preparation removes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .errors import SOURCE_COLUMN
from .formats import FORMAT_REVISION, normalize_row
from .validate import TEXT_COLUMNS

FORMAT_COLUMN = "_orpo_format"
EMPTY_COLUMN = "_orpo_empty"
EMPTY_PROMPT_COLUMN = "_orpo_empty_prompt"
#: What besides the texts makes a row distinct (e.g. its images); absent when the texts suffice.
KEY_COLUMN = "_orpo_key"
#: Tool definitions per row, passed to the chat template as ``tools=`` (TRL's column name).
TOOLS_COLUMN = "tools"
#: True on rows whose prompt/chosen/rejected a mix (:mod:`.mix`) carries as JSON text: message lists and a
#: missing prompt cannot share an Arrow column with plain strings, so those sources' values travel encoded
#: and are decoded here, right before the one normaliser, which then sees exactly what the source held.
ENCODED_COLUMN = "_orpo_encoded"

Batch = dict[str, list[Any]]


class Normaliser:
    """Picklable batch function for ``datasets.map``: text rows (plain or chat) -> text triple.

    Args:
        tokenizer: renders message lists through its chat template.
        template_kwargs: extra keyword arguments of the chat template (``chat_template_kwargs``, e.g.
            ``enable_thinking``).
    """

    def __init__(self, tokenizer: Any, template_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})  # chat_template_kwargs, e.g. enable_thinking
        self.revision = FORMAT_REVISION  # in the cache fingerprint: new normalisation code, new cache entry

    def __call__(self, batch: Batch) -> Batch:
        out: Batch = {name: [] for name in (*TEXT_COLUMNS, FORMAT_COLUMN, EMPTY_COLUMN, EMPTY_PROMPT_COLUMN)}
        present = [name for name in (*TEXT_COLUMNS, TOOLS_COLUMN) if name in batch]
        columns = [name for name in batch if not name.startswith("_orpo_")]
        for index, location in enumerate(batch[SOURCE_COLUMN]):
            row = {name: batch[name][index] for name in present}
            result = normalize_row(row, self.tokenizer, location, columns, self.template_kwargs)
            for name in TEXT_COLUMNS:
                out[name].append(result[name])
            out[FORMAT_COLUMN].append(result["format"])
            out[EMPTY_COLUMN].append(result["empty"])
            out[EMPTY_PROMPT_COLUMN].append(result["empty_prompt"])
        return out


def decode_mixed(batch: Batch) -> Batch:
    """The batch with the text values of rows marked in :data:`ENCODED_COLUMN` decoded (as the source held them).

    Args:
        batch: column -> values; returned as it is without marked rows.
    """
    flags = batch.get(ENCODED_COLUMN)
    if not flags or not any(flags):
        return batch
    out = dict(batch)
    for name in TEXT_COLUMNS:
        if name in batch:
            out[name] = [
                json.loads(value) if flag and value is not None else value
                for value, flag in zip(batch[name], flags, strict=True)
            ]
    return out


class Decoding:
    """A normaliser that first decodes a mix's JSON-carried rows (:func:`decode_mixed`); picklable for ``map``.

    Args:
        normaliser: the batch function that gets the decoded batch.
    """

    def __init__(self, normaliser: Callable[[Batch], Batch]) -> None:
        self.normaliser = normaliser

    def __call__(self, batch: Batch) -> Batch:
        return self.normaliser(decode_mixed(batch))


def map_workers(num_proc: int | None, rows: int) -> int | None:
    """``num_proc`` for ``datasets.map``: worker processes only when each gets at least two rows.

    Args:
        num_proc: the processes asked for (``dataset_num_proc``); None or 1: none.
        rows: the dataset's rows.
    """
    return num_proc if num_proc and num_proc > 1 and rows >= 2 * num_proc else None


def with_source_column(dataset: Any, split: str) -> Any:
    """Give every row a location ('train row 7') unless loading already recorded its file/line.

    Args:
        dataset: a ``datasets.Dataset``.
        split: the split's name, in the locations.
    """
    if SOURCE_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(SOURCE_COLUMN, [f"{split} row {index}" for index in range(len(dataset))])


def normalise_dataset(
    dataset: Any, normaliser: Callable[[Batch], Batch], split: str = "train", num_proc: int | None = None
) -> Any:
    """Canonical columns -> prompt/chosen/rejected texts plus the format/empty/empty-prompt (/key) columns.

    Args:
        dataset: a ``datasets.Dataset`` with canonical columns.
        normaliser: the batch function (:class:`Normaliser`, or a model kind's own).
        split: the split's name, for locations and the progress bar.
        num_proc: worker processes for ``map`` (:func:`map_workers`).

    Raises:
        DataError: a row that cannot be normalised; names its location.
    """
    dataset = with_source_column(dataset, split)
    encoded = ENCODED_COLUMN in dataset.column_names
    return dataset.map(
        Decoding(normaliser) if encoded else normaliser,
        batched=True,
        remove_columns=[name for name in (*TEXT_COLUMNS, ENCODED_COLUMN) if name in dataset.column_names],
        num_proc=map_workers(num_proc, len(dataset)),
        desc=f"Normalising {split} pairs",
    )
