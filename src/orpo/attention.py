"""Attention per segment for packed rows, registered through transformers' attention interface.

A padding-free or shared-prompt row (:mod:`orpo.segments`) run through a model's own sdpa or
eager attention gets a dense ``[T x T]`` mask over the whole row: attention then costs the
square of the row, not of each sequence.  The implementations registered here take the
row's :class:`~orpo.segments.Segments` as a forward kwarg and attend per call instead:

* ``orpo_sdpa`` / ``orpo_eager``: one sdpa (or eager) call per sequence, any device;
* ``orpo_flex``: one flex call with a BlockMask built from the segment bounds (cached for all
  layers), GQA kept (no ``repeat_kv`` copies, whatever the head counts);
* ``orpo_fa2`` / ``orpo_fa3``: flash varlen with the cumulative lengths and maximum lengths the
  collator computed, as ints (transformers does not re-derive them per layer); a shared-prompt
  row takes two varlen calls (prompt + chosen; rejected against prompt + rejected).

Each name wraps its base: a forward without segments (a padded batch, generation) runs the
base attention and the base mask builder, unchanged.  A forward with segments passes
:data:`SEGMENT_MASK` as ``attention_mask``: a 4-D tensor, which transformers' mask builders
hand over as is, so no mask is built and nothing is read back from the device; any attention
function other than these fails on its shape instead of attending across sequences.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .layouts import Layout
from .segments import Call, Segments, flex_block_mask

SEGMENTS_KWARG = "orpo_segments"
#: base attn_implementation -> the per-segment implementation wrapping it
IMPLEMENTATIONS = {
    "sdpa": "orpo_sdpa",
    "eager": "orpo_eager",
    "flex_attention": "orpo_flex",
    "flash_attention_2": "orpo_fa2",
    "flash_attention_3": "orpo_fa3",
}
BASES = {name: base for base, name in IMPLEMENTATIONS.items()}
SEGMENT_MASK = torch.zeros((1, 1, 0, 0), dtype=torch.bool)
#: The layouts that run per segment, in the order ``best_layout`` tries them: a shared prompt runs
#: each prompt once, packed rows spend nothing on padding.
AUTO_ORDER = (Layout.SHARED_PROMPT, Layout.PACKED)


def segment_forward_kwargs(segments: Segments) -> dict[str, Any]:
    """What a packed forward passes besides ``input_ids`` and ``position_ids``."""
    return {"attention_mask": SEGMENT_MASK, SEGMENTS_KWARG: segments}


# ---- per-call kernels ----------------------------------------------------------------------


def _keys(x: torch.Tensor, call: Call) -> torch.Tensor:
    own = x[:, :, call.start : call.stop]
    return torch.cat([x[:, :, call.prefix_start : call.prefix_stop], own], dim=2) if call.prefix else own


def _visible(n_q: int, n_k: int, window: int | None, device: torch.device) -> torch.Tensor:
    """``[n_q, n_k]`` bool, bottom-right causal (query i sees keys up to i + n_k - n_q), windowed."""
    last = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)
    keys = torch.arange(n_k, device=device)[None]
    visible = keys <= last
    return visible & (keys > last - window) if window is not None else visible


def _needs_mask(call: Call, window: int | None) -> bool:
    return bool(call.prefix) or (window is not None and call.length > window)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    batch, heads, length, dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


def _sdpa_call(q, k, v, call: Call, dropout: float, scaling: float | None, window: int | None) -> torch.Tensor:
    query, key, value = q[:, :, call.start : call.stop], _keys(k, call), _keys(v, call)
    groups = q.shape[1] // k.shape[1]
    if not _needs_mask(call, window):
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=groups > 1
        )
    mask = _visible(query.shape[2], key.shape[2], window, q.device)
    if q.device.type == "cuda":  # masked GQA would fall back to the math kernel there
        key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
        groups = 1
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=groups > 1
    )


def _sdpa_segments(module, q, k, v, segments: Segments, dropout, scaling, window, softcap) -> torch.Tensor:
    if softcap is not None:
        raise ValueError("sdpa attention does not support softcap: use attn_implementation 'eager' or 'flex_attention'")
    return torch.cat([_sdpa_call(q, k, v, call, dropout, scaling, window) for call in segments.calls], dim=2)


def _eager_call(module, q, k, v, call: Call, dropout, scaling, window, softcap) -> torch.Tensor:
    groups = q.shape[1] // k.shape[1]
    query = q[:, :, call.start : call.stop]
    key, value = _repeat_kv(_keys(k, call), groups), _repeat_kv(_keys(v, call), groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if key.shape[2] > 1:  # one query seeing one key needs no mask
        visible = _visible(query.shape[2], key.shape[2], window, q.device)
        weights = weights.masked_fill(~visible, torch.finfo(weights.dtype).min)
    # float32 softmax as transformers' eager attention (float64 stays float64)
    probs = torch.softmax(weights, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value)


def _eager_segments(module, q, k, v, segments: Segments, dropout, scaling, window, softcap) -> torch.Tensor:
    scaling = scaling if scaling is not None else module.head_dim**-0.5
    calls = segments.calls
    return torch.cat([_eager_call(module, q, k, v, c, dropout, scaling, window, softcap) for c in calls], dim=2)


def _flex_function(device: torch.device) -> Callable[..., torch.Tensor]:
    """Compiled flex attention (shared with transformers) on accelerators; eager on CPU, where
    flex has no backward and the unfused forward serves checks only."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type == "cpu":
        return flex_attention
    from transformers.integrations.flex_attention import compile_friendly_flex_attention

    return compile_friendly_flex_attention  # type: ignore[return-value]  # a tensor: no aux output asked for


def _flex_segments(module, q, k, v, segments: Segments, dropout, scaling, window, softcap) -> torch.Tensor:
    if dropout > 0:
        raise ValueError("flex attention does not support attention dropout; set the model's attention_dropout to 0")
    block_mask = segments.cached(("flex", window), lambda: flex_block_mask(segments, window))

    def capped(score: Any, _b: Any, _h: Any, _q: Any, _k: Any) -> Any:
        return torch.tanh(score / softcap) * softcap

    options: dict[str, Any] = {"training": module.training} if q.device.type != "cpu" else {}
    return _flex_function(q.device)(
        q,
        k,
        v,
        score_mod=capped if softcap is not None else None,
        block_mask=block_mask,
        enable_gqa=q.shape[1] != k.shape[1],
        scale=scaling,
        **options,
    )


def varlen_attention(query, key, value, cu_q, cu_k, max_q: int, max_k: int, **options: Any) -> torch.Tensor:
    """Flash varlen attention over ``[1, total, heads, dim]`` inputs (bottom-right causal), through
    transformers' flash integration so its dtype and sliding-window handling apply."""
    from transformers.modeling_flash_attention_utils import _flash_attention_forward

    return _flash_attention_forward(
        query,
        key,
        value,
        None,
        query.shape[1],
        is_causal=True,
        cu_seq_lens_q=cu_q,
        cu_seq_lens_k=cu_k,
        max_length_q=max_q,
        max_length_k=max_k,
        **options,
    )


def _flash_segments(module, q, k, v, segments: Segments, dropout, scaling, window, softcap, base) -> torch.Tensor:
    from transformers.integrations.flash_attention import get_target_dtype

    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [1, T, heads, dim], as flash takes them
    options = {
        "dropout": dropout,
        "softmax_scale": scaling,
        "sliding_window": window,
        "softcap": softcap,
        "target_dtype": get_target_dtype(q, module),
        "attn_implementation": base,
    }
    t = segments.tensors
    own_max, pre_q_max, pre_k_max = (
        segments.max_length(p, kk) for p, kk in ((False, False), (True, False), (True, True))
    )
    if segments.tiles_row:  # padding-free: the row as it is
        out = varlen_attention(q, k, v, t["cu_self"], t["cu_self"], own_max, own_max, **options)
        return out.transpose(1, 2)
    index, q_index, k_index = t["self_index"], t["prefix_q_index"], t["prefix_k_index"]
    out = q.new_zeros((*q.shape[:-1], v.shape[-1]))
    own = varlen_attention(
        q[:, index], k[:, index], v[:, index], t["cu_self"], t["cu_self"], own_max, own_max, **options
    )
    out = out.index_copy(1, index, own.to(out.dtype))
    if segments.prefix_calls:
        cu_q, cu_k = t["cu_prefix_q"], t["cu_prefix_k"]
        rejected = varlen_attention(
            q[:, q_index], k[:, k_index], v[:, k_index], cu_q, cu_k, pre_q_max, pre_k_max, **options
        )
        out = out.index_copy(1, q_index, rejected.to(out.dtype))
    return out.transpose(1, 2)


_KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "sdpa": _sdpa_segments,
    "eager": _eager_segments,
    "flex_attention": _flex_segments,
}


# ---- registration ---------------------------------------------------------------------------


def _flash_padded(base, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' flash attention for a forward without segments, under the base name: its own
    function reads the implementation to load from the module's config, which now names ours."""
    from transformers.integrations.flash_attention import get_target_dtype
    from transformers.modeling_flash_attention_utils import _flash_attention_forward, flash_attn_supports_top_left_mask

    if query.shape[-1] != value.shape[-1]:
        raise ValueError(f"{type(module).__name__}: per-segment flash attention needs equal query and value head dims")
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    is_causal = kwargs.pop("is_causal", None)
    out = _flash_attention_forward(
        q,
        k,
        v,
        attention_mask,
        query_length=q.shape[1],
        is_causal=is_causal if is_causal is not None else module.is_causal,
        dropout=dropout,
        softmax_scale=scaling,
        use_top_left_mask=flash_attn_supports_top_left_mask(),
        target_dtype=get_target_dtype(q, module),
        attn_implementation=base,
        layer_idx=getattr(module, "layer_idx", None),
        **kwargs,
    )
    return out, None


def _base_attention(base: str, module: torch.nn.Module) -> Callable[..., Any]:
    from transformers import AttentionInterface

    if base.startswith("flash_attention"):
        return functools.partial(_flash_padded, base)
    if base != "eager":
        return AttentionInterface()[base]
    # a model's eager attention is its own module-level function (softcap, sinks...); llama's is the common one
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", eager_attention_forward)


def _segment_attention(base: str) -> Callable[..., tuple[torch.Tensor, None]]:
    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        segments: Segments | None = kwargs.pop(SEGMENTS_KWARG, None)
        if segments is None:
            return _base_attention(base, module)(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        if query.shape[0] != 1 or query.shape[2] != segments.total:
            raise ValueError(
                f"{SEGMENTS_KWARG} describes a packed row of {segments.total} tokens, but attention got queries of "
                f"shape {tuple(query.shape)} (batch, heads, tokens, dim)"
            )
        if kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
            raise ValueError(f"{type(module).__name__}: attention sinks and position biases have no per-segment path")
        window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
        if base.startswith("flash_attention"):
            out = _flash_segments(module, query, key, value, segments, dropout, scaling, window, softcap, base)
        else:
            out = _KERNELS[base](module, query, key, value, segments, dropout, scaling, window, softcap)
        return out.transpose(1, 2).contiguous(), None

    attention.__name__ = f"{IMPLEMENTATIONS[base]}_attention"
    return attention


def _base_mask(base: str) -> Callable[..., Any]:
    def mask(*args: Any, **kwargs: Any) -> Any:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        return ALL_MASK_ATTENTION_FUNCTIONS[base](*args, **kwargs)

    return mask


def register() -> None:
    """Register the per-segment implementations (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for base, name in IMPLEMENTATIONS.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _segment_attention(base))
            AttentionMaskInterface.register(name, _base_mask(base))


# ---- choosing ------------------------------------------------------------------------------


class AttentionRoute(NamedTuple):
    """The implementation that runs a layout per segment on a model, or None and why not."""

    implementation: str | None
    reason: str = ""


def _pretrained(model: torch.nn.Module) -> Any:
    """The transformers model under DDP / compile / PEFT wrappers."""
    from transformers import PreTrainedModel

    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):  # torch.compile's
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP's, accelerate's
            model = model.module  # type: ignore[assignment]
        else:
            break
    if not isinstance(model, PreTrainedModel) and callable(getattr(model, "get_base_model", None)):
        model = model.get_base_model()  # type: ignore[operator]
    return model


def base_implementation(model: torch.nn.Module) -> str | None:
    """The model's attn_implementation, seen through ours (``orpo_sdpa`` -> ``sdpa``)."""
    name = getattr(getattr(_pretrained(model), "config", None), "_attn_implementation", None)
    return BASES.get(name, name) if name is not None else None


def _flash_available(base: str) -> bool:
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return is_flash_attn_3_available() if base == "flash_attention_3" else is_flash_attn_2_available()


def segment_route(model: torch.nn.Module, layout: Layout) -> AttentionRoute:
    """Which per-segment implementation runs ``layout`` (packed or shared prompt) on ``model``."""
    from transformers import PreTrainedModel

    if layout not in AUTO_ORDER:
        raise ValueError(f"layout must be Layout.PACKED or Layout.SHARED_PROMPT, got {layout!r}")
    if not isinstance(_pretrained(model), PreTrainedModel):
        return AttentionRoute(None, f"{type(model).__name__} is not a transformers model")
    base = base_implementation(model)
    if base not in IMPLEMENTATIONS:
        return AttentionRoute(None, f"attn_implementation {base!r} has no per-segment path")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if base == "flex_attention" and device.type == "cpu":
        return AttentionRoute(None, "flex attention has no backward on CPU")
    if base.startswith("flash_attention"):
        if not _flash_available(base):
            return AttentionRoute(None, f"{base} is not installed")
        from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask

        if layout is Layout.SHARED_PROMPT and flash_attn_supports_top_left_mask():
            return AttentionRoute(
                None, "flash-attn < 2.1 aligns causal masks top-left; shared_prompt needs bottom-right"
            )
    return AttentionRoute(IMPLEMENTATIONS[base])


def use_segment_attention(model: torch.nn.Module, implementation: str) -> str:
    """Switch ``model`` to one of :data:`IMPLEMENTATIONS`' names; returns the previous name (to restore).

    Padded forwards still run the base attention, so the switch can last the whole training
    run (gradient checkpointing recomputes layers outside any per-call scope).
    """
    if implementation not in BASES:
        raise ValueError(f"not a per-segment implementation: {implementation!r}; one of {sorted(BASES)}")
    register()
    pretrained = _pretrained(model)
    previous = pretrained.config._attn_implementation
    pretrained.set_attn_implementation(implementation)
    if pretrained.config._attn_implementation != implementation:
        raise ValueError(f"{type(pretrained).__name__} does not dispatch attention through AttentionInterface")
    return previous


def best_layout(model: torch.nn.Module, requested: Layout | None = None) -> tuple[Layout, AttentionRoute]:
    """The batch layout to train ``model`` with, and the attention route that runs it.

    ``requested`` None ("auto") takes the first of :data:`AUTO_ORDER` the model's attention can
    run per segment, else padded; a requested layout runs padded only if it cannot run here.  The
    route's reason says why, for the one log line the caller writes.
    """
    if requested is Layout.PADDED:
        return Layout.PADDED, AttentionRoute(None, "requested")
    reasons = []
    for layout in AUTO_ORDER if requested is None else (requested,):
        route = segment_route(model, layout)
        if route.implementation is not None:
            return layout, route
        reasons.append(f"{layout.value}: {route.reason}")
    return Layout.PADDED, AttentionRoute(None, "; ".join(reasons))
