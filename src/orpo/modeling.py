"""Loading models and tokenizers, applying PEFT: the only module that knows about hubs."""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

#: "causal" (orpo.data), "vision" (orpo.vision) or "seq2seq" (orpo.seq2seq).
ModelKind = Literal["causal", "vision", "seq2seq"]

_DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _resolve_dtype(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(kwargs)
    for key in ("dtype", "torch_dtype"):
        value = kwargs.pop(key, None)
        if value is not None:
            if isinstance(value, str):
                if value not in _DTYPES:
                    raise ValueError(f"model_init_kwargs.{key}={value!r}: use one of {', '.join(_DTYPES)}")
                value = _DTYPES[value]
            kwargs["dtype"] = value
    return kwargs


def _config_of(name_or_path: str, required: bool = True) -> Any:
    """The model config saved at ``name_or_path`` (None when it has none and it is not ``required``)."""
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError):
        if required:
            raise
        return None


def is_vision_processor(processing_class: Any) -> bool:
    """Whether ``processing_class`` is a multimodal processor: an image processor and a tokenizer."""
    return (
        getattr(processing_class, "image_processor", None) is not None
        and getattr(processing_class, "tokenizer", None) is not None
    )


def model_kind(
    model_or_config: Any, processing_class: Any = None, is_encoder_decoder_flag: bool | None = None
) -> ModelKind:
    """Which data path and collator a model needs: the one answer to "what kind of model is this".

    ``model_or_config``: a model (or a PEFT wrapper of one), its ``PretrainedConfig``, or None
    (``model_init``).  Encoder-decoder when ``is_encoder_decoder_flag`` says so (None: the config
    decides); vision-language when the config has a ``vision_config`` or, without a model, when
    ``processing_class`` is a vision processor.
    """
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else None
    if config is None and model_or_config is not None:
        config = getattr(model_or_config, "config", None)
    flag = is_encoder_decoder_flag
    if flag is None:
        flag = bool(getattr(config, "is_encoder_decoder", False))
    if flag:
        return "seq2seq"
    if getattr(config, "vision_config", None) is not None:
        return "vision"
    if config is None and is_vision_processor(processing_class):
        return "vision"
    return "causal"


def load_model(name_or_path: str, model_init_kwargs: dict[str, Any] | None = None) -> PreTrainedModel:
    """Load a causal LM, an encoder-decoder (seq2seq) LM or an image-text-to-text model (by its config)."""
    kwargs = _resolve_dtype(model_init_kwargs or {})
    kind = model_kind(_config_of(name_or_path))
    if kind == "seq2seq":
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
    if kind == "vision":
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def load_processor(name_or_path: str, chat_template: str | None = None) -> Any:
    """The model's processing class: an ``AutoProcessor`` (tokenizer + image processor) for a
    vision-language model, else its tokenizer (as :func:`load_tokenizer`)."""
    if _saved_kind(name_or_path) != "vision":
        return _load_tokenizer(name_or_path, chat_template)
    from transformers import AutoProcessor

    check_tokenizer_files(name_or_path)
    processor = AutoProcessor.from_pretrained(name_or_path)
    if not is_vision_processor(processor):
        raise ValueError(
            f"{name_or_path} is a vision-language model but its processor has no tokenizer or image processor"
        )
    if chat_template is not None:
        processor.chat_template = chat_template
        processor.tokenizer.chat_template = chat_template
    prepare_tokenizer(processor.tokenizer)
    return processor


def _saved_kind(name_or_path: str) -> ModelKind:
    """The kind of model saved at ``name_or_path``; "causal" where there is no model config (a tokenizer only)."""
    return model_kind(_config_of(name_or_path, required=False))


def load_tokenizer(name_or_path: str, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer; for a vision-language model the whole processor (see :func:`load_processor`)."""
    if _saved_kind(name_or_path) == "vision":
        return load_processor(name_or_path, chat_template)
    return _load_tokenizer(name_or_path, chat_template)


#: Files any of which holds a tokenizer's vocabulary (fast, SentencePiece, BPE or WordPiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "tiktoken.model",
)


def check_tokenizer_files(path: str) -> None:
    """A local model folder without tokenizer files: an ``OSError`` saying so (transformers would ask to install
    sentencepiece or tiktoken instead)."""
    folder = os.path.expanduser(path)
    if not os.path.isdir(folder) or any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES):
        return
    found = ", ".join(sorted(os.listdir(folder))[:8]) or "nothing"
    raise OSError(
        f"no tokenizer files in {path} (it has {found}): save the tokenizer there too "
        "(tokenizer.save_pretrained), or load the model and its tokenizer from where both are"
    )


def _load_tokenizer(name_or_path: str, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    check_tokenizer_files(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token if it lacks one (padding is masked, so EOS is safe)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info(
            "tokenizer has no pad token; padding with eos_token %r (masked out of every loss)", tokenizer.eos_token
        )
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def apply_peft(model: torch.nn.Module, peft_config: Any, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """Wrap ``model`` with a PEFT adapter (LoRA etc.), preparing k-bit models first."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing and isinstance(model, PreTrainedModel):
        # Frozen embeddings give checkpointed blocks inputs without grad; reentrant checkpointing
        # would then drop the adapter gradients.
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)


def absolute_base_path(model: Any) -> None:
    """Record a local base model by its absolute path in the adapter's config (hub ids stay as they are).

    PEFT stores the path the base was loaded by; a relative one only resolves from the directory training ran in.
    """
    from pathlib import Path

    for config in model.peft_config.values():
        base = config.base_model_name_or_path
        if base and not Path(base).is_absolute() and Path(base).expanduser().is_dir():
            config.base_model_name_or_path = str(Path(base).expanduser().resolve())


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)
