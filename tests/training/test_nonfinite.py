"""NaN/inf guard: a non-finite loss or gradient never reaches the weights.

A forward hook turns the embeddings of one "poisoned" dataset row into NaN (as a bad row or
an overflow would); a gradient hook makes one parameter's gradient infinite at one step.
"""

from __future__ import annotations

import logging
import re
import signal

import pytest
import torch
from transformers import TrainerCallback

from _reliability import make_trainer, max_diff, weights
from orpo.training.reliability import NonFiniteError, TrainingInterrupted

POISON_ROW = 5
MARK = "<|im_start|>"  # a special token no other row contains


def rows() -> list[dict[str, str]]:
    data = [
        {"prompt": f"Question {i} about the sky?", "chosen": f" yes sky {i}", "rejected": f" no grass {i}"}
        for i in range(8)
    ]
    data[POISON_ROW]["prompt"] = f"Question {MARK} about the sky?"
    return data


def poison(trainer, tokenizer) -> None:
    mark = tokenizer.convert_tokens_to_ids(MARK)

    def hook(_module, args, output):
        bad = (args[0] == mark).any(-1)
        if bad.any():
            output = output.clone()
            output[bad] = float("nan")
        return output

    trainer.model.get_input_embeddings().register_forward_hook(hook)


class Snapshots(TrainerCallback):
    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.by_step = {0: (weights(trainer.model), 0)}

    def on_step_end(self, args, state, control, **kwargs):
        self.by_step[state.global_step] = (weights(self.trainer.model), self.trainer.reliability.guard.skipped)


RUN = {"max_steps": 4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "save_strategy": "no"}


def test_nonfinite_loss_stops_with_a_report(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, data=rows(), **RUN)
    poison(trainer, tokenizer)
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    step = trainer.state.global_step + 1
    assert message.startswith("non-finite loss") and f"at optimizer step {step} " in message
    assert f"chosen of row {POISON_ROW}" in message and f"rejected of row {POISON_ROW}" in message
    assert "dataset rows [" in message and MARK in message  # the rows of the micro-batch, and a preview
    assert "The update was not applied and training stopped" in message and "on_nonfinite='skip'" in message
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_batches_are_skipped_and_counted(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, data=rows(), on_nonfinite="skip", **RUN)
    poison(trainer, tokenizer)
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    assert trainer.state.global_step == 4
    # 2 steps per epoch, 2 epochs, the poisoned row once per epoch.
    assert trainer.recorder.logs[-1]["skipped_batches"] == 2
    assert [log["skipped_batches"] for log in trainer.recorder.logs] == sorted(
        log["skipped_batches"] for log in trainer.recorder.logs
    )
    for step in range(1, 5):
        before, skipped_before = snapshots.by_step[step - 1]
        after, skipped_after = snapshots.by_step[step]
        if skipped_after > skipped_before:
            assert max_diff(before, after) == 0.0, f"step {step} was skipped but changed the weights"
        else:
            assert max_diff(before, after) > 0.0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    for log in trainer.recorder.logs:  # metrics leave out the non-finite micro-batch
        for key in ("nll_loss", "rewards/chosen", "rewards/margins", "log_odds_ratio"):
            assert torch.isfinite(torch.tensor(log[key])), (log["step"], key)


class InfGradientAt(TrainerCallback):
    """Make one parameter's gradient infinite while computing optimizer step ``step``."""

    def __init__(self, param: torch.nn.Parameter, step: int) -> None:
        self.active = False
        self.step = step
        param.register_hook(lambda grad: grad * float("inf") if self.active else grad)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 == self.step

    def on_step_end(self, args, state, control, **kwargs):
        self.active = False


def test_nonfinite_gradient_names_step_and_parameter(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, **RUN)
    name = "model.layers.0.mlp.down_proj.weight"
    trainer.add_callback(InfGradientAt(dict(trainer.model.named_parameters())[name], step=3))
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    assert trainer.state.global_step == 2
    assert "non-finite gradient at optimizer step 3" in message
    assert "gradient norm" in message
    assert "micro-batch 1/2 (dataset rows [" in message and name in message


def test_nonfinite_gradient_skipped(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, on_nonfinite="skip", **RUN)
    param = dict(trainer.model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    trainer.add_callback(InfGradientAt(param, step=2))
    trainer.train()
    assert trainer.state.global_step == 4
    assert trainer.recorder.logs[-1]["skipped_batches"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# ---- between logs: the flags are read back one step late, and nothing held back is applied meanwhile ---------
QUIET = {**RUN, "logging_steps": 100}  # only the last step logs


class StepsBegun(TrainerCallback):
    def __init__(self) -> None:
        self.last = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.last = state.global_step + 1


def test_nonfinite_loss_between_logs_stops_a_step_later_with_nothing_applied(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, data=rows(), **QUIET)
    poison(trainer, tokenizer)
    snapshots, begun = Snapshots(trainer), StepsBegun()
    trainer.add_callback(snapshots)
    trainer.add_callback(begun)
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    bad = trainer.state.global_step + 1  # the state counts the updates applied, as when the check ran in the step
    assert bad < 4 and begun.last == bad + 1  # read back in the next step, before its update
    assert message.startswith("non-finite loss") and f"at optimizer step {bad} " in message
    assert f"chosen of row {POISON_ROW}" in message and "The update was not applied" in message
    assert max_diff(weights(trainer.model), snapshots.by_step[bad - 1][0]) == 0.0  # neither update applied


def test_nonfinite_batches_between_logs_are_skipped_and_counted(tokenizer, tmp_path, caplog):
    trainer = make_trainer(tokenizer, tmp_path, data=rows(), on_nonfinite="skip", **QUIET)
    poison(trainer, tokenizer)
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    with caplog.at_level(logging.WARNING, logger="orpo.training.reliability.guard"):
        trainer.train()
    skipped = [int(step) for step in re.findall(r"non-finite loss[a-z ]* at optimizer step (\d+) ", caplog.text)]
    assert len(skipped) == 2 and trainer.recorder.logs[-1]["skipped_batches"] == 2
    for step in range(1, 5):
        change = max_diff(snapshots.by_step[step - 1][0], snapshots.by_step[step][0])
        assert (change == 0.0) == (step in skipped), (step, skipped, change)


def test_a_late_diagnosis_leaves_the_next_steps_gradients_alone(tokenizer, tmp_path):
    """Read one step late, the report re-runs the bad step's backward while the next step's gradients wait:
    they are put back, so the run ends with the weights of one whose report came in the step itself."""
    final = {}
    for name, logging_steps in (("same step", 1), ("a step late", 100)):
        trainer = make_trainer(
            tokenizer, tmp_path / str(logging_steps), on_nonfinite="skip", **{**RUN, "logging_steps": logging_steps}
        )
        param = dict(trainer.model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
        trainer.add_callback(InfGradientAt(param, step=2))
        trainer.train()
        assert trainer.reliability.guard.skipped == 1, name
        final[name] = weights(trainer.model)
    assert max_diff(final["same step"], final["a step late"]) == 0.0


class SignalAt(TrainerCallback):
    """A SIGTERM arriving during optimizer step ``step``; records what each checkpoint saved as skipped."""

    def __init__(self, trainer, step: int) -> None:
        self.trainer, self.step = trainer, step
        self.saved_skipped: list[int] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.trainer.reliability.signals.requested = signal.SIGTERM

    def on_save(self, args, state, control, **kwargs):
        self.saved_skipped.append(self.trainer.reliability.guard.skipped)


def test_a_signal_between_logs_saves_the_skip_it_made(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, on_nonfinite="skip", **QUIET)
    param = dict(trainer.model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    trainer.add_callback(InfGradientAt(param, step=2))
    signal_at = SignalAt(trainer, step=2)
    trainer.add_callback(signal_at)
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    assert trainer.state.global_step == 2 and signal_at.saved_skipped == [1]
