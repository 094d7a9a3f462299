"""Segments of packed rows: the attention calls, their index tensors and the flex block mask,
against masks written out token by token."""

from __future__ import annotations

import pytest
import torch

from orpo.scoring.layouts import Layout
from orpo.scoring.segments import (
    Call,
    dense_mask,
    flex_block_mask,
    packed_segments,
    shared_prompt_segments,
)


def test_packed_calls_and_varlen_tensors():
    seg = packed_segments([3, 0, 2], total=7)
    assert seg.layout is Layout.PADDING_FREE and seg.total == 7
    assert seg.calls == (Call(0, 3), Call(3, 5), Call(5, 7))  # the empty sequence has no call; padding has one
    assert seg.tiles_row
    assert seg.tensors["cu_self"].tolist() == [0, 3, 5, 7] and seg.tensors["cu_self"].dtype == torch.int32
    assert seg.tensors["positions"].tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert seg.max_length(prefix=False, keys=False) == 3


def test_shared_prompt_calls_and_varlen_tensors():
    seg = shared_prompt_segments([2, 1], [3, 0], [1, 2], total=11)
    # pair 0: prompt 0-1, chosen 2-4, rejected 5; pair 1: prompt 6, chosen empty, rejected 7-8; padding 9-10
    assert seg.calls == (Call(0, 5), Call(5, 6, 0, 2), Call(6, 7), Call(7, 9, 6, 7), Call(9, 11))
    assert seg.layout is Layout.SHARED_PROMPT and not seg.tiles_row
    t = seg.tensors
    assert t["positions"].tolist() == [0, 1, 2, 3, 4, 2, 0, 1, 2, 0, 1]
    assert t["self_index"].tolist() == [0, 1, 2, 3, 4, 6, 9, 10]
    assert t["cu_self"].tolist() == [0, 5, 6, 8]
    assert t["prefix_q_index"].tolist() == [5, 7, 8]
    assert t["prefix_k_index"].tolist() == [0, 1, 5, 6, 7, 8]
    assert t["cu_prefix_q"].tolist() == [0, 1, 3] and t["cu_prefix_k"].tolist() == [0, 3, 6]
    assert (seg.max_length(True, False), seg.max_length(True, True)) == (2, 3)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        packed_segments([3, -1])
    with pytest.raises(ValueError, match="total length 4 is shorter than the 5 tokens"):
        packed_segments([3, 2], total=4)
    with pytest.raises(ValueError, match="2 prompts, 1 chosen and 2 rejected"):
        shared_prompt_segments([1, 2], [1], [1, 1])


def test_to_moves_tensors_and_drops_the_cache():
    seg = packed_segments([2, 2])
    seg.cached("x", lambda: 1)
    assert seg.to("cpu") is seg  # already there: the same object, its cache kept
    moved = seg.to("meta")
    assert moved is not seg and moved.device == torch.device("meta")
    assert moved.calls == seg.calls and moved.tensors.keys() == seg.tensors.keys()
    assert moved._cache == {} and seg._cache == {"x": 1}
    calls = []
    assert moved.cached("y", lambda: calls.append(1) or 2) == 2 and moved.cached("y", lambda: 3) == 2
    assert calls == [1]


# ---- masks --------------------------------------------------------------------------------------


def _token_mask(kinds: list[tuple[int, int, int]], window: int | None) -> torch.Tensor:
    """Visibility written out per token: (group, kind, position) with kind 0 = prompt or a whole
    sequence, 1 = chosen, 2 = rejected; a token sees earlier-positioned tokens of its group that
    are of kind 0 or of its own kind."""
    n = len(kinds)
    out = torch.zeros((n, n), dtype=torch.bool)
    for q, (gq, kq, pq) in enumerate(kinds):
        for k, (gk, kk, pk) in enumerate(kinds):
            same = gq == gk and (kk == 0 or kk == kq) and pk <= pq
            out[q, k] = same and (window is None or pq - pk < window)
    return out


def _packed_kinds(lengths: list[int], padding: int) -> list[tuple[int, int, int]]:
    return [(g, 0, p) for g, n in enumerate([*lengths, padding]) for p in range(n)]


def _shared_kinds(prompt, chosen, rejected, padding) -> list[tuple[int, int, int]]:
    out = []
    for g, (np_, nc, nr) in enumerate(zip(prompt, chosen, rejected, strict=True)):
        out += [(g, 0, p) for p in range(np_)] + [(g, 1, np_ + p) for p in range(nc)]
        out += [(g, 2, np_ + p) for p in range(nr)]
    return out + [(-1, 0, p) for p in range(padding)]


CASES = [
    ("packed", ([5, 17, 1, 40], 3)),
    ("packed", ([64, 64], 0)),
    ("shared", (([6, 20, 3], [9, 0, 30], [4, 12, 0]), 5)),
    ("shared", (([0, 33], [7, 2], [3, 1]), 0)),
]


def _case(layout, spec):
    if layout == "packed":
        lengths, padding = spec
        return packed_segments(lengths, sum(lengths) + padding), _packed_kinds(lengths, padding)
    (prompt, chosen, rejected), padding = spec
    seg = shared_prompt_segments(prompt, chosen, rejected, sum(prompt) + sum(chosen) + sum(rejected) + padding)
    return seg, _shared_kinds(prompt, chosen, rejected, padding)


@pytest.mark.parametrize("window", [None, 4, 16])
@pytest.mark.parametrize(("layout", "spec"), CASES)
def test_dense_mask_matches_token_rules(layout, spec, window):
    seg, kinds = _case(layout, spec)
    assert torch.equal(dense_mask(seg, window), _token_mask(kinds, window))


@pytest.mark.parametrize("window", [None, 4, 16])
@pytest.mark.parametrize(("layout", "spec"), CASES)
def test_flex_block_mask_blocks_and_mask_mod(layout, spec, window):
    """Every visible pair lies in a listed block; full blocks hold only visible pairs; in partial
    blocks mask_mod decides exactly; unlisted blocks hold nothing visible."""
    seg, kinds = _case(layout, spec)
    truth = _token_mask(kinds, window)
    size = 16
    mask = flex_block_mask(seg, window, block_size=size)
    assert mask.seq_lengths == (seg.total, seg.total)
    blocks = -(-seg.total // size)
    full = torch.zeros((blocks, blocks), dtype=torch.bool)
    partial = torch.zeros((blocks, blocks), dtype=torch.bool)
    for qb in range(blocks):
        for j in mask.full_kv_indices[0, 0, qb, : mask.full_kv_num_blocks[0, 0, qb]].tolist():
            full[qb, j] = True
        for j in mask.kv_indices[0, 0, qb, : mask.kv_num_blocks[0, 0, qb]].tolist():
            partial[qb, j] = True
    assert not (full & partial).any()
    q = torch.arange(seg.total)[:, None].expand(-1, seg.total)
    k = torch.arange(seg.total)[None].expand(seg.total, -1)
    mod = mask.mask_mod(0, 0, q, k)
    in_full, in_partial = full[q // size, k // size], partial[q // size, k // size]
    assert truth[in_full].all()
    assert torch.equal(mod[in_partial], truth[in_partial])
    assert not truth[~(in_full | in_partial)].any()
    assert (full | partial).sum() < blocks * blocks  # blocks across sequences are skipped
    if spec == ([64, 64], 0) and window is None:
        assert full.sum() == 2 * (4 * 3 // 2)  # per 64-token sequence: the 6 blocks below its diagonal
