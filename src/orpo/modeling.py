"""Loading models and tokenizers, applying PEFT: the only module that knows about hubs."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

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


def _config_of(model_or_path: Any, required: bool = True) -> Any:
    config = getattr(model_or_path, "config", None)
    if config is None and isinstance(model_or_path, str):
        try:
            config = AutoConfig.from_pretrained(model_or_path)
        except (OSError, ValueError):
            if required:
                raise
            return None
    return config


def is_encoder_decoder(model_or_path: Any) -> bool:
    return bool(getattr(_config_of(model_or_path), "is_encoder_decoder", False))


def is_vision_language(model_or_path: Any) -> bool:
    """True for image-text-to-text models (their config has a ``vision_config``)."""
    return getattr(_config_of(model_or_path, required=False), "vision_config", None) is not None


def model_kind(model: Any, processing_class: Any = None, is_encoder_decoder_flag: bool | None = None) -> str:
    """``"seq2seq"``, ``"vision"`` or ``"causal"``: which data path and collator a model needs.

    Encoder-decoder when ``is_encoder_decoder_flag`` says so (None: read the model config);
    vision-language when the model config has a vision_config or, without a model, when the
    processing class is a processor with an image processor.
    """
    config = getattr(model, "config", None)
    flag = is_encoder_decoder_flag
    if flag is None:
        flag = bool(getattr(config, "is_encoder_decoder", False))
    if flag:
        return "seq2seq"
    if getattr(config, "vision_config", None) is not None:
        return "vision"
    if config is None and getattr(processing_class, "image_processor", None) is not None:
        return "vision"
    return "causal"


def load_model(name_or_path: str, model_init_kwargs: dict[str, Any] | None = None) -> PreTrainedModel:
    """Load a causal LM, an encoder-decoder (seq2seq) LM or an image-text-to-text model (by its config)."""
    kwargs = _resolve_dtype(model_init_kwargs or {})
    if is_encoder_decoder(name_or_path):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
    if is_vision_language(name_or_path):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def load_processor(name_or_path: str, chat_template: str | None = None) -> Any:
    """The model's processing class: an ``AutoProcessor`` (tokenizer + image processor) for a
    vision-language model, else its tokenizer (as :func:`load_tokenizer`)."""
    if not is_vision_language(name_or_path):
        return _load_tokenizer(name_or_path, chat_template)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path)
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"{name_or_path} is a vision-language model but its processor has no tokenizer or image processor"
        )
    if chat_template is not None:
        processor.chat_template = chat_template
        processor.tokenizer.chat_template = chat_template
    prepare_tokenizer(processor.tokenizer)
    return processor


def load_tokenizer(name_or_path: str, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer; for a vision-language model the whole processor (see :func:`load_processor`)."""
    if is_vision_language(name_or_path):
        return load_processor(name_or_path, chat_template)
    return _load_tokenizer(name_or_path, chat_template)


def _load_tokenizer(name_or_path: str, chat_template: str | None = None) -> PreTrainedTokenizerBase:
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


def apply_peft(model: PreTrainedModel, peft_config: Any, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """Wrap ``model`` with a PEFT adapter (LoRA etc.), preparing k-bit models first."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad; reentrant checkpointing
        # would then drop the adapter gradients.
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)
