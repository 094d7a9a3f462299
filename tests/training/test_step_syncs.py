"""No host syncs in orpo's part of a training step (issue 11): the loss, the guarded optimizer step and
orpo's callbacks never read a device value back, so on an accelerator the host keeps queuing work.

:func:`orpo.training.reliability.host_syncs.detect_host_syncs` sees every value read, data-dependent shape and explicit
synchronize made from Python; on CPU the calls are the same as on a GPU, so these tests prove it
wherever they run.  Only syncs made from orpo's code count (``within=WATCHED``): transformers' loop reads
the loss and gradient norm back each step, and its sdpa mask code checks a padded batch's mask for
padding (``masking_utils``) in every forward; those are not orpo's code.  Each test also shows its watch
catches a sync put back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

import orpo
import orpo.training.trainer
from _reliability import make_trainer
from orpo.scoring.layouts import Layout
from orpo.training.callbacks import LineProgressCallback, TqdmProgressCallback
from orpo.training.health import HealthCallback
from orpo.training.reliability.guard import NonFiniteGuard
from orpo.training.reliability.host_syncs import detect_host_syncs
from orpo.training.reliability.optimizer import GatedOptimizer

#: The batch layouts a step is checked with (ORPOConfig overrides): every layout, the default (auto) included.
LAYOUTS = [
    pytest.param({"layout": "padded"}, id="padded"),
    pytest.param({"layout": "padding_free"}, id="padding-free"),
    pytest.param({"layout": "shared_prompt"}, id="shared-prompt"),
    pytest.param({}, id="auto"),
]

#: The code whose syncs count: orpo's package, and this file (where the tests put a sync back).
PACKAGE = os.path.dirname(orpo.__file__) + os.sep
WATCHED = (PACKAGE, __file__)
HEADS = [pytest.param(True, id="fused-head"), pytest.param(False, id="plain-head")]


def _padded_batch(trainer: Any) -> dict[str, Any]:
    """Four pairs of different lengths, one with an empty rejected completion (left out of the loss),
    in the trainer's layout."""
    features = [trainer.train_dataset[i] for i in range(4)]
    features[2] = {**features[2], "rejected_input_ids": []}
    batch = trainer.data_collator(features)
    if batch["orpo_layout"] is Layout.PADDED:
        assert batch["input_ids"].shape[0] == 8 and (batch["attention_mask"] == 0).any()  # padded rows
    else:
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no mask
    return batch


def _run_first_batch_checks(trainer: Any) -> None:
    """The scorer's one-time checks (the fused head and a row layout against the plain, padded way)
    compare results on the host, on the first batch only: run them before the watch starts."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        trainer.scorer(trainer.model, batch)
    assert trainer.scorer.uses_fused is not None


def _compute_loss_syncs(tokenizer: Any, tmp_path: Any, layout: dict[str, Any], fused: bool) -> list[str]:
    """The syncs orpo's code makes in compute_loss and its backward, for the padded batch above."""
    trainer = make_trainer(tokenizer, tmp_path, fused_lm_head=fused, **layout)
    batch = _padded_batch(trainer)
    trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))  # the window's counts, as the loop sets them
    model = trainer.model.train()
    reference = trainer.compute_loss(model, batch).detach()
    trainer.metric_windows.reset("train")
    with detect_host_syncs(raise_on_sync=False, within=WATCHED) as syncs:
        loss = trainer.compute_loss(model, batch)
        loss.backward()
    assert torch.equal(loss.detach(), reference) and torch.isfinite(reference)
    assert trainer._pop_metrics("train")["nll_loss"] > 0  # the metrics were recorded, on device
    return syncs.events


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fused", HEADS)
def test_compute_loss_and_backward_make_no_host_sync(tokenizer, tmp_path, layout, fused):
    assert _compute_loss_syncs(tokenizer, tmp_path, layout, fused) == []


def test_a_sync_in_compute_loss_is_caught(tokenizer, tmp_path, monkeypatch):
    trainer = make_trainer(tokenizer, tmp_path)
    batch = _padded_batch(trainer)
    pair_logps = orpo.training.trainer.pair_logps

    def checking(*args: Any, **kwargs: Any) -> Any:
        pairs = pair_logps(*args, **kwargs)
        bool(pairs.valid.all())  # what compute_loss did before issue 11
        return pairs

    _run_first_batch_checks(trainer)
    monkeypatch.setattr(orpo.training.trainer, "pair_logps", checking)
    with detect_host_syncs(raise_on_sync=False, within=WATCHED) as syncs:
        trainer.compute_loss(trainer.model.train(), batch)
    assert [event.split(":")[0] for event in syncs.events] == [f"Tensor.__bool__ at {__file__}"]


# ---- a whole run: orpo's code in every step, watched ------------------------------------------------
PER_STEP_HOOKS = ("on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end")


class SyncWatch(TrainerCallback):
    """Runs orpo's per-step code under the detector (counting, not raising: the run goes on) and keeps
    ``(step, where, sync)`` for every sync and ``(step, where)`` for every call."""

    def __init__(self) -> None:
        self.step = 0
        self.calls: list[tuple[int, str]] = []
        self.syncs: list[tuple[int, str, str]] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step = state.global_step + 1  # callbacks passed to the trainer run before orpo's own

    def wrap(self, function: Callable[..., Any], where: str) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            with detect_host_syncs(raise_on_sync=False, within=WATCHED) as syncs:
                result = function(*args, **kwargs)
            self.calls.append((self.step, where))
            self.syncs.extend((self.step, where, event) for event in syncs.events)
            return result

        return watched

    def attach(self, trainer: Any, monkeypatch: Any) -> None:
        trainer.compute_loss = self.wrap(trainer.compute_loss, "compute_loss")
        guard = trainer.reliability.guard
        guard.begin_micro_batch = self.wrap(guard.begin_micro_batch, "guard.begin_micro_batch")
        trainer.reliability.end_micro_batch = self.wrap(trainer.reliability.end_micro_batch, "end_micro_batch")
        monkeypatch.setattr(GatedOptimizer, "step", self.wrap(GatedOptimizer.step, "GatedOptimizer.step"))
        for callback in trainer.callback_handler.callbacks:
            if not type(callback).__module__.startswith("orpo."):
                continue
            for hook in PER_STEP_HOOKS:
                if hook in vars(type(callback)):  # its own code, not TrainerCallback's no-op
                    setattr(callback, hook, self.wrap(getattr(callback, hook), f"{type(callback).__name__}.{hook}"))


#: Steps 2 and 4 log (and 4 ends the run); 1 and 3 do not.
RUN = {"max_steps": 4, "logging_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
QUIET_STEPS = (1, 3)


def _watched_run(tokenizer, tmp_path, monkeypatch, **overrides: Any) -> SyncWatch:
    watch = SyncWatch()
    trainer = make_trainer(tokenizer, tmp_path, callbacks=[watch], **{**RUN, **overrides})
    for callback in (HealthCallback(beta=trainer.args.beta), TqdmProgressCallback(), LineProgressCallback()):
        trainer.add_callback(callback)
    _run_first_batch_checks(trainer)
    watch.attach(trainer, monkeypatch)
    trainer.train()
    assert trainer.state.global_step == 4
    return watch


def _expected_calls(watch: SyncWatch) -> None:
    for step in QUIET_STEPS:
        called = [where for s, where in watch.calls if s == step]
        assert called.count("compute_loss") == 2 and called.count("end_micro_batch") == 2, called
        assert called.count("GatedOptimizer.step") == 1, called
        for hook in ("on_pre_optimizer_step", "on_optimizer_step", "on_step_end"):
            assert f"ReliabilityCallback.{hook}" in called, called
        assert "TqdmProgressCallback.on_step_end" in called, called


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fused", HEADS)
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_training_step_makes_no_host_sync_in_orpos_code(tokenizer, tmp_path, monkeypatch, layout, fused, policy):
    """Default optimizer (torch's fused AdamW): the guard's gate holds an update back on the device."""
    watch = _watched_run(tokenizer, tmp_path, monkeypatch, on_nonfinite=policy, fused_lm_head=fused, **layout)
    _expected_calls(watch)
    assert [sync for sync in watch.syncs if sync[0] in QUIET_STEPS] == []
    # Logging steps read the flags back through a DeferredRead, which is not a wait: nothing counted there either.
    assert watch.syncs == []


def test_an_optimizer_without_a_device_switch_reads_the_gate_once_per_step(tokenizer, tmp_path, monkeypatch):
    """torch's SGD (unfused) cannot skip on the device: the gate is read on the host, and only there."""
    watch = _watched_run(tokenizer, tmp_path, monkeypatch, optim="sgd")
    _expected_calls(watch)
    quiet = [(step, where, sync.split(" at ")[0]) for step, where, sync in watch.syncs if step in QUIET_STEPS]
    assert quiet == [(step, "GatedOptimizer.step", "Tensor.__bool__") for step in QUIET_STEPS]


def test_a_sync_in_the_guard_is_caught(tokenizer, tmp_path, monkeypatch):
    local_flags = NonFiniteGuard.local_flags

    def reading(self: NonFiniteGuard, device: Any) -> torch.Tensor:
        flags = local_flags(self, device)
        flags.tolist()  # what the callback did before issue 11
        return flags

    monkeypatch.setattr(NonFiniteGuard, "local_flags", reading)
    watch = _watched_run(tokenizer, tmp_path, monkeypatch)
    caught = [(step, where) for step, where, sync in watch.syncs if "Tensor.tolist" in sync]
    assert caught == [(step, "ReliabilityCallback.on_pre_optimizer_step") for step in (1, 2, 3, 4)]
