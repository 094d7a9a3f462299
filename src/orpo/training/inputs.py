"""The training data a run reads, from the data options (local files, hub ids, a weighted mixture), and
the logging interval that suits its size.  A local path that does not exist fails early, in one line."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orpo.config.dataset_mixture import parse_mixture
from orpo.config.usage import UsageError
from orpo.data.load import ColumnMapping, load_preference_data, stream_from_hub
from orpo.models.sources import looks_like_hub_id

if TYPE_CHECKING:
    from orpo.config.arguments import DataArguments
    from orpo.config.dataset_mixture import MixtureDataset

logger = logging.getLogger(__name__)


def check_data_source(name: str) -> None:
    """Fail early, in one line, for a local data path that does not exist.

    Args:
        name: a file, folder, glob pattern or hub dataset id.

    Raises:
        FileNotFoundError: ``name`` is neither an existing path, a glob pattern nor shaped like a hub id.
    """
    if Path(name).expanduser().exists() or any(ch in name for ch in "*?["):
        return
    if not looks_like_hub_id(name):
        raise FileNotFoundError(f"data not found: {name} (no such file or directory, and not a hub dataset id)")


def load_data(data_args: DataArguments) -> tuple[Any, Any]:
    """(train dataset, eval dataset or None) with canonical columns: one source, or a weighted mix of several.

    With ``streaming`` the training data is a ``datasets.IterableDataset`` (hub ids are streamed from the hub;
    local files are read as usual and iterated), prepared lazily as the trainer reads it.

    Args:
        data_args: the data options: ``dataset_name`` or a mixture (``dataset_mixture``, ``dataset_mixer``),
            splits, config, column names, ``max_samples`` (the first rows of the training data), ``streaming``.

    Raises:
        UsageError: no data named, or both ``dataset_name`` and ``dataset_mixer``.
        FileNotFoundError: a local path that does not exist.
    """
    from orpo.data.mix import mix

    if data_args.dataset_mixture is not None:
        from orpo.data.mix import load_mixture

        train, evaluation = load_mixture(
            parse_mixture(data_args.dataset_mixture), lambda entry: _load_mixture_entry(data_args, entry)
        )
    elif data_args.dataset_mixer:
        if data_args.dataset_name is not None:
            raise UsageError("give either dataset_name (--data-path) or dataset_mixer, not both")
        train, evaluation = mix(
            data_args.dataset_mixer, data_args.dataset_mixing, lambda name: _load_source(data_args, name)
        )
    elif data_args.dataset_name is None:
        raise UsageError("no training data: pass --data-path (a file, folder or hub dataset id) or dataset_mixer")
    else:
        train, evaluation = _load_source(data_args, data_args.dataset_name)
    if data_args.max_samples is not None:
        if data_args.streaming:
            train = train.take(data_args.max_samples)
        elif data_args.max_samples < len(train):
            train = train.select(range(data_args.max_samples))
    return train, evaluation


def _load_source(data_args: DataArguments, source: Any) -> tuple[Any, Any]:

    if isinstance(source, str):
        check_data_source(source)
    if data_args.streaming and isinstance(source, str) and not _is_local(source):
        return stream_from_hub(source, data_args.dataset_config, data_args.dataset_train_split), (
            stream_from_hub(source, data_args.dataset_config, data_args.dataset_test_split)
            if data_args.dataset_test_split
            else None
        )
    mapping = ColumnMapping.from_autotrain(
        data_args.prompt_text_column, data_args.text_column, data_args.rejected_text_column, data_args.image_column
    )
    splits = load_preference_data(
        source,
        split=data_args.dataset_train_split,
        subset=data_args.dataset_config,
        columns=mapping,
        valid_split=data_args.dataset_test_split,
    )
    train = splits["train"]
    evaluation = splits[data_args.dataset_test_split] if data_args.dataset_test_split else None
    if evaluation is None:
        extra = [name for name in splits if name != "train"]
        if extra:
            logger.info(
                "the data also has split(s) %s; pass --valid-split %s to evaluate on it", ", ".join(extra), extra[0]
            )
    if data_args.streaming:
        train = train.to_iterable_dataset()
    return train, evaluation


def _load_mixture_entry(data_args: DataArguments, entry: MixtureDataset) -> Any:
    """One ``dataset_mixture`` entry: its split and config, its columns, then orpo's column mapping."""

    check_data_source(entry.id)
    mapping = ColumnMapping.from_autotrain(
        data_args.prompt_text_column, data_args.text_column, data_args.rejected_text_column, data_args.image_column
    )
    splits = load_preference_data(
        entry.id, split=entry.split, subset=entry.config, columns=mapping, keep_columns=entry.columns
    )
    return splits["train"]


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists() or any(ch in source for ch in "*?[")


def auto_logging_steps(num_pairs: int | None, config: Any) -> int:
    """Roughly 20 points per run (at most every 25 steps), like AutoTrain's logging_steps=-1.

    Args:
        num_pairs: training pairs; None when streamed (then ``max_steps`` decides, or one step per epoch).
        config: an ``ORPOConfig`` (batch size, accumulation, ``world_size``, ``max_steps``, epochs).
    """
    world = max(int(getattr(config, "world_size", 1) or 1), 1)
    per_step = max(config.per_device_train_batch_size * config.gradient_accumulation_steps * world, 1)
    steps_per_epoch = max(math.ceil((num_pairs or 0) / per_step), 1)
    total = (
        config.max_steps
        if config.max_steps and config.max_steps > 0
        else math.ceil(steps_per_epoch * config.num_train_epochs)
    )
    return max(1, min(25, total // 20))
