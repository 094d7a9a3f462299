"""Packed rows described as independent attention calls, known on the host.

A padding-free row holds the 2B sequences of a batch back to back; a shared-prompt row holds,
per pair, ``prompt | chosen | rejected``.  Attention over either row is a set of independent
calls, each exact as in the padded batch:

* a sequence (a prompt with its chosen completion, or the row's trailing padding) attends to
  itself, causally;
* a rejected completion attends to all of its prompt (the *prefix*) and to itself, causally
  (bottom-right aligned: its first token sees the whole prompt).

:class:`Segments` lists those calls as Python ints, which the collator knows, so that the
attention functions of :mod:`orpo.scoring.attention` slice tensors without reading anything back from
the device.  It also carries the few index tensors the flex and flash paths need; they move to
the device with the batch (``Segments.to``, which accelerate's data loader calls, and
``pin_memory``, which torch's calls), outside the training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from orpo.scoring.layouts import SEGMENTS_KEY, Layout, segments_of


class Call(NamedTuple):
    """Queries ``[start, stop)`` of the row; keys ``[prefix_start, prefix_stop)`` (all visible,
    empty when equal) followed by ``[start, stop)`` itself, causally.

    Attributes:
        start: the first query token's position in the row.
        stop: one past the last query token.
        prefix_start: the first prefix key (a rejected completion's prompt).
        prefix_stop: one past the last prefix key; equal to ``prefix_start``: no prefix.
    """

    start: int
    stop: int
    prefix_start: int = 0
    prefix_stop: int = 0

    @property
    def prefix(self) -> int:
        """Prefix keys: the prompt tokens a rejected completion attends to (0 for a sequence of its own)."""
        return self.prefix_stop - self.prefix_start

    @property
    def length(self) -> int:
        """Query tokens of the call."""
        return self.stop - self.start


@dataclass(frozen=True)
class Segments:
    """The attention calls of one packed row (batch size 1) and their index tensors.

    ``tensors`` (all on one device, built on the host by :func:`_index_tensors`):

    * ``positions``, ``own_start``, ``prefix_start``, ``prefix_stop`` ``[T]`` int32: per query
      token, its position in its sequence and the key ranges of its call (flex block masks);
    * ``cu_self`` int32 and ``self_index`` int64: cumulative lengths of the calls without a
      prefix and the row positions they cover, in call order (one flash varlen call);
    * ``cu_prefix_q``, ``cu_prefix_k`` int32, ``prefix_q_index``, ``prefix_k_index`` int64: the
      same for the calls with a prefix, keys = prefix then own tokens (a second varlen call).

    Attributes:
        layout: :attr:`Layout.PADDING_FREE` or :attr:`Layout.SHARED_PROMPT`.
        calls: the attention calls, in row order.
        total: the row's length in tokens, trailing padding included.
        tensors: the index tensors above, by name.
    """

    layout: Layout  # PADDING_FREE or SHARED_PROMPT
    calls: tuple[Call, ...]
    total: int
    tensors: dict[str, torch.Tensor]
    _cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def device(self) -> torch.device:
        """Where the index tensors are."""
        return self.tensors["positions"].device

    @property
    def self_calls(self) -> tuple[Call, ...]:
        """The calls without a prefix (sequences attending to themselves only)."""
        return tuple(call for call in self.calls if not call.prefix)

    @property
    def prefix_calls(self) -> tuple[Call, ...]:
        """The calls with a prefix (rejected completions attending to their prompt)."""
        return tuple(call for call in self.calls if call.prefix)

    @property
    def tiles_row(self) -> bool:
        """Whether the calls without a prefix cover the row in order (padding-free rows do)."""
        return not self.prefix_calls and sum(call.length for call in self.calls) == self.total

    def max_length(self, prefix: bool, keys: bool) -> int:
        """Longest query (or key) range of the calls with (or without) a prefix, as a Python int.

        Args:
            prefix: the calls with a prefix (True) or those without (False).
            keys: the key range (prefix included) rather than the query range.
        """
        calls = self.prefix_calls if prefix else self.self_calls
        return max((call.length + (call.prefix if keys else 0) for call in calls), default=0)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Segments:
        """On ``device``: this object itself (its cached block masks kept) if already there.

        Args:
            device: the target device.
            non_blocking: passed to ``Tensor.to`` (accelerate's loader sets it).
        """
        moved = {name: t.to(device, non_blocking=non_blocking) for name, t in self.tensors.items()}
        if all(moved[name] is t for name, t in self.tensors.items()):
            return self
        return Segments(self.layout, self.calls, self.total, moved)

    def pin_memory(self) -> Segments:
        """A copy with pinned index tensors (torch's data loader calls it with ``pin_memory=True``)."""
        return Segments(self.layout, self.calls, self.total, {n: t.pin_memory() for n, t in self.tensors.items()})

    def cached(self, key: Any, build: Any) -> Any:
        """``build()`` once per key: one block mask serves every layer and the checkpoint recompute.

        Args:
            key: what the cached value depends on, e.g. ``("flex", window)``.
            build: makes the value, called on the first request for ``key`` only.
        """
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def _check_lengths(name: str, lengths: Sequence[int]) -> list[int]:
    values = [int(n) for n in lengths]
    if any(n < 0 for n in values):
        raise ValueError(f"{name}: lengths must be >= 0, got {values}")
    return values


def _padding_call(calls: list[Call], used: int, total: int) -> None:
    if total < used:
        raise ValueError(f"total length {total} is shorter than the {used} tokens of the sequences")
    if total > used:  # trailing padding: a sequence of its own, so every backend computes the same values there
        calls.append(Call(used, total))


def packed_segments(lengths: Sequence[int], total: int | None = None) -> Segments:
    """Segments of a padding-free row: sequences of ``lengths`` back to back, then padding up to ``total``.

    Args:
        lengths: tokens of each sequence, in row order (an empty one gets no call).
        total: the row's length; None: the sum of ``lengths`` (no padding).

    Raises:
        ValueError: a length is negative, or ``total`` is shorter than the sequences.
    """
    values = _check_lengths("packed_segments", lengths)
    calls, start = [], 0
    for n in values:
        if n:
            calls.append(Call(start, start + n))
        start += n
    total = start if total is None else int(total)
    _padding_call(calls, start, total)
    return _build(Layout.PADDING_FREE, calls, total)


def shared_prompt_segments(
    prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int], total: int | None = None
) -> Segments:
    """Segments of a shared-prompt row: per pair ``prompt | chosen | rejected``, then padding up to ``total``.

    Args:
        prompt: each pair's prompt length, in tokens.
        chosen: each pair's chosen completion length.
        rejected: each pair's rejected completion length.
        total: the row's length; None: the sum of all lengths (no padding).

    Raises:
        ValueError: a length is negative, the three have different counts, or ``total`` is too short.
    """
    p, c, r = (_check_lengths(name, x) for name, x in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)))
    if not len(p) == len(c) == len(r):
        raise ValueError(f"shared_prompt_segments: {len(p)} prompts, {len(c)} chosen and {len(r)} rejected lengths")
    calls, start = [], 0
    for np_, nc, nr in zip(p, c, r, strict=True):
        if np_ + nc:
            calls.append(Call(start, start + np_ + nc))
        if nr:
            rejected_start = start + np_ + nc
            calls.append(Call(rejected_start, rejected_start + nr, start, start + np_))
        start += np_ + nc + nr
    total = start if total is None else int(total)
    _padding_call(calls, start, total)
    return _build(Layout.SHARED_PROMPT, calls, total)


def _build(layout: Layout, calls: list[Call], total: int) -> Segments:
    return Segments(layout, tuple(calls), total, _index_tensors(calls, total))


def _arange(start: int, stop: int) -> torch.Tensor:
    return torch.arange(start, stop, dtype=torch.long)


def _cumulative(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.long).cumsum(0).to(torch.int32)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _index_tensors(calls: list[Call], total: int) -> dict[str, torch.Tensor]:
    positions = torch.zeros(total, dtype=torch.int32)
    own_start = torch.zeros(total, dtype=torch.int32)
    prefix_start = torch.zeros(total, dtype=torch.int32)
    prefix_stop = torch.zeros(total, dtype=torch.int32)
    for call in calls:
        span = slice(call.start, call.stop)
        positions[span] = torch.arange(call.prefix, call.prefix + call.length, dtype=torch.int32)
        own_start[span] = call.start
        prefix_start[span], prefix_stop[span] = call.prefix_start, call.prefix_stop
        if call.prefix:
            positions[call.prefix_start : call.prefix_stop] = torch.arange(call.prefix, dtype=torch.int32)
    own = [call for call in calls if not call.prefix]
    prefixed = [call for call in calls if call.prefix]
    return {
        "positions": positions,
        "own_start": own_start,
        "prefix_start": prefix_start,
        "prefix_stop": prefix_stop,
        "cu_self": _cumulative([call.length for call in own]),
        "self_index": _cat([_arange(call.start, call.stop) for call in own]),
        "cu_prefix_q": _cumulative([call.length for call in prefixed]),
        "cu_prefix_k": _cumulative([call.prefix + call.length for call in prefixed]),
        "prefix_q_index": _cat([_arange(call.start, call.stop) for call in prefixed]),
        "prefix_k_index": _cat(
            [torch.cat([_arange(c.prefix_start, c.prefix_stop), _arange(c.start, c.stop)]) for c in prefixed]
        ),
    }


# ---- flex attention -------------------------------------------------------------------------


def _key_ranges(segments: Segments, window: int | None) -> tuple[torch.Tensor, ...]:
    """Per query token, its two key ranges ``[own_lo, own_hi)`` and ``[pre_lo, pre_hi)`` after the
    causal limit and the sliding window (keys at most ``window - 1`` positions back)."""
    t = segments.tensors
    query = torch.arange(segments.total, device=segments.device, dtype=torch.int32)
    own_lo, own_hi = t["own_start"], query + 1
    pre_lo, pre_hi = t["prefix_start"], t["prefix_stop"]
    if window is not None:
        own_lo = torch.maximum(own_lo, query - window + 1)
        # prefix tokens hold positions 0.. of their sequence: keep those after positions[q] - window
        pre_lo = torch.maximum(pre_lo, pre_lo + t["positions"] - window + 1)
        pre_lo = torch.minimum(pre_lo, pre_hi)
    return own_lo, own_hi, pre_lo, pre_hi


def _block_lists(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Q blocks, KV blocks]`` bool -> (count, indices first) as BlockMask wants them, int32."""
    count = blocks.sum(-1, dtype=torch.int32)
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return count[None, None], order[None, None]


def flex_block_mask(segments: Segments, window: int | None = None, block_size: int = 128) -> Any:
    """The BlockMask of the row, built from the key ranges in O(T x T / block_size), no dense mask.

    A KV block is *full* for a Q block when every query of it sees every key of it (no mask_mod
    evaluation there), *partial* when some query sees some key; blocks with neither are skipped.
    Blocks at the ragged end of the row are never marked full (always safe).

    Args:
        segments: the row's attention calls.
        window: the sliding window (keys at most ``window - 1`` positions back); None: none.
        block_size: flex attention's block size, in tokens.
    """
    from torch.nn.attention.flex_attention import BlockMask

    total, device = segments.total, segments.device
    own_lo, own_hi, pre_lo, pre_hi = _key_ranges(segments, window)
    blocks = math.ceil(total / block_size)
    kv_start = torch.arange(blocks, device=device, dtype=torch.int32) * block_size
    kv_stop = torch.clamp(kv_start + block_size, max=total)

    def touch(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = lo[:, None], hi[:, None]
        some = (lo < kv_stop) & (hi > kv_start) & (hi > lo)
        return some, (lo <= kv_start) & (hi >= kv_stop)

    some_own, all_own = touch(own_lo, own_hi)
    some_pre, all_pre = touch(pre_lo, pre_hi)
    pad = blocks * block_size - total
    some = torch.nn.functional.pad(some_own | some_pre, (0, 0, 0, pad), value=False)
    full = torch.nn.functional.pad(all_own | all_pre, (0, 0, 0, pad), value=True)
    some = some.view(blocks, block_size, blocks).any(1)
    full = full.view(blocks, block_size, blocks).all(1) & some
    if total % block_size:
        full[:, -1] = False
        full[-1, :] = False
    positions = segments.tensors["positions"]

    def mask_mod(_b: Any, _h: Any, q: Any, k: Any) -> Any:
        visible = ((own_lo[q] <= k) & (k < own_hi[q])) | ((pre_lo[q] <= k) & (k < pre_hi[q]))
        if window is not None:
            visible = visible & (positions[q] - positions[k] < window)
        return visible

    kv_count, kv_index = _block_lists(some & ~full)
    full_count, full_index = _block_lists(full)
    return BlockMask.from_kv_blocks(
        kv_count, kv_index, full_count, full_index, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(total, total)
    )


def dense_mask(segments: Segments, window: int | None = None) -> torch.Tensor:
    """``[T, T]`` bool: whether query q sees key k.  The reference for tests; never on the training path.

    Args:
        segments: the row's attention calls.
        window: the sliding window, as in :func:`flex_block_mask`; None: none.
    """
    own_lo, own_hi, pre_lo, pre_hi = (x[:, None] for x in _key_ranges(segments, window))
    keys = torch.arange(segments.total, device=segments.device)[None]
    return ((own_lo <= keys) & (keys < own_hi)) | ((pre_lo <= keys) & (keys < pre_hi))


# ---- probes: small rows that check a model runs a row layout exactly (orpo.scoring.logps.verify_*) ----


def row_view(batch: dict[str, Any], start: int, stop: int, segments: Segments | None) -> dict[str, Any]:
    """Tokens ``[start, stop)`` of a row batch as a one-row batch, with the ``segments`` that describe them.

    Args:
        batch: a row batch (``input_ids`` and ``position_ids`` ``[1, T]``).
        start: the first token of the view.
        stop: one past its last token.
        segments: the view's own segments (moved to the ids' device); None: none in the view.
    """
    view = {key: batch[key][:, start:stop] for key in ("input_ids", "position_ids")}
    if segments is not None:
        view[SEGMENTS_KEY] = segments.to(batch["input_ids"].device)
    return view


def first_sequence(batch: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The first ``tokens`` of the row's first sequence: a one-row padded batch (the fused head's probe).

    Args:
        batch: a row batch.
        tokens: the most tokens to keep.
    """
    first = segments_of(batch).calls[0]  # always a sequence of its own starting the row
    view = row_view(batch, 0, min(tokens, first.length), None)
    view["labels"] = view["input_ids"].clone()
    return view


def packing_probe(batch: dict[str, Any], probe_tokens: int = 24) -> tuple[dict[str, Any], int, torch.Tensor] | None:
    """The first ``probe_tokens`` of the row's first two sequences packed in one row, where the
    second one starts in that row, and the second one's ids alone; None if the row has one sequence.

    Args:
        batch: a padding-free batch.
        probe_tokens: the most tokens kept of each of the two sequences.

    Returns:
        ``(row, offset, alone_ids)``: the second sequence is ``row[offset:]`` and ``alone_ids``.
    """
    calls = segments_of(batch).calls
    if len(calls) < 2:
        return None
    ids, positions = batch["input_ids"], batch["position_ids"]
    spans = [(call.start, call.start + min(probe_tokens, call.length)) for call in calls[:2]]
    lengths = [stop - start for start, stop in spans]
    probe = {
        "input_ids": torch.cat([ids[:, a:b] for a, b in spans], dim=1),
        "position_ids": torch.cat([positions[:, a:b] for a, b in spans], dim=1),
        SEGMENTS_KEY: packed_segments(lengths).to(ids.device),
    }
    second = spans[1]
    return probe, lengths[0], ids[:, second[0] : second[1]]


def shared_prompt_probe(batch: dict[str, Any]) -> tuple[dict[str, Any], int, torch.Tensor, int] | None:
    """The first pair with a prompt and a rejected completion as its own shared-prompt row, and
    the ids of that prompt + rejected alone.

    Returns ``(row, rejected_start, alone_ids, prompt_length)``: the rejected tokens are
    ``row[rejected_start:]`` and ``alone_ids[prompt_length:]``; None when no pair has both.

    Args:
        batch: a shared-prompt batch.
    """
    call = next((call for call in segments_of(batch).calls if call.prefix), None)
    if call is None:
        return None
    prompt, chosen, rejected = call.prefix, call.start - call.prefix_stop, call.length
    segments = shared_prompt_segments([prompt], [chosen], [rejected])
    row = row_view(batch, call.prefix_start, call.stop, segments)
    ids = batch["input_ids"]
    alone = torch.cat([ids[:, call.prefix_start : call.prefix_stop], ids[:, call.start : call.stop]], dim=1)
    return row, prompt + chosen, alone, prompt
