"""Attention per segment for packed rows, registered through transformers' attention interface.

A padding-free or shared-prompt row (:mod:`orpo.scoring.segments`) run through a model's own sdpa or
eager attention gets a dense ``[T x T]`` mask over the whole row: attention then costs the
square of the row, not of each sequence.  The implementations registered here take the
row's :class:`~orpo.scoring.segments.Segments` as a forward kwarg and attend per call instead:

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
from typing import Any

import torch

from orpo.scoring.layouts import SEGMENTS_KEY
from orpo.scoring.segments import Call, Segments, flex_block_mask

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


def segment_forward_kwargs(segments: Segments) -> dict[str, Any]:
    """What a packed forward passes besides ``input_ids`` and ``position_ids``.

    Args:
        segments: the attention calls of the packed row.
    """
    return {"attention_mask": SEGMENT_MASK, SEGMENTS_KEY: segments}


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
    transformers' flash integration so its dtype and sliding-window handling apply.

    Args:
        query (torch.Tensor): ``[1, total_q, heads, dim]``, the calls' queries back to back.
        key (torch.Tensor): ``[1, total_k, kv_heads, dim]``, the calls' keys back to back.
        value (torch.Tensor): ``[1, total_k, kv_heads, dim]``, the values of ``key``'s positions.
        cu_q (torch.Tensor): int32 cumulative query lengths of the calls, ``[calls + 1]``.
        cu_k (torch.Tensor): int32 cumulative key lengths of the calls, ``[calls + 1]``.
        max_q: the longest call's queries, a Python int (no read-back).
        max_k: the longest call's keys, a Python int.
        **options: passed on to transformers' flash forward (dropout, softmax_scale, sliding_window...).
    """
    from orpo.internals.private import flash_attention_forward

    return flash_attention_forward(
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
    from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask

    from orpo.internals.private import flash_attention_forward

    if query.shape[-1] != value.shape[-1]:
        raise ValueError(f"{type(module).__name__}: per-segment flash attention needs equal query and value head dims")
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    is_causal = kwargs.pop("is_causal", None)
    out = flash_attention_forward(
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
        segments: Segments | None = kwargs.pop(SEGMENTS_KEY, None)
        if segments is None:
            return _base_attention(base, module)(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        if query.shape[0] != 1 or query.shape[2] != segments.total:
            raise ValueError(
                f"{SEGMENTS_KEY} describes a packed row of {segments.total} tokens, but attention got queries of "
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

    from orpo.internals.private import attention_registered

    for base, name in IMPLEMENTATIONS.items():
        if not attention_registered(name):
            AttentionInterface.register(name, _segment_attention(base))
            AttentionMaskInterface.register(name, _base_mask(base))
