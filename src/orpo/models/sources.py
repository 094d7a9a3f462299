"""Which model to load and how, from the model options: its source (a hub id or a saved folder, the
revision, remote code), a named chat template, quantization and a new LoRA adapter's config.

Checks that can fail early (a local path that does not exist, an unknown chat template, QLoRA
without a GPU) raise one-line errors before anything heavy is loaded; :mod:`orpo.models.loading` loads.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orpo.config.arguments import QUANTIZATIONS
from orpo.config.usage import UsageError
from orpo.models.adapters import lora_options

if TYPE_CHECKING:
    from orpo.config.arguments import ModelArguments
    from orpo.models.loading import HubSource

logger = logging.getLogger(__name__)


#: Chat templates that can be named instead of spelled out (``--chat-template chatml``).
CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}


def resolve_chat_template(value: str | None) -> str | None:
    """A template name, file path or literal -> the Jinja text; None/'tokenizer' -> None (keep the tokenizer's).

    Args:
        value: a name of :data:`CHAT_TEMPLATES`, a Jinja template, a file holding one, or None / ``"tokenizer"`` /
            ``"none"`` / ``""``.

    Raises:
        UsageError: none of these.
    """
    if value is None or value in ("tokenizer", "none", ""):
        return None
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise UsageError(
        f"chat template {value!r} is not a known name ({', '.join(['tokenizer', *CHAT_TEMPLATES])}), "
        "a Jinja template or an existing file"
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(name: str) -> bool:
    """``gpt2`` or ``org/name`` (no file suffix, no leading ./ or /).

    Args:
        name: a model or dataset name; only its shape is checked, not the hub.
    """
    return bool(_HUB_ID.match(name)) and Path(name).suffix.lower() not in _FILE_SUFFIXES


_FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".ndjson", ".txt", ".yaml", ".yml", ".arrow"}


def check_model_source(name: str) -> None:
    """Fail early, in one line, for a local model path that does not exist.

    Args:
        name: a hub id or a local folder.

    Raises:
        FileNotFoundError: a path that does not exist and is not shaped like a hub id, a file, or a folder without
            ``config.json`` or ``adapter_config.json``.
    """
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise FileNotFoundError(f"model directory {name} has no config.json (is it a saved model?)")
        if path.is_file():
            raise FileNotFoundError(f"model {name} is a file; pass the directory the model was saved to")
        return
    if not looks_like_hub_id(name):
        raise FileNotFoundError(f"model not found: {name} (no such directory, and not a hub model id)")


def model_source(model_args: ModelArguments, config: Any) -> HubSource:
    """The revision and trust_remote_code of every load of ``--model`` (config, weights, tokenizer, the resume
    check): ``--model-revision`` over ``model_init_kwargs``' revision; remote code allowed by either switch.

    Args:
        model_args: the model options (``model_revision``).
        config: an ``ORPOConfig`` (``model_init_kwargs``, ``trust_remote_code``).
    """
    from orpo.models.loading import HubSource

    kwargs = dict(config.model_init_kwargs or {})
    if model_args.model_revision is not None:
        kwargs["revision"] = model_args.model_revision
    return HubSource.split(kwargs, config.trust_remote_code)[0]


def model_init_kwargs(model_args: ModelArguments, config: Any) -> dict[str, Any]:
    """``from_pretrained`` kwargs of ``--model``: ``model_init_kwargs``, orpo's model options, :func:`model_source`.

    A quantized model is placed on this process's GPU (``LOCAL_RANK``) unless ``model_init_kwargs`` has a
    ``device_map``.

    Args:
        model_args: the model options (dtype, attention implementation, quantization, revision).
        config: an ``ORPOConfig`` (``model_init_kwargs``, ``trust_remote_code``).

    Raises:
        UsageError: quantization without a CUDA GPU or without bitsandbytes.
    """
    from orpo.models.loading import HubSource

    kwargs = HubSource.split(config.model_init_kwargs or {})[1]
    if model_args.dtype is not None:
        kwargs["dtype"] = model_args.dtype
    kwargs.update(model_source(model_args, config).kwargs())
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.quantization is not None:
        kwargs["quantization_config"] = quantization_config(model_args.quantization, kwargs.get("dtype"))
        kwargs.setdefault("device_map", {"": _local_device_index()})
    return kwargs


def _local_device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def quantization_config(kind: str, dtype: Any = None) -> Any:
    """The bitsandbytes config of a quantization: 8-bit, or 4-bit NF4 with double quantization (QLoRA).

    Args:
        kind: ``"int8"`` or ``"int4"`` (:data:`~orpo.config.arguments.QUANTIZATIONS`).
        dtype: the 4-bit compute dtype (a ``torch.dtype`` or its name); None or ``"auto"``: bf16 where the GPU
            supports it, else fp16.

    Raises:
        UsageError: an unknown kind, no CUDA GPU, or bitsandbytes not installed.
    """
    import torch

    if kind not in QUANTIZATIONS:
        raise UsageError(f"quantization {kind!r} is not one of {', '.join(QUANTIZATIONS)}")
    if not torch.cuda.is_available():
        raise UsageError(
            f"quantization={kind} (bitsandbytes) needs a CUDA GPU; train without --quantization on this machine"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UsageError(f"quantization={kind} needs bitsandbytes: pip install 'orpo[gpu]'") from None
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = (
        dtype
        if isinstance(dtype, torch.dtype)
        else getattr(torch, str(dtype), None)
        if dtype not in (None, "auto")
        else None
    )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16),
    )


def lora_config(model_args: ModelArguments, task_type: str = "CAUSAL_LM") -> Any:
    """orpo's LoRA fields, then ``lora_config``'s other ``LoraConfig`` options (checked).

    Args:
        model_args: the LoRA options (rank, alpha, dropout, target modules, modules to save, DoRA, rsLoRA, and
            the ``lora_config`` mapping); targets default to ``all-linear``.
        task_type: PEFT's task type (``"CAUSAL_LM"``, ``"SEQ_2_SEQ_LM"``).

    Raises:
        UsageError: options ``LoraConfig`` refuses, or a ``lora_config`` key it does not take (or that has its own
            option).
    """
    from peft import LoraConfig

    targets: Any = model_args.lora_target_modules or ["all-linear"]
    if len(targets) == 1:
        targets = targets[0]
    options: dict[str, Any] = {"bias": "none", **lora_options(model_args)}
    try:
        return LoraConfig(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=targets,
            modules_to_save=model_args.lora_modules_to_save,
            use_dora=model_args.use_dora,
            use_rslora=model_args.use_rslora,
            task_type=task_type,
            **options,
        )
    except (TypeError, ValueError) as err:
        raise UsageError(f"LoRA options: {err}") from None
