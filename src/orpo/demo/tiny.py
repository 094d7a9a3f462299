"""Tiny local tokenizers and random-init models, for tests, the demo and CPU benchmarks.

Nothing here touches a hub: the tokenizer is a byte-level BPE trained in milliseconds on the
given text, the models are built from a config.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from transformers import LlavaConfig, Qwen2VLConfig

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

#: ChatML with a leading BOS, like many instruct models: the template itself adds BOS, so a
#: naive tokenization with add_special_tokens=True would double it.
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(
    corpus: Iterable[str],
    vocab_size: int = 400,
    add_bos: bool = True,
    eos_token: str = "<|im_end|>",
    chat_template: str | None = CHATML_TEMPLATE,
    split_digits: bool = False,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus`` (any text is encodable).

    ``split_digits`` gives every digit its own token, so numbers are spelled digit by digit.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    bos_id = tok.token_to_id("<s>")
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token=eos_token,
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"] if eos_token != "<|im_end|>" else ["<|im_start|>"],
        **({"model_max_length": model_max_length} if model_max_length is not None else {}),
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerFast,
    arch: str = "llama",
    hidden_size: int = 48,
    num_layers: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    **config: object,
) -> PreTrainedModel:
    """A random-init causal LM ("llama", "qwen2", "gemma2", "mistral") sized for CPU tests;
    ``config`` overrides the config's values (head counts, ``sliding_window``, ``attn_implementation``...)."""
    from transformers import AutoConfig

    torch.manual_seed(seed)
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": tie_word_embeddings,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if arch == "gemma2":
        common.update(head_dim=hidden_size // 4, final_logit_softcapping=5.0, query_pre_attn_scalar=hidden_size // 4)
    attn_implementation = config.pop("attn_implementation", None)
    common.update(config)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(arch, **common),
        **({"attn_implementation": attn_implementation} if attn_implementation else {}),
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


#: Mixture-of-experts kinds :func:`tiny_moe_lm` builds: each family's own names for the expert
#: count and sizes (4 experts, 2 per token).
MOE_KINDS: dict[str, dict[str, object]] = {
    "mixtral": {"num_local_experts": 4},
    "qwen2_moe": {"num_experts": 4, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32},
    "qwen3_moe": {"num_experts": 4, "moe_intermediate_size": 32, "head_dim": 12},
    "olmoe": {"num_experts": 4},
    "granitemoe": {"num_local_experts": 4},
    "phimoe": {"num_local_experts": 4, "router_jitter_noise": 0.0, "input_jitter_noise": 0.0},
}


def tiny_moe_lm(
    tokenizer: PreTrainedTokenizerFast, kind: str = "mixtral", seed: int = 0, **config: object
) -> PreTrainedModel:
    """A random-init mixture-of-experts causal LM of :data:`MOE_KINDS` (2 layers, 4 experts, top-2) for
    CPU tests and benchmarks; ``config`` overrides (``output_router_logits``, ``router_aux_loss_coef``...)."""
    if kind not in MOE_KINDS:
        raise ValueError(f"tiny_moe_lm: kind {kind!r} is not one of {', '.join(MOE_KINDS)}")
    values: dict[str, Any] = {**MOE_KINDS[kind], "num_experts_per_tok": 2, **config}
    return tiny_causal_lm(tokenizer, arch=kind, seed=seed, **values)


# ---- vision-language and encoder-decoder models ----------------------------------------------
# Everything below builds locally from configs: no hub, no torchvision (the image processors are
# the PIL/numpy backends of transformers).

#: ChatML whose message content may also be a list of parts ({"type": "image"} / {"type": "text"}),
#: as VLM chat templates accept; ``IMAGE`` is replaced by the model family's image placeholder.
_VLM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_TEMPLATE = _VLM_TEMPLATE.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
LLAVA_TEMPLATE = _VLM_TEMPLATE.replace("IMAGE", "<image>\n")
VLM_STYLES = ("qwen2_vl", "llava")


def _qwen2_vl_image_only_processor_class() -> type:
    from transformers import Qwen2VLProcessor

    class TinyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2-VL's processor without its video processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    return TinyQwen2VLProcessor


def _pil_image_processor(model: str, name: str) -> Any:
    """The PIL (not torchvision) image processor of ``model``: ``<name>Pil`` in transformers >= 5.4, before
    that the plain ``<name>``, which was the PIL one then."""
    package = f"transformers.models.{model}"
    if importlib.util.find_spec(f"{package}.image_processing_pil_{model}") is not None:
        return getattr(importlib.import_module(f"{package}.image_processing_pil_{model}"), f"{name}Pil")
    return getattr(importlib.import_module(f"{package}.image_processing_{model}"), name)


def build_vlm_processor(corpus: Iterable[str], style: str = "qwen2_vl", vocab_size: int = 400) -> object:
    """A processor (tokenizer + PIL image processor + chat template) for a tiny VLM of ``style``.

    ``qwen2_vl``: 4-pixel patches merged 2x2, images resized to 16..32 px a side, so an image
    becomes 4-16 placeholder tokens.  ``llava``: a CLIP-style processor cropping to 16x16 px,
    16 placeholder tokens per image.
    """
    if style not in VLM_STYLES:
        raise ValueError(f"style must be one of {VLM_STYLES}, got {style!r}")
    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size, chat_template=None)
    if style == "qwen2_vl":
        qwen2_vl_images = _pil_image_processor("qwen2_vl", "Qwen2VLImageProcessor")
        tokenizer.add_special_tokens(
            {"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]},
            replace_extra_special_tokens=False,
        )
        qwen_processor = qwen2_vl_images(
            patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=32 * 32
        )
        return _qwen2_vl_image_only_processor_class()(qwen_processor, tokenizer, chat_template=QWEN2_VL_TEMPLATE)
    from transformers import LlavaProcessor

    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    clip = _pil_image_processor("clip", "CLIPImageProcessor")(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )
    return LlavaProcessor(
        clip,
        tokenizer,
        patch_size=4,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_TEMPLATE,
        num_additional_image_tokens=1,
    )


def tiny_vlm(processor: object, style: str = "qwen2_vl", hidden_size: int = 32, seed: int = 0) -> PreTrainedModel:
    """A random-init image-text-to-text model matching ``build_vlm_processor(style=...)``."""
    tokenizer = processor.tokenizer  # type: ignore[attr-defined]
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    torch.manual_seed(seed)
    model: PreTrainedModel
    if style == "qwen2_vl":
        from transformers import Qwen2VLForConditionalGeneration

        model = Qwen2VLForConditionalGeneration(_qwen2_vl_config(text, hidden_size, tokenizer.convert_tokens_to_ids))
    elif style == "llava":
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration(
            _llava_config(text, hidden_size, tokenizer.convert_tokens_to_ids("<image>"))
        )
    else:
        raise ValueError(f"style must be one of {VLM_STYLES}, got {style!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _qwen2_vl_config(text: dict[str, Any], hidden_size: int, ids: Callable[[str], int]) -> Qwen2VLConfig:
    """Qwen2-VL's config: its multimodal rope, a 2-block vision tower and the processor's special tokens."""
    from transformers import Qwen2VLConfig

    text = {**text, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}}
    return Qwen2VLConfig(
        text_config=text,
        vision_config={
            "depth": 2,
            "embed_dim": hidden_size,
            "hidden_size": hidden_size,
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _llava_config(text: dict[str, Any], hidden_size: int, image_token_id: int) -> LlavaConfig:
    """LLaVA's config: a Llama text model and a 2-layer CLIP vision tower for 16x16 images."""
    from transformers import LlavaConfig

    # LlavaConfig's own name is image_token_index; image_token_id reaches it through **kwargs.
    image_token: dict[str, Any] = {"image_token_id": image_token_id}
    return LlavaConfig(
        text_config={"model_type": "llama", **text},
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 16,
            "patch_size": 4,
            "projection_dim": hidden_size,
        },
        **image_token,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )


def make_image(size: tuple[int, int] = (20, 24), color: tuple[int, int, int] = (255, 0, 0), path: str | None = None):
    """A small solid-colour RGB PIL image with a diagonal stripe; saved to ``path`` (PNG) when given."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).line((0, 0, size[0], size[1]), fill=(255 - color[0], 255 - color[1], 255 - color[2]))
    if path is not None:
        image.save(path, format="PNG")
    return image


SEQ2SEQ_STYLES = ("t5", "bart")


def build_seq2seq_tokenizer(corpus: Iterable[str], style: str = "t5", vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the special-token behaviour of T5 or BART.

    ``t5``: ``text </s>``, no BOS (the decoder starts from ``<pad>``).  ``bart``: ``<s> text </s>``.
    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2.  No chat template.
    """
    from tokenizers import processors

    if style not in SEQ2SEQ_STYLES:
        raise ValueError(f"style must be one of {SEQ2SEQ_STYLES}, got {style!r}")
    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size, add_bos=False, eos_token="</s>", chat_template=None)
    backend = tokenizer.backend_tokenizer
    eos, bos = ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>"))
    if style == "t5":
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos]
        )
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[bos, eos]
        )
    return tokenizer


def tiny_seq2seq_lm(
    tokenizer: PreTrainedTokenizerFast, arch: str = "t5", d_model: int = 32, seed: int = 0
) -> PreTrainedModel:
    """A random-init T5 or BART (2 encoder + 2 decoder layers) for ``build_seq2seq_tokenizer``."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig, T5Config

    torch.manual_seed(seed)
    config: PretrainedConfig
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if arch == "t5":
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=d_model // 4,
            d_ff=d_model * 2,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            # Generic PretrainedConfig keys (T5Config's signature does not list them).  bos is unused by T5;
            # matching the tokenizer means nothing gets "aligned" at load time.
            **{"decoder_start_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id},
            **special,
        )
    elif arch == "bart":
        config = BartConfig(
            vocab_size=len(tokenizer),
            d_model=d_model,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=d_model * 2,
            decoder_ffn_dim=d_model * 2,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            **special,
        )
    else:
        raise ValueError(f"arch must be one of {SEQ2SEQ_STYLES}, got {arch!r}")
    model = AutoModelForSeq2SeqLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.decoder_start_token_id = config.decoder_start_token_id
    if arch == "bart":
        model.generation_config.forced_bos_token_id = tokenizer.bos_token_id
    return model
