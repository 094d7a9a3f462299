"""Gradient-accumulation invariance: batch 8 x GA 1, 4 x GA 2 and 2 x GA 4 make the same update.

The NLL is token-weighted over the whole accumulation window and the odds-ratio term
pair-averaged over it, so splitting a batch into micro-batches changes nothing but rounding.
The completions have very different lengths, so a per-micro-batch average (the usual bug)
would give a visibly different update.
"""

from __future__ import annotations

import logging
import random

import pytest
import torch

from _reliability import make_trainer, max_diff, weights
from orpo.loss import orpo_loss, pair_logps
from orpo.scoring.scorer import TokenScorer

WORDS = ["sky", "grass", "hello", "world", "numbers", "answer", "color", "green"]


def uneven_pairs(n: int = 16, seed: int = 3) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = " ".join(rng.sample(WORDS, 2))
        rows.append(
            {
                "prompt": f"Question {i} about {topic}?",
                "chosen": " yes" + f" {topic}" * rng.randint(1, 8),
                "rejected": " no" + f" {topic}" * rng.randint(1, 8),
            }
        )
    return rows


def _run(tokenizer, out, batch, accumulation, optim="sgd"):
    trainer = make_trainer(
        tokenizer,
        out,
        data=uneven_pairs(),
        max_steps=2,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim=optim,
        learning_rate=0.5 if optim == "sgd" else 1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        save_strategy="no",
    )
    initial = weights(trainer.model)
    seen = []
    step = trainer.training_step

    def record(model, inputs, num_items_in_batch=None):
        seen.append(inputs["orpo_row_index"].tolist())
        return step(model, inputs, num_items_in_batch)

    trainer.training_step = record
    trainer.train()
    return trainer, initial, seen


def test_micro_batches_have_uneven_token_counts(tokenizer, tmp_path):
    trainer, _, seen = _run(tokenizer, tmp_path, 2, 4)
    lengths = [sum(len(trainer.train_dataset[i]["chosen_input_ids"]) for i in rows) for rows in seen[:4]]
    assert len(set(lengths)) > 1, lengths  # equal weighting of micro-batches would be wrong here


@pytest.mark.parametrize("split", [(4, 2), (2, 4)], ids=["4x2", "2x4"])
def test_same_update_as_one_big_batch(tokenizer, tmp_path, split):
    big, initial, big_rows = _run(tokenizer, tmp_path / "big", 8, 1)
    small, initial_small, small_rows = _run(tokenizer, tmp_path / "small", *split)
    assert max_diff(initial, initial_small) == 0.0
    # The same 8 pairs make up each step.
    per_step = [
        [row for batch in small_rows[i : i + split[1]] for row in batch] for i in range(0, len(small_rows), split[1])
    ]
    assert [sorted(r) for r in big_rows] == [sorted(r) for r in per_step]
    # SGD without clipping: the update is -lr * gradient, compared tensor by tensor.
    big_w, small_w = weights(big.model), weights(small.model)
    for name in big_w:
        delta_big = big_w[name] - initial[name]
        delta_small = small_w[name] - initial[name]
        scale = delta_big.abs().max().item()
        assert (delta_big - delta_small).abs().max().item() <= 5e-5 * max(scale, 1e-3), name
    for a, b in zip(big.recorder.logs, small.recorder.logs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_same_losses_with_adamw(tokenizer, tmp_path):
    big, _, _ = _run(tokenizer, tmp_path / "big", 8, 1, optim="adamw_torch")
    small, _, _ = _run(tokenizer, tmp_path / "small", 2, 4, optim="adamw_torch")
    for a, b in zip(big.recorder.logs, small.recorder.logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["nll_loss"] == pytest.approx(b["nll_loss"], rel=1e-5)
    assert max_diff(weights(big.model), weights(small.model)) < 1e-4


# ---- the loss and the window counts come from one reduction (orpo.loss.pair_logps) ------------------


def _with_empty_completion(trainer, rows, empty_row, side):
    features = [trainer.train_dataset[i] for i in range(rows)]
    features[empty_row] = {**features[empty_row], f"{side}_input_ids": []}  # this pair is excluded, and counted
    return features


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
def test_compute_loss_is_orpo_loss_of_pair_logps(tokenizer, tmp_path, caplog, nll_scope):
    trainer = make_trainer(tokenizer, tmp_path, data=uneven_pairs(), nll_scope=nll_scope, beta=0.3, fused_lm_head=False)
    model = trainer.model.train()
    batch = trainer.data_collator(_with_empty_completion(trainer, 4, 1, "rejected"))
    scores = TokenScorer(fused=False)(model, batch)
    pairs = pair_logps(scores.logps, batch["labels"], batch.get("nll_labels"))
    assert pairs.valid.tolist() == [True, False, True, True]
    loss = trainer.compute_loss(model, batch)
    expected = orpo_loss(pairs.chosen, pairs.rejected, 0.3, pairs.nll_logp_sum, *pairs.counts)
    assert torch.equal(loss, expected.loss)
    with caplog.at_level(logging.WARNING, logger="orpo.training.metrics"):  # counted on device, reported once per log
        metrics = trainer._pop_metrics("train")
    assert "1 pair(s) since the last log have an empty completion and are excluded" in caplog.text
    assert metrics["nll_loss"] == pytest.approx(expected.nll_loss.item(), rel=1e-6)
    assert metrics["logps/chosen"] == pytest.approx((pairs.chosen.mean * pairs.valid).sum().item() / 3, rel=1e-6)
    # Inside an accumulation window the window's totals normalise both terms.
    window = torch.tensor([50.0, 7.0], dtype=torch.float64)  # what get_batch_samples sets
    trainer._window = window
    windowed = orpo_loss(pairs.chosen, pairs.rejected, 0.3, pairs.nll_logp_sum, window[0], window[1])
    assert torch.equal(trainer.compute_loss(model, batch), windowed.loss)


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
def test_window_counts_are_the_reductions_counts(tokenizer, tmp_path, nll_scope):
    trainer = make_trainer(tokenizer, tmp_path, data=uneven_pairs(), nll_scope=nll_scope)
    features = _with_empty_completion(trainer, 6, 3, "chosen")
    batches = [trainer.data_collator(features[i : i + 2]) for i in (0, 2, 4)]
    samples, _ = trainer.get_batch_samples(iter(batches), 3, torch.device("cpu"))
    assert len(samples) == 3
    totals = torch.zeros(2, dtype=torch.long)
    for batch in batches:
        with torch.no_grad():
            scores = trainer.scorer(trainer.model, batch)
        totals += torch.stack(pair_logps(scores.logps, batch["labels"], batch.get("nll_labels")).counts)
    assert totals[1].item() == 5  # 6 pairs, one with an empty completion
    assert trainer._window.dtype == torch.float64
    assert trainer._window.tolist() == [float(totals[0]), float(totals[1])]
