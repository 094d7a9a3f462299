"""Padding-free (packed) and shared-prompt batch layouts, scored and laid out like padded batches.

Both layouts are verified against the padded one on their first batch (see
:class:`orpo.forward.TokenScorer`) and run padded, with a warning, for models that break them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .fused import linear_selective_log_softmax
from .loss import selective_log_softmax
from .scoring import (
    TokenScores,
    _chunked_mean,
    _head_transform,
    _HeadCapture,
    _scatter,
    shifted_targets,
    unwrap,
)

# Kept under the name these checks always logged as, so log filters and handlers still match.
logger = logging.getLogger("orpo.forward")

# ---- padding-free (packed) batches -------------------------------------------------------
# A packed batch (see orpo.data.packing) holds all sequences in one row with position ids
# restarting per sequence; the functions below score it and lay the result out like the
# padded batch, so the loss and the metrics do not know which layout produced them.


def is_packed(batch: dict[str, Any]) -> bool:
    return "sequence_index" in batch


def packed_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The packed row as a one-row batch: model inputs and the packed row's own labels."""
    view = {key: batch[key] for key in ("input_ids", "position_ids")}
    view["labels"] = batch["packed_labels"]
    if "packed_nll_labels" in batch:
        view["nll_labels"] = batch["packed_nll_labels"]
    return view


def rows_from_packed(scores: TokenScores, batch: dict[str, Any], ignore_index: int) -> TokenScores:
    """Move token scores of the packed row ``[1, T-1]`` to the padded layout ``[2B, L-1]``.

    The target at packed position t+1 is token ``p = position_ids[t+1]`` (p >= 1: first tokens
    carry no label) of row ``sequence_index[t+1]``; in the padded layout the same prediction
    sits at shifted column p-1.  The move is an index_put, so gradients flow back unchanged.
    """
    targets, mask = shifted_targets(batch, ignore_index)
    scored = scores.mask[0]
    rows = batch["sequence_index"][0, 1:][scored]
    cols = batch["position_ids"][0, 1:][scored] - 1

    def place(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
        return out.index_put((rows, cols), values[0][scored])

    return TokenScores(place(scores.logps), place(scores.logit_means), mask, targets)


def unpack_batch(batch: dict[str, Any], pad_token_id: int = 0) -> dict[str, Any]:
    """The right-padded batch (rows = sequences) holding the same sequences as a packed one."""
    labels = batch["labels"]
    index, positions = batch["sequence_index"][0], batch["position_ids"][0]
    real = index >= 0
    where = (index[real], positions[real])
    input_ids = torch.full(labels.shape, pad_token_id, dtype=torch.long, device=labels.device)
    input_ids = input_ids.index_put(where, batch["input_ids"][0][real])
    attention_mask = torch.zeros_like(input_ids).index_put(where, torch.ones_like(positions[real]))
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if "nll_labels" in batch:
        out["nll_labels"] = batch["nll_labels"]
    return out


def _packing_tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2


def verify_packing(model: torch.nn.Module, batch: dict[str, Any], probe_tokens: int = 24) -> bool:
    """Whether the model keeps packed sequences apart (attention and positions).

    Packs the first ``probe_tokens`` of two sequences of ``batch`` and compares the second
    one's logits with those of the same tokens run alone.  Attention implementations that
    ignore position-id resets let the second sequence see the first and fail this check; the
    batch is then unpacked and run padded, with a warning.
    """
    index, positions, ids = batch["sequence_index"][0], batch["position_ids"][0], batch["input_ids"][0]
    first = ids[(index == 0) & (positions < probe_tokens)]
    second = ids[(index == 1) & (positions < probe_tokens)]
    device = ids.device
    packed = {
        "input_ids": torch.cat([first, second])[None],
        "position_ids": torch.cat([torch.arange(len(first), device=device), torch.arange(len(second), device=device)])[
            None
        ],
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            together = model(**packed, use_cache=False).logits[0, len(first) :].float()
            alone = model(input_ids=second[None], use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    diff = (together - alone).abs().max().item()
    tolerance = _packing_tolerance(_compute_dtype(model, device))
    ok = diff <= tolerance * (1 + alone.abs().max().item())
    if not ok:
        config = getattr(unwrap(model), "config", None)
        logger.warning(
            "padding_free: %s with attn_implementation=%r does not keep packed sequences apart (max logit diff "
            "%.3g); running these batches padded instead (use sdpa, flex_attention or flash_attention_2)",
            type(unwrap(model)).__name__,
            getattr(config, "_attn_implementation", None),
            diff,
        )
    return ok


def _compute_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype the model's matmuls run in: autocast's if on, else the parameters'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


# ---- shared-prompt batches ---------------------------------------------------------------
# Each pair packed as prompt | chosen | rejected (orpo.data.packing.ORPOSharedPromptCollator):
# the prompt runs once, and a mask keeps rejected from seeing chosen.


def is_shared_prompt(batch: dict[str, Any]) -> bool:
    return "shared_kind" in batch


def _attn_implementation(model: torch.nn.Module) -> str | None:
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None)


def _beyond_sliding_window(model: torch.nn.Module, batch: dict[str, Any]) -> bool:
    """Whether a sequence of the batch is longer than the model's sliding window.

    The shared-prompt mask replaces the model's own masks, its sliding-window ones included, so
    such a batch runs padded (exact); shorter sequences never reach the window.
    """
    window = getattr(getattr(unwrap(model), "config", None), "sliding_window", None)
    if not window:
        return False
    beyond = int(batch["position_ids"].max()) >= int(window)
    if beyond:
        logger.info("shared_prompt: a sequence is longer than the sliding window (%d); this batch runs padded", window)
    return beyond


def shared_prompt_mask(model: torch.nn.Module, batch: dict[str, Any]) -> Any:
    """The attention mask of a shared-prompt row, in the form the model's attention takes.

    Query q may see key k iff both belong to the same pair, k is not later (by position) and k
    is in the prompt or in q's own completion.  flex_attention gets a BlockMask (blocks with
    nothing to see are skipped), sdpa a boolean ``[1, 1, T, T]`` mask, eager an additive one.
    """
    pair, kind, position = batch["shared_pair"][0], batch["shared_kind"][0], batch["position_ids"][0]
    implementation = _attn_implementation(model)
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(_b: Any, _h: Any, q: Any, k: Any) -> Any:
            return (pair[q] == pair[k]) & (position[k] <= position[q]) & ((kind[k] == 0) | (kind[k] == kind[q]))

        length = pair.shape[0]
        return create_block_mask(mask_mod, None, None, length, length, device=pair.device)
    allowed = (
        (pair[:, None] == pair[None, :])
        & (position[None, :] <= position[:, None])
        & ((kind[None, :] == 0) | (kind[None, :] == kind[:, None]))
    )[None, None]
    if implementation == "sdpa":
        return allowed
    dtype = _compute_dtype(model, pair.device)
    return torch.zeros(allowed.shape, dtype=dtype, device=pair.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _shared_inputs(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "attention_mask": shared_prompt_mask(model, batch),
    }


def shared_prompt_scores(
    model: torch.nn.Module, batch: dict[str, Any], ignore_index: int, head: torch.nn.Linear | None
) -> TokenScores:
    """Token scores of a shared-prompt batch in the padded layout; fused through ``head`` if given."""
    targets, mask = shifted_targets(batch, ignore_index)
    source = batch["score_source"]
    if head is None:
        logits = model(**_shared_inputs(model, batch), use_cache=False).logits[0, source]
        logps = selective_log_softmax(logits, targets[mask])
        with torch.no_grad():
            means = _chunked_mean(logits.detach())
    else:
        capture = _HeadCapture.of(head)
        capture.armed = True
        try:
            model(**_shared_inputs(model, batch), use_cache=False)
            hidden = capture.hidden
        finally:
            capture.armed, capture.hidden = False, None
        if hidden is None:
            raise RuntimeError(f"the LM head of {type(unwrap(model)).__name__} was not called during the forward pass")
        softcap, scale = _head_transform(model)
        logps, means = linear_selective_log_softmax(
            hidden[0, source], head.weight, targets[mask], head.bias, softcap=softcap, scale=scale
        )
    return TokenScores(_scatter(logps, mask), _scatter(means, mask), mask, targets)


def padded_from_shared(batch: dict[str, Any]) -> dict[str, Any]:
    """The ordinary padded batch of the same pairs (for models that cannot take the mask)."""
    out = {
        "input_ids": batch["padded_input_ids"],
        "attention_mask": batch["padded_attention_mask"],
        "labels": batch["labels"],
    }
    if "nll_labels" in batch:
        out["nll_labels"] = batch["nll_labels"]
    return out


def verify_shared_prompt(model: torch.nn.Module, batch: dict[str, Any]) -> bool:
    """Whether the model honours the shared-prompt mask and positions.

    Runs the first pair as prompt | chosen | rejected and compares the rejected tokens' logits
    with those of prompt + rejected run alone; a model whose attention ignores the mask (or the
    position ids) lets rejected see chosen and fails.  The batch then runs padded, with a warning.
    """
    if _attn_implementation(model) not in ("sdpa", "eager", "flex_attention"):
        logger.warning(
            "shared_prompt needs attn_implementation sdpa, eager or flex_attention, not %r; running these batches "
            "padded instead",
            _attn_implementation(model),
        )
        return False
    pair = batch["shared_pair"][0]
    first = (pair == 0).nonzero().flatten()
    probe = {key: batch[key][:, first] for key in ("input_ids", "position_ids", "shared_pair", "shared_kind")}
    kind = probe["shared_kind"][0]
    alone = probe["input_ids"][:, kind != 1]
    rejected = kind[kind != 1] == 2
    if not bool(rejected.any()):
        return True  # nothing to compare; the padded fallback would not be safer
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            shared = model(**_shared_inputs(model, probe), use_cache=False).logits[0, kind == 2].float()
            reference = model(input_ids=alone, use_cache=False).logits[0, rejected].float()
    finally:
        model.train(was_training)
    diff = (shared - reference).abs().max().item()
    ok = diff <= _packing_tolerance(_compute_dtype(model, alone.device)) * (1 + reference.abs().max().item())
    if not ok:
        logger.warning(
            "shared_prompt: %s with attn_implementation=%r does not honour the shared-prompt mask (max logit diff "
            "%.3g); running these batches padded instead (use sdpa, eager or flex_attention)",
            type(unwrap(model)).__name__,
            _attn_implementation(model),
            diff,
        )
    return ok
