"""Per-segment attention (orpo.scoring.attention) == the padded batch, in float64, values and gradients,
on tiny Llama / Qwen2 / Mistral (sliding window) / Gemma2 (softcap) models called directly."""

from __future__ import annotations

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
from orpo.scoring.attention import SEGMENT_MASK, segment_forward_kwargs
from orpo.scoring.layouts import Layout
from orpo.scoring.routing import base_implementation, segment_route, use_segment_attention
from orpo.training.reliability.host_syncs import detect_host_syncs

LAYOUTS = {"packed": packed_rows, "shared": shared_rows}


def _model(tokenizer, arch="llama", attn="sdpa", hidden_size=32, **config):
    return tiny_causal_lm(tokenizer, arch=arch, hidden_size=hidden_size, attn_implementation=attn, **config).double()


def _upstream(rows, vocab, seed=1):
    shape = (*rows.source.shape, vocab)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _compare(model, implementation, layout, pairs, padding=3, tol=1e-10, **forward):
    """Padded with the model's own attention, then ``layout`` per segment; returns both results."""
    padded = padded_rows(pairs)
    upstream = _upstream(padded, model.config.vocab_size)
    reference = logits_and_grads(model, padded, upstream)
    previous = use_segment_attention(model, implementation)
    rows = LAYOUTS[layout](pairs, padding)
    got = logits_and_grads(model, rows, upstream, **segment_forward_kwargs(rows.segments), **forward)
    assert_same(got, reference, tol, max(tol, SHARED_GRAD_TOLERANCE) if layout == "shared" else tol)
    return previous


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("implementation", ["orpo_sdpa", "orpo_eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_segment_attention_equals_padded(tokenizer, arch, implementation, layout):
    model = _model(tokenizer, arch)
    pairs = random_pairs(len(tokenizer), n=3, seed=2)
    assert _compare(model, implementation, layout, pairs) == "sdpa"
    assert model.config._attn_implementation == implementation


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("implementation", ["orpo_sdpa", "orpo_eager"])
def test_gqa_with_a_group_size_that_is_not_a_power_of_two(tokenizer, implementation, layout):
    model = _model(tokenizer, hidden_size=48, num_attention_heads=6, num_key_value_heads=2)
    _compare(model, implementation, layout, random_pairs(len(tokenizer), seed=3))


@pytest.mark.parametrize("layout", ["packed", "shared"])
@pytest.mark.parametrize("implementation", ["orpo_sdpa", "orpo_eager"])
def test_sliding_window_inside_long_sequences(tokenizer, implementation, layout):
    """Mistral with a 5-token window: sequences and prompt + rejected run past it."""
    model = _model(tokenizer, "mistral", sliding_window=5)
    pairs = random_pairs(len(tokenizer), seed=4, prompt=(6, 10), completion=(4, 9))
    _compare(model, implementation, layout, pairs)


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_gemma2_softcap_and_alternating_windows_with_eager(tokenizer, layout):
    model = _model(tokenizer, "gemma2", "eager", sliding_window=6)
    assert model.config.attn_logit_softcapping is not None
    pairs = random_pairs(len(tokenizer), seed=5, prompt=(5, 9), completion=(3, 8))
    # the model's eager attention takes its softmax in float32; ours in the input dtype (float64)
    assert _compare(model, "orpo_eager", layout, pairs, tol=2e-6) == "eager"


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_gradient_checkpointing(tokenizer, layout):
    """Recomputed layers see the same segments (kwargs travel through the checkpoint)."""
    model = _model(tokenizer)
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    _compare(model, "orpo_sdpa", layout, random_pairs(len(tokenizer), seed=6))


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize(("implementation", "attn"), [("orpo_sdpa", "sdpa"), ("orpo_eager", "eager")])
def test_padded_batches_run_the_base_attention(tokenizer, implementation, attn, left):
    model = _model(tokenizer, attn=attn)
    rows = padded_rows(random_pairs(len(tokenizer), seed=7), left=left)
    with torch.no_grad():
        reference = model(**rows.inputs).logits
        use_segment_attention(model, implementation)
        assert base_implementation(model) == attn
        got = model(**rows.inputs).logits
    torch.testing.assert_close(got, reference, rtol=0, atol=0, equal_nan=True)  # eager: left-padding rows are NaN


def test_segments_must_match_the_row(tokenizer):
    model = _model(tokenizer)
    use_segment_attention(model, "orpo_sdpa")
    rows = packed_rows(random_pairs(len(tokenizer), seed=8))
    wrong = packed_rows(random_pairs(len(tokenizer), seed=9)).segments
    assert wrong.total != rows.segments.total
    with pytest.raises(ValueError, match=f"orpo_segments describes a packed row of {wrong.total} tokens"):
        model(**rows.inputs, **segment_forward_kwargs(wrong))


def test_the_segment_mask_fails_loudly_under_another_attention(tokenizer):
    """Never silently attending across sequences: plain sdpa rejects the placeholder mask."""
    model = _model(tokenizer)
    rows = packed_rows(random_pairs(len(tokenizer), seed=8))
    with pytest.raises(RuntimeError):
        model(**rows.inputs, attention_mask=SEGMENT_MASK)


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_no_host_sync_in_a_segment_forward_and_backward(tokenizer, layout):
    model = _model(tokenizer)
    use_segment_attention(model, "orpo_sdpa")
    rows = LAYOUTS[layout](random_pairs(len(tokenizer), seed=10), padding=2)
    kwargs = segment_forward_kwargs(rows.segments)
    with detect_host_syncs() as syncs:
        model(**rows.inputs, **kwargs, use_cache=False).logits.sum().backward()
    assert syncs.events == []
    # the detector does see the syncs of transformers' own mask building on a padded batch
    with torch.no_grad(), detect_host_syncs(raise_on_sync=False) as syncs:
        model(**padded_rows(random_pairs(len(tokenizer), seed=10)).inputs)
    assert syncs.events


def test_route(tokenizer):
    assert segment_route(_model(tokenizer), Layout.PADDING_FREE).implementation == "orpo_sdpa"
    assert segment_route(_model(tokenizer, attn="eager"), Layout.SHARED_PROMPT).implementation == "orpo_eager"
    flex = segment_route(_model(tokenizer, attn="flex_attention"), Layout.PADDING_FREE)
    assert flex.implementation is None and "no backward on CPU" in flex.reason
    flash = _model(tokenizer)
    flash.config._attn_implementation_internal = "flash_attention_2"
    assert segment_route(flash, Layout.PADDING_FREE) == (None, "flash_attention_2 is not installed")
    with pytest.raises(ValueError, match=r"layout must be Layout\.PADDING_FREE or Layout\.SHARED_PROMPT"):
        segment_route(_model(tokenizer), Layout.PADDED)
    model = _model(tokenizer)
    previous = use_segment_attention(model, "orpo_sdpa")
    assert segment_route(model, Layout.SHARED_PROMPT).implementation == "orpo_sdpa"  # seen through ours
    model.set_attn_implementation(previous)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="not a per-segment implementation"):
        use_segment_attention(model, "sdpa")


def test_choose_layout_auto_and_asked_for(tokenizer):
    from orpo.scoring.routing import choose_layout

    sdpa = _model(tokenizer)
    assert choose_layout("auto", sdpa) == (Layout.SHARED_PROMPT, "orpo_sdpa", "auto: attention orpo_sdpa runs it", None)
    assert choose_layout(Layout.PADDING_FREE, sdpa).layout is Layout.PADDING_FREE
    assert choose_layout("padded", sdpa) == (Layout.PADDED, None, "requested", None)
    choice = choose_layout("auto", _model(tokenizer, attn="flex_attention"))
    assert choice.layout is Layout.PADDED and choice.implementation is None and choice.refused is None
    assert choice.reason == (
        "auto: no per-segment attention for this model (shared_prompt: flex attention has no backward on CPU; "
        "padding_free: flex attention has no backward on CPU)"
    )
    choice = choose_layout("shared_prompt", _model(tokenizer, attn="flex_attention"))
    assert choice == (Layout.PADDED, None, "flex attention has no backward on CPU", Layout.SHARED_PROMPT)
    assert choose_layout("auto", torch.nn.Linear(2, 2)).reason.startswith(
        "auto: no per-segment attention for this model (shared_prompt: Linear is not a transformers model"
    )


def test_lora_wrapped_model(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert segment_route(model, Layout.PADDING_FREE).implementation == "orpo_sdpa"
    pairs = random_pairs(len(tokenizer), seed=13)
    padded = padded_rows(pairs)
    upstream = _upstream(padded, len(tokenizer))
    reference = logits_and_grads(model, padded, upstream)
    assert use_segment_attention(model, "orpo_sdpa") == "sdpa"
    rows = packed_rows(pairs, padding=1)
    got = logits_and_grads(model, rows, upstream, **segment_forward_kwargs(rows.segments))
    assert all("lora" in name for name in got[1])  # only the adapters train
    assert_same(got, reference, 1e-10)
