"""LoRA options beyond orpo's named fields, and training that starts from a LoRA adapter directory.

``--model DIR`` with an ``adapter_config.json`` is a start adapter: its base (``base_model_name_or_path``)
is loaded and the adapter is either trained on or, with ``merge_start_adapter``, merged into the base first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from orpo.config.arguments import ModelArguments
from orpo.config.usage import UsageError
from orpo.models.damaged import naming_damaged_files

ADAPTER_CONFIG = "adapter_config.json"
#: LoraConfig keys that have their own option (a field is set once)
OWN_OPTIONS = {
    "r": "--lora-r",
    "lora_alpha": "--lora-alpha",
    "lora_dropout": "--lora-dropout",
    "target_modules": "--lora-target-modules",
    "modules_to_save": "--lora-modules-to-save",
    "use_dora": "--use-dora",
    "use_rslora": "--use-rslora",
    "task_type": "(set by orpo from the model)",
}


def lora_options(model_args: ModelArguments) -> dict[str, Any]:
    """``lora_config``'s mapping, checked against ``peft.LoraConfig``'s fields: one error naming the key.

    Args:
        model_args: the model options; ``lora_config`` is read.

    Raises:
        UsageError: a key ``LoraConfig`` does not take, or one that has its own option (:data:`OWN_OPTIONS`).
    """
    from peft import LoraConfig

    given = dict(model_args.lora_config or {})
    valid = sorted(f.name for f in dataclasses.fields(LoraConfig) if f.init)
    for key in given:
        if key in OWN_OPTIONS:
            raise UsageError(f"lora_config: key {key!r} has its own option: {OWN_OPTIONS[key]}")
        if key not in valid:
            raise UsageError(f"lora_config: unknown key {key!r}; LoraConfig takes: {', '.join(valid)}")
    return given


def start_adapter_base(model_args: ModelArguments) -> str | None:
    """The base model of a ``--model`` that is a LoRA adapter directory (None for any other model).

    Args:
        model_args: the model options; ``model_name_or_path`` is read.

    Raises:
        UsageError: the adapter's config is not valid JSON or names no base model.
    """
    name = model_args.model_name_or_path
    file = Path(name).expanduser() / ADAPTER_CONFIG if name else None
    if file is None or not file.is_file():
        return None
    try:
        base = json.loads(file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except json.JSONDecodeError as err:
        raise UsageError(f"{file}: invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    if not base:
        raise UsageError(f"{file}: no base_model_name_or_path, so the adapter's base model is unknown")
    return str(base)


def check_start_adapter(model_args: ModelArguments) -> None:
    """Refuse a new adapter on an adapter that is continued (it would be stacked): before any data is read.

    Args:
        model_args: the model options (``model_name_or_path``, ``use_peft``, ``merge_start_adapter``).

    Raises:
        UsageError: ``--peft`` on a start adapter that is not merged first, or ``--merge-start-adapter`` without
            a start adapter.
    """
    if start_adapter_base(model_args) is None:
        if model_args.merge_start_adapter:
            raise UsageError("--merge-start-adapter: --model is not a LoRA adapter directory (no adapter_config.json)")
        return
    if model_args.use_peft and not model_args.merge_start_adapter:
        raise UsageError(
            "--model is a LoRA adapter, which is trained on as it is: drop --peft, or add --merge-start-adapter "
            "to merge it into its base and train a new adapter"
        )


def attach_start_adapter(model: Any, adapter_dir: str, merge: bool) -> Any:
    """The base ``model`` with the adapter: trainable, or merged into the weights (a plain model).

    Args:
        model: the adapter's base model, loaded.
        adapter_dir: the adapter's folder.
        merge: merge the adapter into the weights rather than train it.
    """
    from peft import PeftModel

    with naming_damaged_files(adapter_dir, "adapter"):
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=not merge)
    return peft_model.merge_and_unload() if merge else peft_model
