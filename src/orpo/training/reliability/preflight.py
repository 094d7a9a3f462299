"""Clear errors before training: an unwritable output dir, a disk too small, a dataset smaller than a batch."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import torch

from orpo.scoring.collate import ORPODataCollator
from orpo.training.reliability.checkpoint import format_bytes, free_bytes, is_no_space
from orpo.training.reliability.diagnose import ROW_INDEX_COLUMN

logger = logging.getLogger(__name__)


def check_training_amounts(args: Any) -> None:
    """Settings under which ``train()`` would change nothing: a ``ValueError`` naming each, raised before
    any data is prepared, so such a run is never reported as a finished training.

    Args:
        args: the run's ``ORPOConfig``.

    Raises:
        ValueError: ``max_steps``, ``num_train_epochs``, ``learning_rate`` or a batch setting trains nothing.
    """
    problems = []
    if args.max_steps == 0:
        problems.append("max_steps=0 trains no step (-1 trains num_train_epochs; or give a positive number)")
    elif args.max_steps < 0 and args.num_train_epochs <= 0:
        problems.append(f"num_train_epochs={args.num_train_epochs:g} trains no step (give a positive number)")
    if args.learning_rate <= 0:
        problems.append(
            f"learning_rate={args.learning_rate:g} leaves the weights as they are (to measure a model without "
            "training it, use trainer.evaluate())"
        )
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        value = getattr(args, name)
        if value < 1:
            problems.append(f"{name}={value} gives batches without a pair (it must be at least 1)")
    if problems:
        raise ValueError(f"nothing would be trained: {'; '.join(problems)}")


def check_output_dir(output_dir: str) -> None:
    """Create ``output_dir`` and write a probe file in it; a clear ValueError if that is impossible.

    Args:
        output_dir: the run's output folder.

    Raises:
        ValueError: the folder cannot be created or written, or its disk is full.
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".orpo-write-test-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if is_no_space(err):
            free = free_bytes(output_dir)
            raise ValueError(
                f"output_dir {output_dir!r} is on a full disk ({reason}; "
                f"{format_bytes(free) if free is not None else 'unknown'} free): checkpoints and the trained model "
                "could not be saved. Free space or choose another output_dir before training."
            ) from None
        raise ValueError(
            f"output_dir {output_dir!r} is not writable ({reason}): checkpoints and the trained model could not "
            "be saved. Choose another output_dir or fix its permissions before training."
        ) from None


def checkpoint_size_estimate(model: torch.nn.Module | None, adapter_only: bool, with_optimizer: bool) -> int:
    """Bytes of one checkpoint: the weights saved (the adapter's only for PEFT) and, unless
    ``save_only_model``, two float32 Adam moments per trainable parameter.

    Args:
        model: the model trained; None: 0.
        adapter_only: only the trainable (adapter) weights are saved.
        with_optimizer: the optimizer state is saved too.
    """
    if model is None:
        return 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in (trainable if adapter_only else model.parameters()))
    return weights + (2 * 4 * sum(p.numel() for p in trainable) if with_optimizer else 0)


def warn_if_disk_small(output_dir: str, need: int) -> None:
    """Warn when the disk has less room than one checkpoint (``need`` bytes, an estimate) takes.

    Args:
        output_dir: the run's output folder.
        need: bytes of one checkpoint (:func:`checkpoint_size_estimate`); 0: no check.
    """
    free = free_bytes(output_dir)
    if need and free is not None and free < need:
        logger.warning(
            "output_dir %s has %s free, a checkpoint of this model needs about %s: saving will fail when the "
            "disk is full",
            output_dir,
            format_bytes(free),
            format_bytes(need),
        )


def check_batch_size(dataset: Any, per_step: int, drop_last: bool) -> None:
    """A train set smaller than one batch (``per_step`` rows over all processes): an error if it would be dropped.

    Args:
        dataset: the prepared train dataset; one without a length is not checked.
        per_step: pairs per step over all processes (``per_device_train_batch_size x`` processes).
        drop_last: ``dataloader_drop_last``.

    Raises:
        ValueError: the set is smaller than one batch and ``drop_last`` would drop it.
    """
    if dataset is None or not hasattr(dataset, "__len__"):  # an IterableDataset has no length
        return
    rows = len(dataset)
    if rows >= per_step:
        return
    if drop_last:
        raise ValueError(
            f"the train set has {rows} pair(s), fewer than one batch of {per_step} "
            f"(per_device_train_batch_size x processes), and dataloader_drop_last=True drops it: nothing "
            "would be trained. Lower the batch size or set dataloader_drop_last=False."
        )
    logger.warning(
        "the train set has %d pair(s), fewer than one batch of %d: every step trains on the whole set", rows, per_step
    )


def with_row_index(dataset: Any, collator: Any) -> Any:
    """The train dataset with a :data:`ROW_INDEX_COLUMN`, where the collator carries it into batches.

    Args:
        dataset: the prepared train dataset (a ``datasets.Dataset`` gets the column; others pass through).
        collator: the trainer's collator (only orpo's carry the column).
    """
    import datasets

    if (
        isinstance(collator, ORPODataCollator)
        and isinstance(dataset, datasets.Dataset)
        and ROW_INDEX_COLUMN not in dataset.column_names
    ):
        return dataset.add_column(ROW_INDEX_COLUMN, list(range(len(dataset))))
    return dataset
