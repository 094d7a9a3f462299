"""GPU-only checks of the speed paths: bf16 training, fused == plain in bf16, padding-free with
sdpa / flex / flash attention, Liger kernels, torch.compile, and the fused head's memory.

Skipped without CUDA (CI has none).  On a GPU machine: ``python -m pytest -q -m gpu tests``.
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import build_tokenizer
from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.packing import ORPOPaddingFreeCollator, ORPOSharedPromptCollator
from orpo.scoring.scorer import TokenScorer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WORDS = ["sky", "grass", "hello", "world", "numbers", "answer", "color", "green", "blue", "red", "yes", "no"]


def _pairs(n: int = 32, seed: int = 0, scale: int = 4) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(low * scale, high * scale)))

    return [
        {"prompt": f"Q: {text(2, 10)}?", "chosen": f" yes {text(2, 8)}", "rejected": f" no {text(2, 8)}"}
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([" ".join(WORDS)] * 20 + ["Q: ? yes no"] * 5)


def _model(tok, attn="sdpa", vocab=None, hidden=256, layers=4, dtype=torch.bfloat16, seed=0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab or len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 128),
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn).cuda()


def _trainer(tok, tmp_path, model, **overrides):
    values = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-4,
        "max_steps": 4,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "bf16": True,
        "seed": 0,
        "train_sampling_strategy": "sequential",
        "disable_tqdm": True,
        "max_length": 512,
        "max_prompt_length": 256,
    }
    values.update(overrides)
    return ORPOTrainer(model=model, args=ORPOConfig(**values), train_dataset=_pairs(), processing_class=tok)


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _batch(tok, layout: str = "padded", n: int = 4, nll_scope: str = "completion"):
    trainer_data = _pairs(n, seed=1)
    from orpo.data import prepare_preference_dataset

    dataset, _ = prepare_preference_dataset(trainer_data, tok, ORPOConfig(output_dir="/tmp/x", report_to="none"))
    collator_class = {
        "padded": ORPODataCollator,
        "packed": ORPOPaddingFreeCollator,
        "shared": ORPOSharedPromptCollator,
    }[layout]
    collator = collator_class(pad_token_id=tok.pad_token_id, nll_scope=nll_scope)
    batch = collator([dataset[i] for i in range(n)])
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}  # the layout marker stays


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(got, ref, min_cosine=0.999, max_rel=3e-2):
    assert set(got) == set(ref)
    for name, g in got.items():
        r = ref[name]
        cosine = torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0).item()
        rel = ((g - r).norm() / r.norm().clamp(min=1e-12)).item()
        assert cosine >= min_cosine and rel <= max_rel, f"{name}: cosine {cosine:.5f}, relative diff {rel:.4f}"


def _uses_layout(trainer, layout: str) -> None:
    """The trainer chose ``layout`` and its batches ran in it (no fallback)."""
    scorer = trainer.scorer
    assert trainer.layout_choice.layout.value == layout
    assert scorer.uses_packing is (True if layout == "padding_free" else None)
    assert scorer.uses_shared_prompt is (True if layout == "shared_prompt" else None)


@pytest.mark.parametrize("layout", ["padded", "padding_free", "shared_prompt"])
@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_bf16_training(tok, tmp_path, layout, gradient_checkpointing):
    trainer = _trainer(tok, tmp_path, _model(tok), layout=layout, gradient_checkpointing=gradient_checkpointing)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.scorer.uses_fused is True
    _uses_layout(trainer, layout)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_fused_matches_plain_in_bf16(tok):
    model = _model(tok, vocab=32000)
    batch = _batch(tok)
    results = []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        scorer = TokenScorer(fused)
        scores = scorer(model, batch)
        scores.logps.sum().backward()
        assert scorer.uses_fused is fused
        results.append((scores.logps.detach(), _grads(model)))
    (plain, plain_grads), (fused, fused_grads) = results
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)
    _assert_grads_close(fused_grads, plain_grads)


@pytest.mark.parametrize(
    ("layout", "attn"),
    [
        ("packed", "sdpa"),
        ("packed", "flex_attention"),
        ("packed", "flash_attention_2"),
        ("shared", "sdpa"),
        ("shared", "flex_attention"),
        ("shared", "eager"),
    ],
)
def test_packed_layouts_match_padded_in_bf16(tok, layout, attn):
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    model = _model(tok, attn=attn)
    results = []
    for kind in ("padded", layout):
        model.zero_grad(set_to_none=True)
        scorer = TokenScorer(True)
        scores = scorer(model, _batch(tok, kind, nll_scope="prompt_and_completion"))
        scores.logps.sum().backward()
        results.append((scorer, scores.logps.detach(), _grads(model)))
    (_, padded, padded_grads), (packed_scorer, packed, packed_grads) = results
    used = packed_scorer.uses_packing if layout == "packed" else packed_scorer.uses_shared_prompt
    assert used is True, "the probe fell back to padded batches"
    torch.testing.assert_close(packed, padded, rtol=5e-2, atol=5e-2)
    _assert_grads_close(packed_grads, padded_grads, min_cosine=0.995, max_rel=6e-2)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel is not installed")
def test_liger_kernels_train_and_keep_the_fused_head(tok, tmp_path):
    reference = _trainer(tok, tmp_path, _model(tok), max_steps=1)
    reference.train()
    trainer = _trainer(tok, tmp_path, _model(tok), max_steps=3, use_liger_kernel=True)
    trainer.train()
    losses = _losses(trainer)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert trainer.scorer.uses_fused is True
    assert losses[0] == pytest.approx(_losses(reference)[0], rel=2e-2)


@pytest.mark.parametrize("layout", ["padded", "padding_free", "shared_prompt"])
def test_torch_compile_trains(tok, tmp_path, layout):
    reference = _trainer(tok, tmp_path, _model(tok), max_steps=1, layout="padded")
    reference.train()
    trainer = _trainer(tok, tmp_path, _model(tok), max_steps=3, torch_compile=True, layout=layout)
    trainer.train()
    losses = _losses(trainer)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert trainer.scorer.uses_fused is True
    _uses_layout(trainer, layout)
    assert losses[0] == pytest.approx(_losses(reference)[0], rel=2e-2)


def test_fused_head_never_holds_full_vocab_logits(tok):
    """Qwen2's vocabulary, 16 x 512 scored tokens: plain logits alone are 2.5 GB in bf16."""
    model = _model(tok, vocab=151936, hidden=896, layers=1)
    rows, length = 16, 512
    input_ids = torch.randint(5, len(tok), (rows, length), device="cuda")
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
    peaks = {}
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        TokenScorer(fused)(model, batch).logps.sum().backward()
        torch.cuda.synchronize()
        peaks[fused] = torch.cuda.max_memory_allocated() - base
    assert peaks[True] < 0.35 * peaks[False], {k: f"{v / 2**30:.2f} GiB" for k, v in peaks.items()}
