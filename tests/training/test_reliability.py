"""The reliability objects in isolation: the guard's decisions, the gated optimizer, the checkpoint
commit, the signal handler, the loop state and the choice of checkpoint to resume from."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch
from safetensors.torch import save_file

from orpo.training.metrics import MetricWindows
from orpo.training.reliability import NonFiniteError, TrainingInterrupted
from orpo.training.reliability.checkpoint import (
    MANIFEST_NAME,
    TRAINER_STATE_NAME,
    CheckpointError,
    format_bytes,
    free_bytes,
    verify_checkpoint,
)
from orpo.training.reliability.commit import CheckpointCommitter
from orpo.training.reliability.diagnose import ROW_INDEX_COLUMN, Diagnosis
from orpo.training.reliability.guard import NonFiniteGuard, decide
from orpo.training.reliability.host_syncs import detect_host_syncs
from orpo.training.reliability.optimizer import GatedOptimizer
from orpo.training.reliability.preflight import check_batch_size, with_row_index
from orpo.training.reliability.resume import LoopState, resolve_resume
from orpo.training.reliability.signals import SignalHandler

NAN, INF = float("nan"), float("inf")


# ---- the guard ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("loss_bad", "grad_bad", "policy", "verdict"),
    [
        (False, False, "error", "apply"),
        (False, False, "skip", "apply"),
        (True, False, "error", "stop"),
        (False, True, "error", "stop"),
        (True, True, "error", "stop"),
        (True, False, "skip", "skip"),
        (False, True, "skip", "skip"),
        (True, True, "skip", "skip"),
    ],
)
def test_decision_table(loss_bad, grad_bad, policy, verdict):
    assert decide(loss_bad, grad_bad, policy) == verdict


def _no_rerun(*_args):
    raise AssertionError("diagnose=False must not re-run micro-batches")


def guard(policy="error", windows=None, **kwargs):
    windows = windows or MetricWindows()
    diagnosis = Diagnosis(lambda: None, lambda: torch.nn.Linear(1, 1), _no_rerun, _no_rerun, windows)
    return NonFiniteGuard(policy, windows, diagnosis, diagnose=False, **kwargs)


def batch(*rows):
    return {ROW_INDEX_COLUMN: torch.tensor(rows)}


def feed(g, losses, gradients=None):
    for i, loss in enumerate(losses):
        g.begin_micro_batch()
        last = i == len(losses) - 1
        g.end_micro_batch(torch.tensor(loss), batch(2 * i, 2 * i + 1), gradients if last else None)
    flags = g.local_flags("cpu")
    g.close_window(flags)  # the gate now holds the update if a flag is set; judge() reports on the flags
    return flags.tolist()


def param_with_grad(value):
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.tensor([1.0, value, 2.0])
    return param


def test_finite_window_is_applied():
    g = guard()
    assert feed(g, [0.5, 0.7], [param_with_grad(1.0)]) == [0.0, 0.0]
    g.judge(False, False, step=1, epoch=0.0)
    assert g.allow_step() and g.skipped == 0


def test_nonfinite_loss_stops_naming_the_micro_batch_and_rows():
    g = guard()
    assert feed(g, [0.5, NAN]) == [1.0, 0.0]
    with pytest.raises(NonFiniteError) as info:
        g.judge(True, False, step=3, epoch=1.25)
    message = str(info.value)
    assert message.startswith("non-finite loss at optimizer step 3 (epoch 1.250)\n")
    assert "  micro-batch 2/2: loss nan; dataset rows [2, 3]" in message
    assert "micro-batch 1/2" not in message  # the finite one is not named
    assert "The update was not applied and training stopped" in message


def test_nonfinite_gradient_is_skipped_and_counted(caplog):
    g = guard("skip")
    assert feed(g, [0.5, 0.7], [param_with_grad(INF)]) == [0.0, 1.0]
    caplog.set_level(logging.WARNING)
    g.judge(False, True, step=2, epoch=0.5)
    assert not g.allow_step() and g.skipped == 1
    assert "non-finite gradient at optimizer step 2" in caplog.text and "gradient norm inf" in caplog.text
    assert "rows of this step: [0, 1, 2, 3]" in caplog.text and "1 skipped so far" in caplog.text
    g.step_done()
    assert g.allow_step()
    assert g.log_fields({"loss": 1.0}) == {"skipped_batches": 1}
    assert g.log_fields({"eval_loss": 1.0, "loss": 1.0}) == {}


def test_gradients_are_not_read_where_a_loss_scaler_owns_overflows():
    g = guard(check_gradients=False)
    assert feed(g, [0.5], [param_with_grad(INF)]) == [0.0, 0.0]


def test_another_process_flag_stops_this_one_too():
    g = guard(world_size=2, process_index=1)
    assert feed(g, [0.5]) == [0.0, 0.0]
    with pytest.raises(NonFiniteError, match=r"^non-finite value on another process at optimizer step 4 on process 1"):
        g.judge(True, False, step=4, epoch=0.0)


def test_deepspeed_stops_whatever_the_policy():
    g = guard("skip", deepspeed=True, last_checkpoint=lambda: "out/checkpoint-6")
    feed(g, [NAN])
    with pytest.raises(NonFiniteError, match=r"DeepSpeed applies the update inside backward.*out/checkpoint-6"):
        g.judge(True, False, step=7, epoch=0.0)


def test_skip_leaves_the_nonfinite_micro_batch_out_of_the_metrics():
    windows = MetricWindows()
    g = guard("skip", windows)
    for loss, value in ((0.5, 2.0), (NAN, 100.0), (0.7, 3.0)):
        g.begin_micro_batch()
        windows.sums["train"]["pairs"] = windows.sums["train"]["pairs"] + torch.tensor(value, dtype=torch.float64)
        g.end_micro_batch(torch.tensor(loss), batch(0))
    assert windows.export("train") == {"pairs": 5.0}


# ---- the gated optimizer --------------------------------------------------------------------------
def _adam_with_gate(open_gate):
    param = torch.nn.Parameter(torch.ones(4))
    inner = torch.optim.AdamW([param], lr=0.1, weight_decay=0.5)
    return param, inner, GatedOptimizer(inner, lambda: open_gate[0])


def test_a_held_step_leaves_weights_and_adam_state_untouched():
    gate = [False]
    param, inner, gated = _adam_with_gate(gate)
    param.grad = torch.ones(4)
    gated.step()
    assert torch.equal(param.detach(), torch.ones(4)) and inner.state == {}
    gate[0] = True
    gated.step()
    assert not torch.equal(param.detach(), torch.ones(4)) and int(inner.state[param]["step"]) == 1


def test_gated_optimizer_under_an_lr_scheduler():
    """(Under accelerate's wrapper inside a real Trainer: tests/internals/test_internals.py.)"""
    gate = [True]
    param, inner, gated = _adam_with_gate(gate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(gated, lambda step: 0.5**step)
    for held in (False, True, False):
        gate[0] = not held
        param.grad = torch.ones(4)
        gated.step()
        scheduler.step()
        gated.zero_grad()
    assert param.grad is None
    assert int(inner.state[param]["step"]) == 2  # the held step never reached AdamW
    assert inner.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)  # ... but the schedule advanced
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.ones(4))], lr=0.1)
    GatedOptimizer(restored, lambda: True).load_state_dict(gated.state_dict())
    assert int(restored.state_dict()["state"][0]["step"]) == 2


def test_a_gate_on_the_device_holds_a_fused_step_without_reading_it():
    """torch's fused AdamW skips on the device (found_inf): weights, moments and step count stay, no sync."""
    allowed = [torch.tensor(False)]
    param = torch.nn.Parameter(torch.ones(4))
    inner = torch.optim.AdamW([param], lr=0.1, weight_decay=0.5, fused=True)
    gated = GatedOptimizer(inner, lambda: allowed[0])
    assert gated.skips_on_device
    param.grad = torch.ones(4)
    with detect_host_syncs():
        gated.step()
    assert torch.equal(param.detach(), torch.ones(4)) and not hasattr(inner, "found_inf")
    state = inner.state[param]  # created at its initial values by the fused step
    assert float(state["step"]) == 0.0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    allowed[0] = torch.tensor(True)
    gated.step()
    reference = torch.nn.Parameter(torch.ones(4))
    reference.grad = torch.ones(4)
    torch.optim.AdamW([reference], lr=0.1, weight_decay=0.5).step()  # one step, as if the held one never was
    assert torch.equal(param.detach(), reference.detach()) and float(state["step"]) == 1.0


def test_a_gate_on_the_device_is_read_for_an_optimizer_without_a_device_switch():
    allowed = [torch.tensor(False)]
    param, inner, gated = _adam_with_gate(allowed)  # unfused AdamW
    assert not gated.skips_on_device
    param.grad = torch.ones(4)
    with detect_host_syncs(raise_on_sync=False) as syncs:
        gated.step()
    assert [event.split(" at ")[0] for event in syncs.events] == ["Tensor.__bool__"]
    assert torch.equal(param.detach(), torch.ones(4)) and inner.state == {}


def test_the_guard_gate_follows_the_closed_windows_flags():
    g = guard("skip")
    assert g.allow_step() is True  # no window closed: nothing to hold
    g.end_micro_batch(torch.tensor(NAN), batch(0))
    with detect_host_syncs():  # decided on the device
        g.close_window(g.local_flags(torch.device("cpu")))
        allowed = g.allow_step()
    assert isinstance(allowed, torch.Tensor) and not allowed
    g.step_done()
    assert g.allow_step() is True


# ---- the checkpoint commit ------------------------------------------------------------------------
def _write_complete(staging):
    os.makedirs(staging, exist_ok=True)
    save_file({"w": torch.ones(8)}, os.path.join(staging, "model.safetensors"))
    with open(os.path.join(staging, TRAINER_STATE_NAME), "w") as handle:
        json.dump({"global_step": 3}, handle)


def test_commit_renames_a_verified_checkpoint(tmp_path):
    committer = CheckpointCommitter(barrier=lambda: None, is_main=True, resume_hint=lambda: "resume with: HINT")
    final = committer.save(str(tmp_path), 3, _write_complete)
    assert final == str(tmp_path / "checkpoint-3") and committer.last == final
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]
    assert json.loads((tmp_path / "checkpoint-3" / MANIFEST_NAME).read_text())["global_step"] == 3
    assert verify_checkpoint(final) == []
    committer.save(str(tmp_path), 3, _write_complete)  # saving the same step again replaces it whole
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"] and verify_checkpoint(final) == []


def test_failed_write_leaves_nothing_and_names_the_last_checkpoint(tmp_path):
    committer = CheckpointCommitter(barrier=lambda: None, is_main=True, resume_hint=lambda: "resume with: HINT")
    committer.save(str(tmp_path), 2, _write_complete)

    def disk_full(staging):
        _write_complete(staging)
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError) as info:
        committer.save(str(tmp_path), 4, disk_full)
    assert str(info.value) == (
        f"could not write checkpoint {tmp_path / 'checkpoint-4'} (its partial files were removed): no space left on "
        f"the device (the disk holding {tmp_path} has {format_bytes(free_bytes(str(tmp_path)))} free). The last "
        f"complete checkpoint is {tmp_path / 'checkpoint-2'}. Free space or save less (save_total_limit, "
        "save_only_model=True), then resume with: HINT"
    )
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"] and committer.last.endswith("checkpoint-2")


def test_torch_writer_failing_mid_file_is_caught_as_a_full_disk(tmp_path):
    """torch.save on a full disk raises RuntimeError("[enforce fail at inline_container.cc...] unexpected pos")."""
    previous_run = CheckpointCommitter(barrier=lambda: None, is_main=True, resume_hint=lambda: "resume with: HINT")
    previous_run.save(str(tmp_path), 2, _write_complete)
    committer = CheckpointCommitter(barrier=lambda: None, is_main=True, resume_hint=lambda: "resume with: HINT")

    def torch_full_disk(staging):
        _write_complete(staging)
        with open(os.path.join(staging, "optimizer.pt"), "wb") as handle:
            handle.write(b"PK\x03\x04 half a file")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4928 vs 4816")

    with pytest.raises(CheckpointError) as info:
        committer.save(str(tmp_path), 4, torch_full_disk)
    message = str(info.value)
    assert message.startswith(
        f"could not write checkpoint {tmp_path / 'checkpoint-4'} (its partial files were removed): torch's file "
        "writer stopped mid-file (RuntimeError: [enforce fail at inline_container.cc:664] . unexpected pos 4928 "
        f"vs 4816): the disk is probably full ({tmp_path} has "
    )
    # The checkpoint of an earlier run is found on disk; nothing of the failed save is left.
    assert message.endswith(
        f"The last complete checkpoint is {tmp_path / 'checkpoint-2'}. Free space or save less "
        "(save_total_limit, save_only_model=True), then resume with: HINT"
    )
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"] and committer.last is None


def test_an_interrupt_during_a_save_leaves_no_partial_folder(tmp_path):
    committer = CheckpointCommitter(barrier=lambda: None, is_main=True, resume_hint=lambda: "resume with: HINT")

    def interrupted(staging):
        _write_complete(staging)
        raise TrainingInterrupted(2, None, None)

    with pytest.raises(TrainingInterrupted):
        committer.save(str(tmp_path), 4, interrupted)
    assert os.listdir(tmp_path) == []


def test_a_save_warns_when_the_disk_has_less_room_than_the_last_checkpoint(tmp_path, monkeypatch, caplog):
    from orpo.training.reliability import commit

    committer = CheckpointCommitter(barrier=lambda: None, is_main=True, resume_hint=lambda: "resume with: HINT")
    committer.save(str(tmp_path), 2, _write_complete)
    size = sum(f.stat().st_size for f in (tmp_path / "checkpoint-2").iterdir())
    assert committer.size == size > 0
    monkeypatch.setattr(commit, "free_bytes", lambda path: size - 1)
    with caplog.at_level("WARNING", logger="orpo.training.reliability.commit"):
        committer.save(str(tmp_path), 4, _write_complete)
    assert caplog.messages == [
        f"the disk holding {tmp_path} has {format_bytes(size - 1)} free but the last checkpoint took "
        f"{format_bytes(size)}: this save will probably fail"
    ]


def test_sizes_read_as_people_read_them():
    assert [format_bytes(n) for n in (0, 999, 1000, 4_812_000, 12_100_000_000, 3.2e12)] == [
        "0 B",
        "999 B",
        "1.0 KB",
        "4.8 MB",
        "12.1 GB",
        "3200.0 GB",
    ]


def test_incomplete_write_fails_verification(tmp_path):
    committer = CheckpointCommitter(barrier=lambda: None, is_main=True, resume_hint=lambda: "resume with: HINT")

    def no_weights(staging):
        os.makedirs(staging)
        (tmp_path / "tmp-checkpoint-5" / TRAINER_STATE_NAME).write_text("{}")

    with pytest.raises(CheckpointError, match=r"step 5 failed verification: no model or adapter weights"):
        committer.save(str(tmp_path), 5, no_weights)
    assert os.listdir(tmp_path) == [] and committer.last is None


# ---- signals ----------------------------------------------------------------------------------------
def test_signal_is_recorded_and_handlers_restored():
    handler = SignalHandler()
    before = signal.getsignal(signal.SIGTERM)
    with handler.installed():
        signal.raise_signal(signal.SIGTERM)
        assert handler.requested == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    handler.agreed = True
    with pytest.raises(TrainingInterrupted) as info:
        handler.finish(global_step=3, max_steps=10, checkpoint="out/checkpoint-3")
    assert info.value.code == 143 and info.value.checkpoint == "out/checkpoint-3"
    assert str(info.value) == "training interrupted by SIGTERM at step 3; checkpoint: out/checkpoint-3"
    handler.finish(global_step=10, max_steps=10, checkpoint=None)  # the run had finished: no exception


def test_a_second_signal_stops_at_once_and_says_so_truthfully(caplog):
    handler = SignalHandler(
        lambda: "out/checkpoint-2", lambda: "resume with: orpo train ... --resume-from-checkpoint latest"
    )
    before = signal.getsignal(signal.SIGINT)
    caplog.set_level(logging.WARNING, logger="orpo.training.reliability.signals")
    with pytest.raises(TrainingInterrupted) as info, handler.installed():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        pytest.fail("the second signal did not stop at once")  # pragma: no cover
    assert signal.getsignal(signal.SIGINT) is before
    assert info.value.code == 130 and info.value.global_step is None and info.value.checkpoint == "out/checkpoint-2"
    assert str(info.value) == "training stopped at once by a second SIGINT; last complete checkpoint: out/checkpoint-2"
    assert caplog.messages[1] == (
        "received SIGINT again: stopping at once, without a checkpoint of this step (the last complete checkpoint "
        "is out/checkpoint-2; resume with: orpo train ... --resume-from-checkpoint latest)"
    )
    assert not any("saved" in message for message in caplog.messages)


def test_the_stop_message_names_a_checkpoint_only_if_this_step_saved_one(caplog):
    handler = SignalHandler(lambda: "out/checkpoint-2", lambda: "resume with: HINT")
    caplog.set_level(logging.WARNING, logger="orpo.training.reliability.signals")
    handler.requested, handler.agreed = signal.SIGTERM, True
    with pytest.raises(TrainingInterrupted):
        handler.finish(global_step=3, max_steps=10, checkpoint="out/checkpoint-3")
    with pytest.raises(TrainingInterrupted):
        handler.finish(global_step=5, max_steps=10, checkpoint="out/checkpoint-3")
    assert caplog.messages == [
        "training stopped by SIGTERM at step 3/10; checkpoint saved to out/checkpoint-3. To continue, resume with: HINT.",
        "training stopped by SIGTERM at step 5/10; no checkpoint of this step was saved; the last complete one is "
        "out/checkpoint-2. To continue, resume with: HINT.",
    ]


def test_handlers_left_alone_when_disabled():
    handler = SignalHandler()
    before = signal.getsignal(signal.SIGINT)
    with handler.installed(enabled=False):
        assert signal.getsignal(signal.SIGINT) is before
    handler.finish(global_step=1, max_steps=10, checkpoint=None)  # nothing received: nothing raised


# ---- loop state and resume --------------------------------------------------------------------------
def test_loop_state_round_trip_per_process(tmp_path):
    state = LoopState(
        global_step=5, tr_loss=1.5, globalstep_last_logged=4, metric_sums={"pairs": 8.0}, skipped_batches=1
    )
    state.save(str(tmp_path), world_size=2, process_index=1)
    assert os.listdir(tmp_path) == ["orpo_state_1.json"]
    assert LoopState.load(str(tmp_path), 5, world_size=2, process_index=1) == state
    assert LoopState.load(str(tmp_path), 6, world_size=2, process_index=1) is None  # another step's state
    assert LoopState.load(str(tmp_path), 5, world_size=2, process_index=0) is None  # another process's


def test_resume_words_and_paths(tmp_path):
    committer = CheckpointCommitter(barrier=lambda: None, is_main=True, resume_hint=lambda: "resume with: HINT")
    committer.save(str(tmp_path), 2, _write_complete)
    committer.save(str(tmp_path), 4, _write_complete)
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"\x00" * 16)
    assert resolve_resume("latest", str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert resolve_resume("false", str(tmp_path)) is None and resolve_resume(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-4: .*model.safetensors"):
        resolve_resume(str(tmp_path / "checkpoint-4"), str(tmp_path))


# ---- preflight -------------------------------------------------------------------------------------
def test_batch_size_check_and_row_index():
    import datasets

    from orpo.scoring.collate import ORPODataCollator

    with pytest.raises(ValueError, match=r"3 pair\(s\), fewer than one batch of 4"):
        check_batch_size([1, 2, 3], per_step=4, drop_last=True)
    check_batch_size([1, 2, 3, 4], per_step=4, drop_last=True)
    data = datasets.Dataset.from_dict({"prompt": ["a", "b", "c"]})
    indexed = with_row_index(data, ORPODataCollator(pad_token_id=0))
    assert indexed[ROW_INDEX_COLUMN] == [0, 1, 2]
    assert with_row_index(data, lambda features: features) is data  # a collator that would not carry it


def test_the_free_space_warning_gives_real_sizes(tmp_path, monkeypatch, caplog):
    from orpo.training.reliability import preflight

    monkeypatch.setattr(preflight, "free_bytes", lambda path: 1_000)
    with caplog.at_level("WARNING", logger="orpo.training.reliability.preflight"):
        preflight.warn_if_disk_small(str(tmp_path), 4_812_000)
        preflight.warn_if_disk_small(str(tmp_path), 900)  # fits: no warning
    assert caplog.messages == [
        f"output_dir {tmp_path} has 1.0 KB free, a checkpoint of this model needs about 4.8 MB: saving will fail "
        "when the disk is full"
    ]
