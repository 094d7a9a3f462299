"""What to load and how: model and data sources, chat templates, LoRA, quantization, precision.

Checks that can fail early (a local path that does not exist, an unknown chat template, QLoRA
without a GPU) raise one-line errors before anything heavy is loaded.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orpo.config.arguments import QUANTIZATIONS
from orpo.config.usage import UsageError

if TYPE_CHECKING:
    from orpo.config.arguments import DataArguments, ModelArguments
    from orpo.config.mixture import MixtureDataset
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
    """A template name, file path or literal -> the Jinja text; None/'tokenizer' -> None (keep the tokenizer's)."""
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
    """``gpt2`` or ``org/name`` (no file suffix, no leading ./ or /)."""
    return bool(_HUB_ID.match(name)) and Path(name).suffix.lower() not in _FILE_SUFFIXES


_FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".ndjson", ".txt", ".yaml", ".yml", ".arrow"}


def check_model_source(name: str) -> None:
    """Fail early, in one line, for a local model path that does not exist."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise FileNotFoundError(f"model directory {name} has no config.json (is it a saved model?)")
        if path.is_file():
            raise FileNotFoundError(f"model {name} is a file; pass the directory the model was saved to")
        return
    if not looks_like_hub_id(name):
        raise FileNotFoundError(f"model not found: {name} (no such directory, and not a hub model id)")


def check_data_source(name: str) -> None:
    """Fail early, in one line, for a local data path that does not exist."""
    if Path(name).expanduser().exists() or any(ch in name for ch in "*?["):
        return
    if not looks_like_hub_id(name):
        raise FileNotFoundError(f"data not found: {name} (no such file or directory, and not a hub dataset id)")


def model_source(model_args: ModelArguments, config: Any) -> HubSource:
    """The revision and trust_remote_code of every load of ``--model`` (config, weights, tokenizer, the resume
    check): ``--model-revision`` over ``model_init_kwargs``' revision; remote code allowed by either switch."""
    from orpo.models.loading import HubSource

    kwargs = dict(config.model_init_kwargs or {})
    if model_args.model_revision is not None:
        kwargs["revision"] = model_args.model_revision
    return HubSource.split(kwargs, config.trust_remote_code)[0]


def model_init_kwargs(model_args: ModelArguments, config: Any) -> dict[str, Any]:
    """``from_pretrained`` kwargs of ``--model``: ``model_init_kwargs``, orpo's model options, :func:`model_source`."""
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
    """orpo's LoRA fields, then ``lora_config``'s other ``LoraConfig`` options (checked)."""
    from peft import LoraConfig

    from orpo.models.adapters import lora_options

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


def load_data(data_args: DataArguments) -> tuple[Any, Any]:
    """(train dataset, eval dataset or None) with canonical columns: one source, or a weighted mix of several.

    With ``streaming`` the training data is a ``datasets.IterableDataset`` (hub ids are streamed from the hub;
    local files are read as usual and iterated), prepared lazily as the trainer reads it.
    """
    from orpo.data.mix import mix

    if data_args.dataset_mixture is not None:
        from orpo.config.mixture import parse_mixture
        from orpo.data.mixture import load_mixture

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
    from orpo.data.load import ColumnMapping, load_preference_data, stream_from_hub

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
    from orpo.data.load import ColumnMapping, load_preference_data

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
    """Roughly 20 points per run (at most every 25 steps), like AutoTrain's logging_steps=-1."""
    world = max(int(getattr(config, "world_size", 1) or 1), 1)
    per_step = max(config.per_device_train_batch_size * config.gradient_accumulation_steps * world, 1)
    steps_per_epoch = max(math.ceil((num_pairs or 0) / per_step), 1)
    total = (
        config.max_steps
        if config.max_steps and config.max_steps > 0
        else math.ceil(steps_per_epoch * config.num_train_epochs)
    )
    return max(1, min(25, total // 20))
