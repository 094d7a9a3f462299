"""Clear errors before training: an unwritable output dir, a dataset smaller than one batch."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from typing import Any

logger = logging.getLogger(__package__)  # "orpo.reliability", as before the split


class PreflightMixin:
    """Checks run at the start of ``train()``, before any step."""

    def _check_output_dir(self) -> None:
        """Fail before any training if checkpoints could not be written."""
        out = self.args.output_dir
        check_output_dir(out)
        need = self._checkpoint_size_estimate()
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(out).free
            if need and free < need:
                logger.warning(
                    "output_dir %s has %.2f GB free, a checkpoint of this model needs about %.2f GB: saving will "
                    "fail when the disk is full",
                    out,
                    free / 1e9,
                    need / 1e9,
                )

    def _checkpoint_size_estimate(self) -> int:
        model = getattr(self, "model", None)
        if model is None:
            return 0
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        weights = trainable if hasattr(model, "peft_config") else total
        optimizer = (
            0 if self.args.save_only_model else 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        )
        return weights + optimizer

    def _check_batch_size(self) -> None:
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__"):
            return
        rows = len(dataset)
        per_step = self.args.per_device_train_batch_size * max(self.args.world_size, 1)
        if rows >= per_step:
            return
        if self.args.dataloader_drop_last:
            raise ValueError(
                f"the train set has {rows} pair(s), fewer than one batch of {per_step} "
                f"(per_device_train_batch_size x processes), and dataloader_drop_last=True drops it: nothing "
                "would be trained. Lower the batch size or set dataloader_drop_last=False."
            )
        logger.warning(
            "the train set has %d pair(s), fewer than one batch of %d: every step trains on the whole set",
            rows,
            per_step,
        )


def check_output_dir(output_dir: str) -> None:
    """Create ``output_dir`` and write a probe file in it; a clear ValueError if that is impossible."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".orpo-write-test-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"output_dir {output_dir!r} is not writable ({reason}): checkpoints and the trained model could not "
            "be saved. Choose another output_dir or fix its permissions before training."
        ) from None


def _is_hf_dataset(dataset: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(dataset, datasets.Dataset)


def _carries_row_index(collator: Any) -> bool:
    from ..data import ORPODataCollator

    return isinstance(collator, ORPODataCollator)
