"""Atomic checkpoints: staged, verified, renamed; resume skips what is incomplete or damaged."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest

from _reliability import StopAt, make_trainer, max_diff, weights
from orpo.training.reliability.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    check_structure,
    latest_complete_checkpoint,
    verify_checkpoint,
)

RUN = {"max_steps": 6, "save_steps": 2, "logging_steps": 2}


@pytest.fixture(scope="module")
def straight(tokenizer, tmp_path_factory):
    """An uninterrupted 6-step run with checkpoints at 2, 4 and 6."""
    out = tmp_path_factory.mktemp("straight")
    trainer = make_trainer(tokenizer, out, **RUN)
    trainer.train()
    return out, weights(trainer.model)


def _interrupted(tokenizer, out, stop):
    trainer = make_trainer(tokenizer, out, callbacks=[StopAt(stop)], **RUN)
    trainer.train()
    return trainer


def test_checkpoints_are_complete_and_carry_a_manifest(straight):
    out, _ = straight
    names = sorted(os.listdir(out))
    assert names == ["checkpoint-2", "checkpoint-4", "checkpoint-6"], names  # no tmp-* left behind
    for name in names:
        path = out / name
        manifest = json.loads((path / MANIFEST_NAME).read_text())
        assert manifest["global_step"] == int(name.split("-")[1])
        for required in (
            "model.safetensors",
            "optimizer.pt",
            "scheduler.pt",
            "rng_state.pth",
            "trainer_state.json",
            "orpo_state.json",
        ):
            assert required in manifest["files"], required
            assert manifest["files"][required]["size"] == (path / required).stat().st_size
            assert len(manifest["files"][required]["sha256"]) == 64
        assert verify_checkpoint(str(path)) == []


def _flip_bytes(path, offset=-16):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    ["flip-weights", "truncate-optimizer", "delete-trainer-state", "half-written-no-manifest"],
)
def test_resume_skips_damaged_newest_checkpoint(tokenizer, tmp_path, straight, caplog, damage):
    out = tmp_path / "run"
    _interrupted(tokenizer, out, 4)
    newest = out / "checkpoint-4"
    if damage == "flip-weights":  # same size, different content: only the hash notices
        _flip_bytes(newest / "model.safetensors")
    elif damage == "truncate-optimizer":
        data = (newest / "optimizer.pt").read_bytes()
        (newest / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif damage == "delete-trainer-state":
        os.remove(newest / "trainer_state.json")
    else:  # what a non-atomic writer leaves when killed: weights cut short, no manifest
        os.remove(newest / MANIFEST_NAME)
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) - 100])
    assert verify_checkpoint(str(newest)) != []

    caplog.set_level(logging.WARNING)
    resumed = make_trainer(tokenizer, out, **RUN)
    resumed.train(resume_from_checkpoint=True)
    assert "skipping incomplete or damaged checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    assert "resuming from" in caplog.text and "checkpoint-2" in caplog.text
    assert resumed.state.global_step == 6
    # Resuming from step 2 of the same deterministic run reproduces it exactly.
    assert max_diff(weights(resumed.model), straight[1]) == 0.0


def test_leftover_staging_dir_is_ignored_and_removed(tokenizer, tmp_path, straight, caplog):
    """A save killed midway leaves only tmp-checkpoint-N: never resumed from, removed at the next start."""
    out = tmp_path / "run"
    _interrupted(tokenizer, out, 2)
    partial = out / "tmp-checkpoint-4"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    caplog.set_level(logging.WARNING)
    resumed = make_trainer(tokenizer, out, **RUN)
    resumed.train(resume_from_checkpoint="latest")  # as a YAML config or command line spells True
    assert not partial.exists()
    assert "interrupted save" in caplog.text
    assert max_diff(weights(resumed.model), straight[1]) == 0.0


def test_failed_save_leaves_previous_checkpoints_and_no_partial_one(tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = make_trainer(tokenizer, out, **RUN)
    original = trainer._save_rng_state

    def disk_full(output_dir):
        if trainer.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(output_dir)

    monkeypatch.setattr(trainer, "_save_rng_state", disk_full)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint-4 \(its partial files were removed\): no space left on the device .*The last complete "
        r"checkpoint is .*checkpoint-2\. Free space or save less .*then resume with trainer\.train\(resume_from_",
    ):
        trainer.train()
    assert sorted(os.listdir(out)) == ["checkpoint-2"]
    assert verify_checkpoint(str(out / "checkpoint-2")) == []


def test_a_disk_filling_inside_torch_save_is_a_named_error(tokenizer, tmp_path, monkeypatch):
    """torch's zip writer raises RuntimeError, not OSError, when the disk fills mid-file."""
    import torch

    out = tmp_path / "run"
    trainer = make_trainer(tokenizer, out, **RUN)
    trainer.resume_command = "orpo train --config run.yaml --resume-from-checkpoint latest"
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        if trainer.state.global_step == 4 and str(f).endswith("optimizer.pt"):
            with open(f, "wb") as handle:
                handle.write(b"PK\x03\x04" + b"\x00" * 64)  # what was written before the disk filled
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 8576 vs 8464")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(CheckpointError) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith(
        f"could not write checkpoint {out / 'checkpoint-4'} (its partial files were removed): torch's file writer "
        "stopped mid-file (RuntimeError: [enforce fail at inline_container.cc:664] . unexpected pos 8576 vs 8464): "
        f"the disk is probably full ({out} has "
    )
    assert message.endswith(
        f"The last complete checkpoint is {out / 'checkpoint-2'}. Free space or save less (save_total_limit, "
        "save_only_model=True), then resume with: orpo train --config run.yaml --resume-from-checkpoint latest"
    )
    assert sorted(os.listdir(out)) == ["checkpoint-2"]


def test_a_leftover_partial_save_is_removed_before_the_disk_is_checked(tokenizer, tmp_path, monkeypatch):
    """The leftover of a save that filled the disk must not make the next run fail its writability check."""
    import tempfile

    from orpo.training.reliability import preflight

    out = tmp_path / "run"
    _interrupted(tokenizer, out, 2)
    leftover = out / "tmp-checkpoint-4"
    leftover.mkdir()
    (leftover / "optimizer.pt").write_bytes(b"\x00" * 100)
    real = tempfile.NamedTemporaryFile

    def probe(*args, **kwargs):  # the disk is full for as long as the leftover is there
        if any(name.startswith("tmp-") for name in os.listdir(out)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(preflight.tempfile, "NamedTemporaryFile", probe)
    resumed = make_trainer(tokenizer, out, **RUN)
    assert not leftover.exists()
    leftover.mkdir()  # left again between building the trainer and train()
    resumed.train(resume_from_checkpoint=True)
    assert not leftover.exists() and resumed.state.global_step == 6


def test_a_full_disk_is_named_as_such_before_training(tmp_path, monkeypatch):
    from orpo.training.reliability import preflight

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(preflight.tempfile, "NamedTemporaryFile", full)
    with pytest.raises(ValueError, match=r"output_dir '.*run' is on a full disk \(No space left on device; .* free\)"):
        preflight.check_output_dir(str(tmp_path / "run"))


def test_a_full_disk_at_the_final_save_names_the_folder(tokenizer, tmp_path, monkeypatch):
    from transformers import modeling_utils

    out = tmp_path / "run"
    trainer = make_trainer(tokenizer, out, **RUN)
    trainer.train()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", full)  # what save_pretrained writes weights with
    target = tmp_path / "final"
    with pytest.raises(CheckpointError) as info:
        trainer.save_model(str(target))
    assert str(info.value).startswith(f"could not write the model to {target}: no space left on the device (the disk ")
    assert str(info.value).endswith(
        f"The last complete checkpoint is {out / 'checkpoint-6'}. Free space or save less (save_total_limit, "
        "save_only_model=True), then resume with trainer.train(resume_from_checkpoint=True) and the same output_dir"
    )


def test_explicit_damaged_checkpoint_is_a_clear_error(tokenizer, tmp_path):
    out = tmp_path / "run"
    _interrupted(tokenizer, out, 2)
    _flip_bytes(out / "checkpoint-2" / "scheduler.pt", offset=40)
    trainer = make_trainer(tokenizer, out, **RUN)
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-2: scheduler.pt does not match its SHA-256"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))


def test_no_complete_checkpoint_is_a_clear_error(tokenizer, tmp_path):
    out = tmp_path / "run"
    _interrupted(tokenizer, out, 2)
    os.remove(out / "checkpoint-2" / "optimizer.pt")
    trainer = make_trainer(tokenizer, out, **RUN)
    with pytest.raises(ValueError, match=r"no complete checkpoint.*checkpoint-2 \(optimizer.pt is missing\)"):
        trainer.train(resume_from_checkpoint=True)


def test_save_total_limit_still_rotates(tokenizer, tmp_path):
    out = tmp_path / "run"
    make_trainer(tokenizer, out, save_total_limit=1, **RUN).train()
    assert sorted(os.listdir(out)) == ["checkpoint-6"]
    path, skipped = latest_complete_checkpoint(str(out))
    assert path == str(out / "checkpoint-6") and skipped == []


def test_structure_check_finds_truncated_safetensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(64)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "trainer_state.json").write_text("{}")
    assert check_structure(str(tmp_path)) == []
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-4])
    assert any("truncated" in problem for problem in check_structure(str(tmp_path)))
