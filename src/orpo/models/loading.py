"""Loading models and tokenizers, applying PEFT: the only module that knows about hubs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from orpo.config.usage import first_line
from orpo.models.checks import fit_embeddings
from orpo.models.damaged import naming_damaged_files
from orpo.models.kinds import VISION, ModelKind, kind_of
from orpo.models.vision import freeze_vision_tower
from orpo.models.vision.placeholders import is_vision_processor

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


@dataclass(frozen=True)
class HubSource:
    """Where and how to fetch a model: every config, model, tokenizer and processor load of one model uses
    the same ``revision`` and ``trust_remote_code`` (a config read without them would refuse remote code
    that the model load itself allows, or read another revision).

    Attributes:
        trust_remote_code: allow the repository's own model code (``auto_map``) to run.
        revision: the branch, tag or commit to read; None: the default branch.
    """

    trust_remote_code: bool = False
    revision: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """The ``from_pretrained`` keyword arguments: ``trust_remote_code`` and, when set, ``revision``."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        return kwargs

    @classmethod
    def split(cls, kwargs: dict[str, Any], trust_remote_code: bool = False) -> tuple[HubSource, dict[str, Any]]:
        """(the source, the other kwargs) of ``model_init_kwargs`` that may carry ``revision`` /
        ``trust_remote_code`` themselves (a True there, or ``trust_remote_code``, allows remote code).

        Args:
            kwargs: ``from_pretrained`` keyword arguments; not changed.
            trust_remote_code: allow remote code even where ``kwargs`` does not.
        """
        rest = dict(kwargs)
        trust = bool(rest.pop("trust_remote_code", False)) or trust_remote_code
        return cls(trust, rest.pop("revision", None)), rest


@contextlib.contextmanager
def _remote_code_check(name_or_path: str, source: HubSource) -> Iterator[None]:
    """transformers' refusal of remote code, as one message naming orpo's switches."""
    try:
        yield
    except ValueError as err:
        if source.trust_remote_code or "trust_remote_code" not in str(err):
            raise
        raise ValueError(
            f"{name_or_path} contains custom code (auto_map in its config); loading it runs that code. If you "
            "trust it, pass trust_remote_code=True (ORPOConfig / ModelArguments) or --trust-remote-code"
        ) from None


def _config_of(name_or_path: str, source: HubSource, required: bool = True) -> Any:
    """The model config saved at ``name_or_path`` (None when it has none and it is not ``required``)."""
    try:
        with _remote_code_check(name_or_path, source):
            return AutoConfig.from_pretrained(name_or_path, **source.kwargs())
    except OSError:
        if required:
            raise
        return None
    except ValueError as err:
        if required or "custom code" in str(err):
            raise
        return None


def saved_config(name_or_path: str, source: HubSource = HubSource()) -> Any:
    """The model config saved at ``name_or_path``, or None where there is none; remote code it would run without
    ``trust_remote_code`` is refused (in orpo's words).

    Args:
        name_or_path: a hub id or a local folder.
        source: the revision and remote-code permission to read it with.

    Raises:
        ValueError: the config needs remote code that ``source`` does not allow.
    """
    return _config_of(name_or_path, source, required=False)


def load_model(
    name_or_path: str, model_init_kwargs: dict[str, Any] | None = None, *, trust_remote_code: bool = False
) -> PreTrainedModel:
    """Load a causal LM, an encoder-decoder (seq2seq) LM or an image-text-to-text model (by its config).

    ``revision`` / ``trust_remote_code`` in ``model_init_kwargs`` apply to the config probe too.

    Args:
        name_or_path: a hub id or a local folder.
        model_init_kwargs: ``from_pretrained`` keyword arguments; ``dtype`` / ``torch_dtype`` may be a name
            (``"auto"``, ``"bfloat16"``, ``"float16"``, ``"float32"``).
        trust_remote_code: allow the repository's own model code.

    Raises:
        ValueError: an unknown dtype name, or remote code that is not allowed.
        OSError: no model config at ``name_or_path``.
    """
    source, kwargs = HubSource.split(_resolve_dtype(model_init_kwargs or {}), trust_remote_code)
    auto = kind_of(_config_of(name_or_path, source)).auto_model()
    with _remote_code_check(name_or_path, source):
        return auto.from_pretrained(name_or_path, **kwargs, **source.kwargs())


def load_processor(name_or_path: str, chat_template: str | None = None, source: HubSource = HubSource()) -> Any:
    """The model's processing class: an ``AutoProcessor`` (tokenizer + image processor) for a
    vision-language model, else its tokenizer (as :func:`load_tokenizer`).

    The tokenizer gets a pad token (:func:`prepare_tokenizer`).

    Args:
        name_or_path: a hub id or a local folder.
        chat_template: Jinja text replacing the saved chat template; None keeps it.
        source: the revision and remote-code permission to load with.

    Raises:
        OSError: a local folder without tokenizer files.
        ValueError: a vision-language processor without a tokenizer or image processor, or remote code that is
            not allowed.
    """
    if _saved_kind(name_or_path, source) is not VISION:
        return _load_tokenizer(name_or_path, chat_template, source)
    from transformers import AutoProcessor

    check_tokenizer_files(name_or_path)
    with _remote_code_check(name_or_path, source):
        processor = AutoProcessor.from_pretrained(name_or_path, **source.kwargs())
    if not is_vision_processor(processor):
        raise ValueError(
            f"{name_or_path} is a vision-language model but its processor has no tokenizer or image processor"
        )
    if chat_template is not None:
        processor.chat_template = chat_template
        processor.tokenizer.chat_template = chat_template
    prepare_tokenizer(processor.tokenizer)
    return processor


def _saved_kind(name_or_path: str, source: HubSource) -> ModelKind:
    """The kind of model saved at ``name_or_path``; "causal" where there is no model config (a tokenizer only)."""
    return kind_of(saved_config(name_or_path, source))


def load_tokenizer(
    name_or_path: str, chat_template: str | None = None, source: HubSource = HubSource()
) -> PreTrainedTokenizerBase:
    """The tokenizer; for a vision-language model the whole processor (see :func:`load_processor`).

    Args:
        name_or_path: a hub id or a local folder.
        chat_template: Jinja text replacing the saved chat template; None keeps it.
        source: the revision and remote-code permission to load with.
    """
    if _saved_kind(name_or_path, source) is VISION:
        return load_processor(name_or_path, chat_template, source)
    return _load_tokenizer(name_or_path, chat_template, source)


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
    sentencepiece or tiktoken instead).

    Args:
        path: a model name or path; anything but an existing local folder passes.

    Raises:
        OSError: a local folder with none of :data:`TOKENIZER_FILES`.
    """
    folder = os.path.expanduser(path)
    if not os.path.isdir(folder) or any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES):
        return
    found = ", ".join(sorted(os.listdir(folder))[:8]) or "nothing"
    raise OSError(
        f"no tokenizer files in {path} (it has {found}): save the tokenizer there too "
        "(tokenizer.save_pretrained), or load the model and its tokenizer from where both are"
    )


def _load_tokenizer(name_or_path: str, chat_template: str | None, source: HubSource) -> PreTrainedTokenizerBase:
    check_tokenizer_files(name_or_path)
    with _remote_code_check(name_or_path, source):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **source.kwargs())
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return prepare_tokenizer(tokenizer)


def _tokenizer_of(model: Any, source: HubSource = HubSource()) -> Any:
    """The processing class of a model object given without one, loaded from the model's ``name_or_path``
    (as TRL's trainers do)."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")
    if not name:
        raise ValueError(
            "no processing_class given, and the model object has no name_or_path to load its tokenizer from; "
            "pass processing_class (the tokenizer or processor)"
        )
    try:
        return load_tokenizer(name, source=source)
    except (OSError, ValueError) as err:  # no tokenizer files: OSError or, for some, ValueError
        if "custom code" in str(err):
            raise
        raise ValueError(
            f"no processing_class given, and none could be loaded from the model's name_or_path {name!r} "
            f"({first_line(err)}); pass processing_class (the tokenizer or processor)"
        ) from None


def load_model_and_processor(
    model: str | torch.nn.Module,
    processing_class: Any = None,
    model_init_kwargs: dict[str, Any] | None = None,
    *,
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    tokenizer_from: str | None = None,
    resize_embeddings: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """The model and its processing class: the one loader behind ``ORPOTrainer(model="id")`` and the run engine.

    A model given by name is loaded with ``model_init_kwargs``; without ``processing_class`` its tokenizer (a
    processor for a vision-language model) is loaded from ``tokenizer_from`` or the model's name, and for a model
    object from the object's ``name_or_path`` (as TRL does). Every load gets the same :class:`HubSource`
    (``revision`` / ``trust_remote_code`` of ``model_init_kwargs``, or ``trust_remote_code``). ``chat_template``
    replaces the processing class's own; the tokenizer gets a pad token. A tokenizer with ids beyond the model's
    input embeddings is refused, or with ``resize_embeddings`` the embeddings grow to it
    (:func:`orpo.models.checks.fit_embeddings`).

    Args:
        model: a hub id or local folder, or a model object (used as it is).
        processing_class: a tokenizer or processor; None: loaded as described above.
        model_init_kwargs: ``from_pretrained`` keyword arguments of a model given by name.
        trust_remote_code: allow the repository's own code.
        chat_template: Jinja text replacing the processing class's chat template; None keeps it.
        tokenizer_from: where to load the tokenizer of a model given by name; None: the model's name.
        resize_embeddings: grow the input embeddings to the tokenizer instead of refusing it.

    Returns:
        (the model, its processing class).

    Raises:
        OSError: the model or tokenizer cannot be loaded (the message says which), or a file is damaged.
        ValueError: a model object without a processing class to load, or a tokenizer without pad or EOS token.
        UsageError: a tokenizer with ids beyond the model's input embeddings (without ``resize_embeddings``).
    """
    source = HubSource.split(model_init_kwargs or {}, trust_remote_code)[0]
    if isinstance(model, str):
        if processing_class is None:
            processing_class = named_load("the tokenizer of", tokenizer_from or model, load_tokenizer, source=source)
        loaded = named_load("model", model, load_model, model_init_kwargs, trust_remote_code=trust_remote_code)
    else:
        loaded = model
        if processing_class is None:
            processing_class = _tokenizer_of(model, source)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
        if tokenizer is not processing_class:  # a processor renders with its own template
            processing_class.chat_template = chat_template
    prepare_tokenizer(tokenizer)

    fit_embeddings(loaded, tokenizer, resize=resize_embeddings, name=model if isinstance(model, str) else None)
    return loaded, processing_class


def named_load(what: str, name: str, load: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``load(name, ...)``; a missing file or repository is an ``OSError`` saying what could not be loaded, a
    damaged file one naming it (:mod:`orpo.models.damaged`; a tokenizer's files when ``what`` names one).

    Args:
        what: what is loaded, for the message (``"model"``, ``"the tokenizer of"``).
        name: the hub id or folder, passed first to ``load``.
        load: the loader.
        *args: passed to ``load`` after ``name``.
        **kwargs: passed to ``load``.
    """

    with naming_damaged_files(name, "tokenizer" if "tokenizer" in what else "model"):
        try:
            return load(name, *args, **kwargs)
        except OSError as err:
            raise OSError(f"cannot load {what} {name!r}: {first_line(err)}") from err


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token if it lacks one (padding is masked, so EOS is safe).

    Args:
        tokenizer: the tokenizer, changed in place and returned.

    Raises:
        ValueError: it has neither a pad token nor an EOS token.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
        logger.info(
            "tokenizer has no pad token; padding with eos_token %r (masked out of every loss)", tokenizer.eos_token
        )
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every ``torch.nn.Dropout`` of ``model`` to ``p=0`` (in place).

    Args:
        model: the model.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def apply_peft(model: torch.nn.Module, peft_config: Any, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """Wrap ``model`` with a PEFT adapter (LoRA etc.), preparing k-bit models first.

    Args:
        model: the base model.
        peft_config: a PEFT config (``LoraConfig``...).
        gradient_checkpointing: whether training checkpoints activations (the inputs then need gradients).
    """
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

    Args:
        model: a PEFT model; its adapter configs are changed in place.
    """
    from pathlib import Path

    for config in model.peft_config.values():
        base = config.base_model_name_or_path
        if base and not Path(base).is_absolute() and Path(base).expanduser().is_dir():
            config.base_model_name_or_path = str(Path(base).expanduser().resolve())


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (an adapter on its base).

    Args:
        model: any object.
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def prepare_model(model: torch.nn.Module, args: Any, peft_config: Any) -> torch.nn.Module:
    """``model`` as ORPOConfig ``args`` trains it: the LoRA adapter of ``peft_config`` (a model that
    has one already is refused: which adapter trains would be ambiguous), dropout off, vision tower frozen.

    Args:
        model: the model to train.
        args: an ``ORPOConfig``: ``activation_checkpointing``, ``disable_dropout``, ``freeze_vision_tower``.
        peft_config: a new adapter's PEFT config; None trains ``model`` as it is.

    Raises:
        ValueError: ``peft_config`` for a model that already has an adapter.
    """
    if peft_config is not None:
        if is_peft_model(model):
            raise ValueError("the model already has a PEFT adapter; pass peft_config=None to train it as is")
        model = apply_peft(model, peft_config, gradient_checkpointing=bool(args.activation_checkpointing))
    if is_peft_model(model):
        absolute_base_path(model)
    if args.disable_dropout:
        disable_dropout(model)
    if args.freeze_vision_tower:
        freeze_vision_tower(model)
    return model
