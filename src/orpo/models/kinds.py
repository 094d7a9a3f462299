"""Model kinds: causal LM, vision-language, encoder-decoder -- and everything that differs between them.

A kind owns what the rest of orpo would otherwise branch on: which ``Auto`` class loads it, which row
tokenizer prepares its data, which collators batch it and in which layouts, how its generations are
read back, and which PEFT task its adapters have.  :func:`kind_of` is the one answer to "what kind of
model is this"; nothing outside this module compares a kind's name.  A new kind is one more instance
of :class:`ModelKind` and one line in :data:`KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig

from orpo.data.prepare import DataReport, prepare_preference_dataset
from orpo.models import encoder_decoder, vision
from orpo.models.vision.placeholders import is_vision_processor
from orpo.scoring.collate import Collator, ORPODataCollator
from orpo.scoring.layouts import Layout
from orpo.scoring.packing import ORPOPaddingFreeCollator, ORPOSharedPromptCollator

#: Data preparation of one kind: (data, processor, ORPOConfig, split) -> (tokenized pairs, report).
Prepare = Callable[[Any, Any, Any, str], tuple[Any, DataReport]]
#: The collator of one kind: (ORPOConfig, processing class, tokenizer, unwrapped model or None, layout).
MakeCollator = Callable[[Any, Any, Any, Any, Layout], Collator]


def _causal_collator(args: Any, processor: Any, tokenizer: Any, model: Any, layout: Layout) -> Collator:
    collator_class = {
        Layout.PADDED: ORPODataCollator,
        Layout.PADDING_FREE: ORPOPaddingFreeCollator,
        Layout.SHARED_PROMPT: ORPOSharedPromptCollator,
    }[layout]
    return collator_class(
        pad_token_id=args.padding_value if args.padding_value is not None else tokenizer.pad_token_id,
        label_pad_token_id=args.label_pad_token_id,
        pad_to_multiple_of=args.pad_to_multiple_of,
        nll_scope=args.nll_scope,
    )


def _vision_collator(args: Any, processor: Any, tokenizer: Any, model: Any, layout: Layout) -> Collator:
    return vision.VisionORPODataCollator.from_args(processor, args)


def _encoder_decoder_collator(args: Any, processor: Any, tokenizer: Any, model: Any, layout: Layout) -> Collator:
    return encoder_decoder.Seq2SeqORPODataCollator.from_args(model, tokenizer, args)


@dataclass(frozen=True)
class ModelKind:
    """One kind of model and what training, evaluating and generating with it needs."""

    #: The kind's name, as logs and errors spell it.
    name: str
    #: The ``transformers`` Auto class that loads it (by name: imported when a model is loaded).
    auto_class: str
    #: PEFT's ``task_type`` for a new LoRA adapter.
    peft_task: str
    #: Tokenized pairs from preference data, with this kind's row tokenizer.
    prepare: Prepare
    #: The collator of a layout (only :attr:`layouts` are asked for).
    make_collator: MakeCollator
    #: Whether preparation tokenizes with the whole processing class (images) or its text tokenizer.
    prepares_with_processor: bool = False
    #: Why only padded batches run (rows hold more than token sequences), or None where row layouts run.
    padded_only: str | None = None
    #: Why ``generate_during_eval`` cannot sample it, or None where it can.
    cannot_generate: str | None = None
    #: Whether ``generate`` returns the decoder's tokens only (encoder-decoder) rather than prompt + new.
    generates_new_tokens_only: bool = False
    #: Whether the model config's ``is_encoder_decoder`` is set (``ORPOConfig.is_encoder_decoder``).
    is_encoder_decoder: bool = False

    def __str__(self) -> str:
        return self.name

    @property
    def layouts(self) -> tuple[Layout, ...]:
        """The layouts this kind's batches can be collated in."""
        return (Layout.PADDED,) if self.padded_only else tuple(Layout)

    def collator(
        self, args: Any, processor: Any, tokenizer: Any, model: Any, layout: Layout = Layout.PADDED
    ) -> Collator:
        """The default collator of a trainer for ``layout`` (one of :attr:`layouts`).

        ``processor`` is the processing class (the image processor's owner for vision models),
        ``tokenizer`` its text tokenizer, ``model`` the unwrapped model (None with ``model_init``;
        an encoder-decoder collator reads its decoder start token from it).

        Args:
            args: the trainer's ``ORPOConfig`` (padding, label pad id, ``nll_scope``...).
            processor: the processing class.
            tokenizer: its text tokenizer.
            model: the unwrapped model, or None.
            layout: one of :attr:`layouts`.

        Raises:
            ValueError: this kind does not take ``layout`` batches.
        """
        if layout not in self.layouts:
            raise ValueError(
                f"{self.name} models take {', '.join(x.value for x in self.layouts)} batches, not {layout.value}"
            )
        return self.make_collator(args, processor, tokenizer, model, layout)

    def data_processor(self, processing_class: Any) -> Any:
        """What preparation tokenizes with: the processor itself for images, else its text tokenizer.

        Args:
            processing_class: the trainer's processing class (a tokenizer or a processor).
        """
        if self.prepares_with_processor:
            return processing_class
        return getattr(processing_class, "tokenizer", processing_class)

    def new_tokens(self, output: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """The generated tokens of ``generate``'s first output row.

        Args:
            output: what ``generate`` returned, ``[rows, tokens]``.
            prompt_length: the prompt's tokens, cut off unless the kind returns new tokens only.
        """
        return output[0] if self.generates_new_tokens_only else output[0, prompt_length:]

    def auto_model(self) -> Any:
        """The ``transformers`` Auto class itself."""
        import transformers

        return getattr(transformers, self.auto_class)


CAUSAL = ModelKind(
    name="causal",
    auto_class="AutoModelForCausalLM",
    peft_task="CAUSAL_LM",
    prepare=prepare_preference_dataset,
    make_collator=_causal_collator,
)
VISION = ModelKind(
    name="vision",
    auto_class="AutoModelForImageTextToText",
    peft_task="CAUSAL_LM",
    prepare=vision.prepare_vision_dataset,
    make_collator=_vision_collator,
    prepares_with_processor=True,
    padded_only="vision-language models take padded batches only",
    cannot_generate="vision-language models (no image inputs in generation)",
)
ENCODER_DECODER = ModelKind(
    name="seq2seq",
    auto_class="AutoModelForSeq2SeqLM",
    peft_task="SEQ_2_SEQ_LM",
    prepare=encoder_decoder.prepare_seq2seq_dataset,
    make_collator=_encoder_decoder_collator,
    padded_only="seq2seq models take padded batches only",
    generates_new_tokens_only=True,
    is_encoder_decoder=True,
)
#: Every kind, by name.
KINDS = {kind.name: kind for kind in (CAUSAL, VISION, ENCODER_DECODER)}


def kind_of(
    model_or_config: Any, processing_class: Any = None, is_encoder_decoder_flag: bool | None = None
) -> ModelKind:
    """What kind of model this is: the one place that decides.

    ``model_or_config``: a model (or a PEFT wrapper of one), its ``PretrainedConfig``, or None
    (``model_init``).  Encoder-decoder when ``is_encoder_decoder_flag`` says so (None: the config
    decides); vision-language when the config has a ``vision_config`` or, without a model, when
    ``processing_class`` is a vision processor.

    Args:
        model_or_config: a model, a PEFT wrapper of one, a ``PretrainedConfig``, or None.
        processing_class: the tokenizer or processor (decides only without a model or config).
        is_encoder_decoder_flag: ``ORPOConfig.is_encoder_decoder``; None: the config decides.
    """
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else None
    if config is None and model_or_config is not None:
        config = getattr(model_or_config, "config", None)
    flag = is_encoder_decoder_flag
    if flag is None:
        flag = bool(getattr(config, "is_encoder_decoder", False))
    if flag:
        return ENCODER_DECODER
    if getattr(config, "vision_config", None) is not None:
        return VISION
    if config is None and is_vision_processor(processing_class):
        return VISION
    return CAUSAL
