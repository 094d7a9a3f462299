"""Does a checkpoint fit this run?  Adapter or full model, the same model, the same data and settings.

Checked before any weights are loaded, so the error says what is wrong instead of what ``Trainer``
trips over (``Can't find a checkpoint index``, a parameter group that does not match, a 3 KB
``size mismatch`` list); :func:`describe_load_error` sums up what still fails at load in one line.

Every checkpoint carries :data:`FINGERPRINT_NAME`: the settings that shape training (:data:`RUN_FIELDS`)
and a fingerprint of the training data (its pair count, every pair's token length and the tokens of
up to :data:`SAMPLED_ROWS` evenly spaced pairs).  Resuming with other data or settings is allowed
(more steps, a new learning rate can be meant) but warned about, naming each difference: the resumed
run is then no longer the continuation of the one that wrote the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any

logger = logging.getLogger(__name__)

FINGERPRINT_NAME = "orpo_fingerprint.json"
#: The settings a resumed run must share with the run that wrote the checkpoint to continue it.
RUN_FIELDS = (
    "beta",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "optim",
    "max_grad_norm",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "world_size",
    "seed",
    "max_steps",
    "num_train_epochs",
    "max_length",
    "max_prompt_length",
    "max_completion_length",
    "truncation_mode",
    "nll_scope",
)
#: Pairs whose tokens go into the data fingerprint (with every pair's length).
SAMPLED_ROWS = 256
#: Model config keys that must agree for a full checkpoint to load into the model.
_SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_FULL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def checkpoint_kind(path: str) -> str | None:
    """ "adapter" (LoRA weights only), "full" (the model's weights) or None (sharded engine state: unknown).

    Args:
        path: the checkpoint folder.
    """
    names = set(os.listdir(path)) if os.path.isdir(path) else set()
    if names & set(_ADAPTER_FILES):
        return "adapter"
    if names & set(_FULL_FILES):
        return "full"
    return None


def check_kind(path: str, adapter: bool) -> None:
    """A LoRA checkpoint resumed without LoRA, or a full one with it: a ``ValueError`` saying which.

    Args:
        path: the checkpoint folder.
        adapter: whether this run trains a LoRA adapter.

    Raises:
        ValueError: the checkpoint's kind does not match the run's.
    """
    kind = checkpoint_kind(path)
    if kind == "adapter" and not adapter:
        raise ValueError(
            f"{path} holds a LoRA adapter, but this run trains the whole model: resume with the LoRA settings it "
            "was trained with (orpo train --peft ..., or peft_config= in Python), or start afresh in another "
            "output_dir"
        )
    if kind == "full" and adapter:
        raise ValueError(
            f"{path} holds a full model, but this run trains a LoRA adapter: resume without --peft (peft_config="
            "None), or start afresh in another output_dir"
        )


def check_model(path: str, model_config: Any) -> None:
    """A full checkpoint of another model (other sizes or architecture): a ``ValueError`` naming the differences.

    Args:
        path: the checkpoint folder (its ``config.json`` is compared, if it has one).
        model_config: the run's model config; None: nothing to compare.

    Raises:
        ValueError: a shape key (``hidden_size``, ``num_hidden_layers``...) differs.
    """
    saved_path = os.path.join(path, "config.json")
    if model_config is None or not os.path.isfile(saved_path):
        return
    with open(saved_path, encoding="utf-8") as handle:
        saved = json.load(handle)
    ours = model_config.to_dict()
    differ = [
        f"{key} {saved[key]} there, {ours[key]} here"
        for key in _SHAPE_KEYS
        if key in saved and key in ours and saved[key] != ours[key]
    ]
    if differ:
        raise ValueError(
            f"{path} was trained from another model ({'; '.join(differ)}): resume with the model it was trained "
            "from, or start afresh in another output_dir"
        )


_SIZE_MISMATCH = re.compile(
    r"size mismatch for ([^:\s]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


def describe_load_error(err: BaseException, path: str) -> str | None:
    """One line for an error loading ``path`` into the model or optimizer; None if ``err`` is not one.

    Args:
        err: the error raised while loading.
        path: the checkpoint being loaded.
    """
    text = str(err)
    mismatches = _SIZE_MISMATCH.findall(text)
    if mismatches:
        name, theirs, ours = mismatches[0]
        return (
            f"{path} does not fit this model: {len(mismatches)} tensor(s) have other shapes (e.g. {name}: "
            f"[{theirs}] in the checkpoint, [{ours}] here), so it was trained from another model or with other LoRA "
            "settings; resume with those, or start afresh in another output_dir"
        )
    if "Error(s) in loading state_dict" in text:
        first = next((line.strip() for line in text.splitlines()[1:] if line.strip()), "")
        return f"{path} does not fit this model ({first[:200]}); resume with the model and settings it was trained with"
    if "doesn't match the size of optimizer's group" in text:
        return (
            f"{path} holds optimizer state for other trainable parameters (another model, LoRA vs full training, or "
            "other LoRA settings): resume with the settings it was trained with, or start afresh in another output_dir"
        )
    return None


# ---- fingerprint --------------------------------------------------------------------------------
def data_fingerprint(dataset: Any) -> dict[str, Any] | None:
    """The training data in a few numbers: pair count, and a hash of every pair's length and the tokens of
    up to :data:`SAMPLED_ROWS` evenly spaced pairs.  None for data without a length (an iterable dataset).

    Args:
        dataset: the prepared train dataset.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return None
    rows = len(dataset)
    digest = hashlib.sha256(str(rows).encode())
    table = dataset.with_format("arrow")
    if "length" in dataset.column_names:
        digest.update(json.dumps(table["length"].to_pylist()).encode())
    picked = sorted({index * rows // SAMPLED_ROWS for index in range(min(rows, SAMPLED_ROWS))})
    sample = dataset.select(picked).with_format("arrow")
    for name in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"):
        if name in dataset.column_names:
            digest.update(json.dumps(sample[name].to_pylist()).encode())
    return {"pairs": rows, "sha256": digest.hexdigest()}


def run_fingerprint(args: Any, dataset: Any) -> dict[str, Any]:
    """The run's :data:`RUN_FIELDS` settings and its data fingerprint, as saved in every checkpoint.

    Args:
        args: the run's ``ORPOConfig``.
        dataset: the prepared train dataset.
    """
    settings = {name: _plain(getattr(args, name, None)) for name in RUN_FIELDS}
    return {"settings": settings, "data": data_fingerprint(dataset)}


def _plain(value: Any) -> Any:
    """A value as JSON keeps it (enums by their value)."""
    value = getattr(value, "value", value)
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def write_fingerprint(directory: str, fingerprint: dict[str, Any]) -> None:
    """Write ``fingerprint`` as :data:`FINGERPRINT_NAME` in ``directory``.

    Args:
        directory: the (staging) checkpoint folder.
        fingerprint: what :func:`run_fingerprint` returned.
    """
    with open(os.path.join(directory, FINGERPRINT_NAME), "w", encoding="utf-8") as handle:
        json.dump(fingerprint, handle, indent=1, sort_keys=True)


def fingerprint_changes(checkpoint: str, fingerprint: dict[str, Any]) -> list[str]:
    """What differs between the run that wrote ``checkpoint`` and this one (empty: nothing, or not recorded).

    Args:
        checkpoint: the checkpoint folder.
        fingerprint: this run's :func:`run_fingerprint`.
    """
    path = os.path.join(checkpoint, FINGERPRINT_NAME)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    changes = [
        f"{name} {saved['settings'][name]!r} -> {value!r}"
        for name, value in fingerprint["settings"].items()
        if name in saved.get("settings", {}) and saved["settings"][name] != value
    ]
    then, now = saved.get("data"), fingerprint.get("data")
    if then and now and then != now:
        if then["pairs"] != now["pairs"]:
            changes.append(f"the training data ({then['pairs']} pairs then, {now['pairs']} now)")
        else:
            changes.append(f"the training data (the same {now['pairs']} pairs in number, other pairs or order)")
    return changes


def warn_if_changed(checkpoint: str, fingerprint: dict[str, Any]) -> list[str]:
    """Warn about every :func:`fingerprint_changes` of resuming from ``checkpoint``; returns them.

    Args:
        checkpoint: the checkpoint folder.
        fingerprint: this run's :func:`run_fingerprint`.
    """
    changes = fingerprint_changes(checkpoint, fingerprint)
    if changes:
        logger.warning(
            "resuming from %s with changes since it was written: %s. Training continues from its weights and "
            "optimizer state, but does not continue that run exactly",
            checkpoint,
            "; ".join(changes),
        )
    return changes
