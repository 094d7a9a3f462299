"""Determinism and exact resume: an interrupted and resumed run equals the uninterrupted one.

Full fine-tune and LoRA, gradient accumulation 2, cosine schedule with warmup, a shuffled
dataset crossing epoch boundaries, logging every 2 steps (so the interruption falls between
two logging steps and the not-yet-logged sums must be carried over by the checkpoint).
"""

from __future__ import annotations

import os

import pytest
import torch

from _reliability import StopAt, make_trainer, max_diff, weights
from orpo.training.reliability.checkpoint import MANIFEST_NAME, verify_checkpoint

COMMON = {"max_steps": 9, "logging_steps": 2}  # 24 pairs / 4 per step: 6 steps per epoch


def test_same_seed_gives_identical_losses(tokenizer, tmp_path):
    runs = []
    for name in ("a", "b"):
        trainer = make_trainer(tokenizer, tmp_path / name, max_steps=4, save_strategy="no")
        trainer.train()
        runs.append((trainer.recorder.logs, weights(trainer.model)))
    (logs_a, weights_a), (logs_b, weights_b) = runs
    assert len(logs_a) == 4
    assert logs_a == logs_b
    assert max_diff(weights_a, weights_b) == 0.0


@pytest.mark.parametrize(
    ("peft", "stop"),
    [(False, 3), (True, 5), (False, 6)],
    ids=["full-mid-epoch", "lora-mid-epoch", "full-epoch-boundary"],
)
def test_interrupted_run_resumes_exactly(tokenizer, tmp_path, peft, stop):
    straight = make_trainer(tokenizer, tmp_path / "straight", peft=peft, **COMMON)
    straight.train()

    out = tmp_path / "resumed"
    first = make_trainer(tokenizer, out, peft=peft, callbacks=[StopAt(stop)], **COMMON)
    first.train()
    assert first.state.global_step == stop
    checkpoint = out / f"checkpoint-{stop}"
    assert (checkpoint / MANIFEST_NAME).is_file()
    assert verify_checkpoint(str(checkpoint)) == []

    # A full fine-tune's weights come from the checkpoint (so start from other ones); a LoRA checkpoint holds
    # the adapter only and resumes on the same base model.
    second = make_trainer(tokenizer, out, peft=peft, model_seed=0 if peft else 123, **COMMON)
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == COMMON["max_steps"]

    combined = first.recorder.logs + second.recorder.logs
    assert [entry["step"] for entry in combined] == [entry["step"] for entry in straight.recorder.logs]
    for expected, got in zip(straight.recorder.logs, combined, strict=True):
        assert got == expected, f"step {expected['step']}"
    assert max_diff(weights(straight.model, trainable_only=peft), weights(second.model, trainable_only=peft)) == 0.0
    if peft:  # the frozen base is untouched and identical too
        assert max_diff(weights(straight.model), weights(second.model)) == 0.0


def test_resume_with_explicit_path_and_without_loop_state(tokenizer, tmp_path):
    """A checkpoint without orpo's loop state (e.g. written by plain Trainer) still resumes the weights exactly."""
    straight = make_trainer(tokenizer, tmp_path / "straight", max_steps=6, logging_steps=3)
    straight.train()
    out = tmp_path / "resumed"
    first = make_trainer(tokenizer, out, max_steps=6, logging_steps=3, callbacks=[StopAt(3)])
    first.train()
    os.remove(out / "checkpoint-3" / "orpo_state.json")
    os.remove(out / "checkpoint-3" / MANIFEST_NAME)
    second = make_trainer(tokenizer, out, max_steps=6, logging_steps=3)
    second.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    assert max_diff(weights(straight.model), weights(second.model)) == 0.0
    assert second.recorder.logs[-1] == straight.recorder.logs[-1]


def test_loop_state_is_saved_per_checkpoint(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, max_steps=6, logging_steps=2, callbacks=[StopAt(3)])
    trainer.train()
    import json

    state = json.loads((tmp_path / "checkpoint-3" / "orpo_state.json").read_text())
    assert state["global_step"] == 3
    assert state["globalstep_last_logged"] == 2  # step 3 was not logged yet ...
    assert state["tr_loss"] > 0 and state["metric_sums"]["pairs"] == 4.0  # ... its sums travel with the checkpoint
    assert torch.isfinite(torch.tensor(list(state["metric_sums"].values()))).all()
