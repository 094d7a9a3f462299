"""Preference data with images for a vision-language model: the data pipeline with the vision row tokenizer."""

from __future__ import annotations

import logging
from typing import Any

from orpo.data.images import IMAGE_COLUMN, IMAGE_COLUMN_ALIASES, with_storable_images
from orpo.data.load import ColumnMapping
from orpo.data.policy import RowPolicies
from orpo.data.prepare import DataReport, prepare_dataset, to_dataset
from orpo.data.tokenize import TOKENIZED_COLUMNS, LengthLimits
from orpo.models.vision.placeholders import is_vision_processor
from orpo.models.vision.rows import VisionRowTokenizer

logger = logging.getLogger(__name__)


def _without_decoding(feature: Any) -> Any:
    """``feature`` with every ``datasets.Image`` set to ``decode=False`` (orpo reads the images itself,
    so a missing or broken file gives orpo's error naming the row, not a decoding error inside datasets)."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(mode=feature.mode, decode=False)
    if isinstance(feature, datasets.LargeList):
        return datasets.LargeList(_without_decoding(feature.feature))
    if isinstance(feature, datasets.List):
        return datasets.List(_without_decoding(feature.feature), length=feature.length)
    if isinstance(feature, dict):
        return {key: _without_decoding(value) for key, value in feature.items()}
    return feature


def without_image_decoding(dataset: Any) -> Any:
    """``dataset`` with its ``datasets.Image`` columns (nested ones too) cast to ``decode=False``.

    orpo reads the images itself, so a missing or broken file is orpo's error naming the row.

    Args:
        dataset: a ``datasets.Dataset``; returned as it is when it has no image feature.
    """
    for name, feature in dataset.features.items():
        undecoded = _without_decoding(feature)
        if repr(undecoded) != repr(feature):
            dataset = dataset.cast_column(name, undecoded)
    return dataset


def _image_column(names: Any, columns: ColumnMapping | None) -> str:
    """The user's name of the image column (the pipeline renames it to ``images``)."""
    if columns is not None and columns.images is not None:
        return columns.images
    return next((name for name in (IMAGE_COLUMN, *IMAGE_COLUMN_ALIASES) if name in names), IMAGE_COLUMN)


def prepare_vision_dataset(
    data: Any, processor: Any, args: Any, split: str = "train", columns: ColumnMapping | None = None
) -> tuple[Any, DataReport]:
    """Validate, normalise and tokenize preference rows with images, by ``args`` (an ORPOConfig).

    Same formats, policies, errors and report as :func:`orpo.data.prepare_preference_dataset`;
    a missing or unreadable image raises naming the row's file/line and the column.  Duplicates
    compare the images too.  Prompts are never truncated through image placeholders: such a row
    is dropped (counted) or, with ``on_too_long="error"``, raises.

    Args:
        data: preference data with an image column (``images`` or an alias, or ``columns.images``).
        processor: the model's processor (tokenizer and image processor).
        args: an ``ORPOConfig`` (length limits, row policies, ``dataset_num_proc``).
        split: the split's name, for messages and the report.
        columns: how the data's column names map to orpo's; None: the usual names.

    Returns:
        (the tokenized dataset, its :class:`~orpo.data.prepare.DataReport`).

    Raises:
        ValueError: ``processor`` is not a vision-language processor.
        DataError: a row or image that cannot be read or used, or no pair left.
    """
    if not is_vision_processor(processor):
        raise ValueError(
            f"vision-language data needs the model's processor (with an image processor), got {type(processor).__name__}"
        )
    data = with_storable_images(data, columns.images if columns is not None else None, split)
    dataset = without_image_decoding(to_dataset(data, split))
    image_column = _image_column(dataset.column_names, columns)
    if image_column not in dataset.column_names and not set(TOKENIZED_COLUMNS) <= set(dataset.column_names):
        logger.warning(
            "%s data has no '%s' column: training the vision-language model on text only", split, IMAGE_COLUMN
        )
    row_tokenizer = VisionRowTokenizer(processor, LengthLimits.from_args(args), image_column)
    return prepare_dataset(dataset, row_tokenizer, RowPolicies.from_args(args), split, columns, args.dataset_num_proc)
