"""The flex and flash paths of orpo.scoring.attention on CPU: flex forward values (torch's CPU flex has no
backward; test_attention_gpu.py covers gradients), and the flash varlen plumbing (gathers, cumulative and
maximum lengths, the two shared-prompt calls) against a reference varlen kernel."""

from __future__ import annotations

import itertools

import pytest
import torch

from _packed_rows import (
    SHARED_GRAD_TOLERANCE,
    assert_same,
    logits_and_grads,
    packed_rows,
    padded_rows,
    random_pairs,
    shared_rows,
)
from orpo.demo.tiny import tiny_causal_lm
from orpo.scoring import attention
from orpo.scoring.attention import segment_forward_kwargs
from orpo.scoring.routing import use_segment_attention

LAYOUTS = {"packed": packed_rows, "shared": shared_rows}


def _model(tokenizer, arch="llama", **config):
    return tiny_causal_lm(tokenizer, arch=arch, hidden_size=48, **config).double()


def _padded_logits(model, pairs):
    rows = padded_rows(pairs)
    with torch.no_grad():
        logits = model(**rows.inputs).logits.reshape(-1, model.config.vocab_size)
    return logits[rows.source.clamp(min=0)] * (rows.source >= 0)[..., None]


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("llama", {}),
        ("qwen2", {"num_attention_heads": 6, "num_key_value_heads": 2}),  # GQA groups of 3: no repeat_kv
        ("mistral", {"sliding_window": 5}),
        # attention softcap through score_mod; a window longer than any row's padding, or the padded
        # eager reference turns padding rows that see only padding into NaN, which then spreads
        ("gemma2", {"sliding_window": 12}),
    ],
    ids=["llama", "qwen2-gqa3", "mistral-window", "gemma2-softcap"],
)
def test_flex_forward_equals_padded(tokenizer, arch, config, layout):
    model = _model(tokenizer, arch, **config)
    model.set_attn_implementation("eager" if arch == "gemma2" else "sdpa")
    pairs = random_pairs(len(tokenizer), seed=11, prompt=(5, 10), completion=(3, 9))
    reference = _padded_logits(model, pairs)
    use_segment_attention(model, "orpo_flex")
    rows = LAYOUTS[layout](pairs, padding=3)
    kwargs = segment_forward_kwargs(rows.segments)
    with torch.no_grad():
        logits = model(**rows.inputs, **kwargs).logits.reshape(-1, model.config.vocab_size)
    got = logits[rows.source.clamp(min=0)] * (rows.source >= 0)[..., None]
    tol = 2e-6 if arch == "gemma2" else 1e-10  # gemma2's eager reference takes its softmax in float32
    torch.testing.assert_close(got, reference, rtol=tol, atol=tol)
    # one block mask per kind of layer (gemma2: sliding and full), shared by every layer of the kind
    assert len(rows.segments._cache) == (2 if arch == "gemma2" else 1)


def _reference_varlen(calls):
    """Flash varlen semantics, written per sequence: bottom-right causal, optional window."""

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, dropout, softmax_scale, sliding_window, softcap, **_):
        assert isinstance(max_q, int) and isinstance(max_k, int)  # never device tensors
        assert cu_q.dtype == cu_k.dtype == torch.int32
        bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
        assert max_q == max(b - a for a, b in itertools.pairwise(bounds_q))
        assert max_k == max(b - a for a, b in itertools.pairwise(bounds_k))
        calls.append((len(bounds_q) - 1, q.shape[1]))
        outs = []
        for (qa, qb), (ka, kb) in zip(itertools.pairwise(bounds_q), itertools.pairwise(bounds_k), strict=True):
            query = q[0, qa:qb].transpose(0, 1)
            key, value = (x[0, ka:kb].transpose(0, 1).repeat_interleave(q.shape[2] // x.shape[2], 0) for x in (k, v))
            last = torch.arange(qb - qa)[:, None] + (kb - ka) - (qb - qa)
            visible = torch.arange(kb - ka)[None] <= last
            if sliding_window is not None:
                visible &= torch.arange(kb - ka)[None] > last - sliding_window
            scores = query @ key.transpose(-1, -2) * softmax_scale
            probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
            outs.append((probs @ value).transpose(0, 1))
        return torch.cat(outs)[None]

    return varlen


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("window", [None, 5])
def test_flash_path_plumbing_equals_padded(tokenizer, monkeypatch, layout, window):
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(attention, "varlen_attention", _reference_varlen(calls))
    model = _model(tokenizer, "mistral", sliding_window=window, attn_implementation="sdpa")
    pairs = random_pairs(len(tokenizer), n=3, seed=12, prompt=(4, 9), completion=(2, 8))
    padded = padded_rows(pairs)
    upstream = torch.randn((*padded.source.shape, model.config.vocab_size), dtype=torch.float64)
    reference = logits_and_grads(model, padded, upstream)
    use_segment_attention(model, "orpo_fa2")
    rows = LAYOUTS[layout](pairs, padding=2)
    got = logits_and_grads(model, rows, upstream, **segment_forward_kwargs(rows.segments))
    assert_same(got, reference, 1e-10, SHARED_GRAD_TOLERANCE if layout == "shared" else None)
    layers = model.config.num_hidden_layers
    if layout == "packed":  # one varlen call over the row as it is: 6 sequences + the padding
        assert calls == [(7, rows.segments.total)] * layers
    else:  # prompt + chosen (3) and padding, then rejected against prompt + rejected (3)
        own = sum(len(p) + len(c) for p, c, _ in pairs) + 2
        assert calls == [(4, own), (3, sum(len(r) for _, _, r in pairs))] * layers


def test_flash_padded_batches_load_the_base_kernels(tokenizer, monkeypatch):
    """Without segments, orpo_fa2 runs transformers' flash path under the name flash_attention_2
    (the config names orpo_fa2, which transformers could not load)."""
    from transformers import modeling_flash_attention_utils as flash_utils

    seen = []

    def fake_flash(q, k, v, attention_mask, query_length, is_causal, attn_implementation, **kwargs):
        seen.append((attn_implementation, is_causal, tuple(attention_mask.shape)))
        query, key, value = (x.transpose(1, 2) for x in (q, k, v))
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        causal = torch.ones(query_length, query_length, dtype=torch.bool).tril()
        mask = causal & attention_mask.bool()[:, None, None, :]
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return out.transpose(1, 2)

    monkeypatch.setattr(flash_utils, "_flash_attention_forward", fake_flash)
    model = _model(tokenizer, attn_implementation="sdpa")
    rows = padded_rows(random_pairs(len(tokenizer), seed=14))
    with torch.no_grad():
        reference = model(**rows.inputs).logits
        use_segment_attention(model, "orpo_fa2")
        got = model(**rows.inputs).logits
    real = rows.inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], reference[real], rtol=1e-10, atol=1e-10)
    assert seen and {s[:2] for s in seen} == {("flash_attention_2", True)}
