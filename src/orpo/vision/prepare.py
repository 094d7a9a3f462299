"""Validating, tokenizing and filtering a whole preference dataset with images."""

from __future__ import annotations

import logging
from typing import Any

from ..data.prepare import DataReport, to_dataset
from ..data.tokenize import NO_ROOM_FOR_COMPLETION, TOKENIZED_COLUMNS, LengthLimits, apply_length_policy
from ..modeling import is_vision_processor
from .images import IMAGE_COLUMN, IMAGE_COLUMN_ALIASES
from .tokenize import IMAGE_TRUNCATED, VisionTokenizeReport, _VisionRowTokenizer

logger = logging.getLogger(__package__)  # "orpo.vision", as before the split


def _column(dataset: Any, name: str) -> list[Any]:
    """A whole column at once (row-wise access in datasets >= 4 formats one row at a time)."""
    return dataset.with_format("arrow")[name].to_pylist()


def _apply_policy(policy: str, rows: list[int], label: str, split: str, report: DataReport) -> bool:
    """True if ``rows`` must be dropped (same policies as the text path)."""
    if not rows:
        return False
    if policy == "error":
        raise ValueError(
            f"{split} row {rows[0]}: {label} ({len(rows)} such rows); fix the data or set the policy to drop/keep"
        )
    if policy == "drop":
        report.dropped[label] += len(rows)
        logger.warning("%s: dropping %d rows: %s", split, len(rows), label)
        return True
    logger.warning("%s: keeping %d rows: %s", split, len(rows), label)
    return False


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


def _image_column(dataset: Any) -> str | None:
    for name in (IMAGE_COLUMN, *IMAGE_COLUMN_ALIASES):
        if name in dataset.column_names:
            return name
    return None


def prepare_vision_dataset(data: Any, processor: Any, args: Any, split: str = "train") -> tuple[Any, DataReport]:
    """Validate, normalise and tokenize preference rows with images for a vision-language model.

    Same policies and report as :func:`orpo.data.prepare_preference_dataset`; a missing or
    unreadable image raises naming the row, the column and the file.  Duplicates compare the
    images too.  Prompts are never truncated through image placeholders: such a row is dropped
    (counted) or, with ``on_too_long="error"``, raises.
    """
    if not is_vision_processor(processor):
        raise ValueError(
            f"vision-language data needs the model's processor (with an image processor), got {type(processor).__name__}"
        )
    dataset = to_dataset(data)
    report = DataReport(split=split, rows_in=len(dataset))
    if all(name in dataset.column_names for name in TOKENIZED_COLUMNS):
        return dataset, report
    if len(dataset) == 0:
        raise ValueError(f"{split} data is empty: no preference pairs to train on")
    missing = [name for name in ("chosen", "rejected") if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{split} data has no column {', '.join(repr(m) for m in missing)}; available columns: "
            f"{', '.join(sorted(dataset.column_names))}"
        )
    image_column = _image_column(dataset)
    if image_column is not None:
        feature = dataset.features[image_column]
        undecoded = _without_decoding(feature)
        if repr(undecoded) != repr(feature):
            dataset = dataset.cast_column(image_column, undecoded)
    if image_column is None:
        logger.warning(
            "%s data has no '%s' column: training the vision-language model on text only", split, IMAGE_COLUMN
        )
    limits = LengthLimits.from_args(args)
    row_tokenizer = _VisionRowTokenizer(processor, limits, split, "prompt" in dataset.column_names, image_column)
    num_proc = args.dataset_num_proc if args.dataset_num_proc and len(dataset) >= 2 * args.dataset_num_proc else None
    dataset = dataset.map(
        row_tokenizer,
        with_indices=True,
        remove_columns=[c for c in dataset.column_names if c in ("prompt", "chosen", "rejected")],
        num_proc=num_proc,
        desc=f"Tokenizing {split} pairs with images",
    )
    if image_column is not None and image_column != IMAGE_COLUMN:
        dataset = dataset.rename_column(image_column, IMAGE_COLUMN)
    report.formats.update(_column(dataset, "format"))

    chosens, rejecteds = _column(dataset, "chosen"), _column(dataset, "rejected")
    identical = [i for i, (c, r) in enumerate(zip(chosens, rejecteds, strict=True)) if c == r]
    empty = [i for i, (c, r) in enumerate(zip(chosens, rejecteds, strict=True)) if not c.strip() or not r.strip()]
    seen: set[tuple[str, ...]] = set()
    duplicates = []
    for index, key in enumerate(
        zip(_column(dataset, "prompt"), chosens, rejecteds, _column(dataset, "image_key"), strict=True)
    ):
        if key in seen:
            duplicates.append(index)
        seen.add(key)
    report.identical_pairs, report.empty_completions, report.duplicates = len(identical), len(empty), len(duplicates)
    drop: set[int] = set()
    for rows, policy, label in (
        (empty, args.on_empty_completion, "empty chosen or rejected"),
        (identical, args.on_identical_pair, "chosen == rejected"),
        (duplicates, args.on_duplicate, "duplicate row"),
    ):
        fresh = [i for i in rows if i not in drop]
        if _apply_policy(policy, fresh, label, split, report):
            drop.update(fresh)

    tokenize = VisionTokenizeReport(rows_in=len(dataset) - len(drop))
    keep = apply_length_policy(
        _column(dataset, "tokenize_flags"),
        tokenize,
        limits,
        args.on_too_long,
        split,
        skip=drop,
        fatal=(
            (IMAGE_TRUNCATED, "dropped_image_truncated"),
            (NO_ROOM_FOR_COMPLETION, "dropped_no_room_for_completion"),
        ),
        fatal_message=(
            f"the prompt (with its image tokens) does not fit max_prompt_length={limits.max_prompt_length} / "
            f"max_length={limits.max_length} without cutting an image or the whole completion; "
            "raise the limits or use on_too_long='drop'"
        ),
    )
    if len(keep) < len(dataset):
        dataset = dataset.select(keep)
    report.tokenize = tokenize
    dataset = dataset.remove_columns(["tokenize_flags", "format", "image_key"])
    if len(dataset) == 0:
        raise ValueError(f"{split} data: no pair survived preparation ({report.summary()})")
    dataset = dataset.map(
        lambda row: {
            "length": len(row["prompt_input_ids"]) + max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))
        },
        remove_columns=[],
        desc=f"Measuring {split} pairs",
    )
    logger.info("prepared %s", report.summary())
    return dataset, report
