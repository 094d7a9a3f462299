"""Resuming a checkpoint that does not fit the run: each case named in one line, before any weights load.

LoRA checkpoint without LoRA and the reverse, another model's checkpoint (full and LoRA), data or
settings changed since the checkpoint (a fingerprint compared, warned about), and the steps of the
resumed session counted in the summary.
"""

from __future__ import annotations

import json
import logging

import pytest

from _reliability import make_trainer
from conftest import learnable_pairs
from orpo.training.reliability.fit import FINGERPRINT_NAME, describe_load_error

RUN = {"max_steps": 2, "save_steps": 2, "logging_steps": 1}


@pytest.fixture(scope="module")
def checkpoints(tokenizer, tmp_path_factory):
    """A LoRA run and a full run, each with checkpoint-2."""
    root = tmp_path_factory.mktemp("fit")
    make_trainer(tokenizer, root / "lora", peft=True, **RUN).train()
    make_trainer(tokenizer, root / "full", **RUN).train()
    return root


def _resume(tokenizer, out, **overrides):
    trainer = make_trainer(tokenizer, out, **{**RUN, "max_steps": 4, **overrides})
    trainer.train(resume_from_checkpoint=True)
    return trainer


def _copy(checkpoints, name, tmp_path):
    import shutil

    shutil.copytree(checkpoints / name, tmp_path / name)
    return tmp_path / name


def test_a_lora_checkpoint_without_lora_and_the_reverse(tokenizer, checkpoints, tmp_path):
    lora, full = _copy(checkpoints, "lora", tmp_path), _copy(checkpoints, "full", tmp_path)
    with pytest.raises(ValueError) as info:
        _resume(tokenizer, lora)
    assert str(info.value) == (
        f"{lora / 'checkpoint-2'} holds a LoRA adapter, but this run trains the whole model: resume with the LoRA "
        "settings it was trained with (orpo train --peft ..., or peft_config= in Python), or start afresh in "
        "another output_dir"
    )
    with pytest.raises(ValueError) as info:
        _resume(tokenizer, full, peft=True)
    assert str(info.value) == (
        f"{full / 'checkpoint-2'} holds a full model, but this run trains a LoRA adapter: resume without --peft "
        "(peft_config=None), or start afresh in another output_dir"
    )


def test_another_models_checkpoint_is_named_in_one_line(tokenizer, checkpoints, tmp_path, monkeypatch):
    import orpo.demo.tiny

    full, lora = _copy(checkpoints, "full", tmp_path), _copy(checkpoints, "lora", tmp_path)
    tiny = orpo.demo.tiny.tiny_causal_lm
    monkeypatch.setattr(orpo.demo.tiny, "tiny_causal_lm", lambda tok, seed=0: tiny(tok, hidden_size=32, seed=seed))
    with pytest.raises(ValueError) as info:
        _resume(tokenizer, full)
    assert str(info.value) == (
        f"{full / 'checkpoint-2'} was trained from another model (hidden_size 48 there, 32 here; intermediate_size "
        "96 there, 64 here): resume with the model it was trained from, or start afresh in another output_dir"
    )
    with pytest.raises(ValueError) as info:  # a LoRA checkpoint has no config: its tensors tell
        _resume(tokenizer, lora, peft=True)
    message = str(info.value)
    assert message.startswith(f"{lora / 'checkpoint-2'} does not fit this model: 8 tensor(s) have other shapes (e.g. ")
    assert "[4, 48] in the checkpoint, [4, 32] here" in message and "\n" not in message and len(message) < 400


def test_load_errors_that_are_not_about_fit_pass_through():
    assert describe_load_error(RuntimeError("CUDA out of memory"), "out/checkpoint-2") is None
    optimizer = ValueError(
        "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
    )
    assert describe_load_error(optimizer, "out/checkpoint-2").startswith(
        "out/checkpoint-2 holds optimizer state for other trainable parameters"
    )


def test_changed_data_or_settings_are_warned_about_and_the_resume_logged(tokenizer, checkpoints, tmp_path, caplog):
    full = _copy(checkpoints, "full", tmp_path)
    saved = json.loads((full / "checkpoint-2" / FINGERPRINT_NAME).read_text())
    assert saved["settings"]["beta"] == 0.1 and saved["data"]["pairs"] == 24
    caplog.set_level(logging.INFO, logger="orpo.training.reliability")
    resumed = _resume(tokenizer, full, data=learnable_pairs(30, seed=3), beta=0.2)
    assert resumed.state.global_step == 4
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("orpo.training.reliability")]
    assert f"resuming from {full / 'checkpoint-2'}" in messages
    assert (
        f"resuming from {full / 'checkpoint-2'} with changes since it was written: beta 0.1 -> 0.2; max_steps 2 -> 4; "
        "the training data (24 pairs then, 30 now). Training continues from its weights and optimizer state, but "
        "does not continue that run exactly"
    ) in messages
    caplog.clear()
    same = _copy(checkpoints, "full", tmp_path / "again")
    _resume(tokenizer, same, data=learnable_pairs(24, seed=5), max_steps=2)  # same count, other pairs
    assert any(
        "the training data (the same 24 pairs in number, other pairs or order)" in r.getMessage()
        for r in caplog.records
    )


def test_the_summary_counts_the_steps_of_this_session(tokenizer, checkpoints, tmp_path):
    from orpo.training.run import finish_training
    from orpo.training.summary import summary_table

    full = _copy(checkpoints, "full", tmp_path)
    trainer = make_trainer(tokenizer, full, **{**RUN, "max_steps": 5})
    result = finish_training(trainer, console=False, resume_from_checkpoint=True)
    assert (result.steps_run, result.first_step, result.resumed_from) == (3, 2, str(full / "checkpoint-2"))
    table = summary_table(result)
    assert f"3 steps, resumed from {full / 'checkpoint-2'} (steps 3-5) in " in table
    assert "pairs/s); at epoch" in table


def test_a_start_adapter_run_resumes_its_lora_checkpoint_without_peft(tmp_path):
    """``--model ADAPTER_DIR`` trains that adapter (no --peft): its LoRA checkpoints fit; merged first, they do not."""
    from safetensors.torch import save_file

    from orpo import ORPOConfig
    from orpo.config.arguments import ModelArguments
    from orpo.training.reliability.commit import CheckpointCommitter
    from orpo.training.run import check_resume

    start = tmp_path / "sft-adapter"
    start.mkdir()
    (start / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base")}))

    def write(staging):
        import os

        import torch

        os.makedirs(staging)
        save_file({"lora_A": torch.zeros(2, 2)}, os.path.join(staging, "adapter_model.safetensors"))
        (tmp_path / "out" / "tmp-checkpoint-2" / "trainer_state.json").write_text("{}")

    CheckpointCommitter(lambda: None, True, lambda: "").save(str(tmp_path / "out"), 2, write)
    config = ORPOConfig(output_dir=str(tmp_path / "out"), resume_from_checkpoint="latest", report_to=[])
    assert check_resume(ModelArguments(model_name_or_path=str(start)), config) == str(tmp_path / "out" / "checkpoint-2")
    merged = ModelArguments(model_name_or_path=str(start), merge_start_adapter=True)
    with pytest.raises(ValueError, match="holds a LoRA adapter, but this run trains the whole model"):
        check_resume(merged, config)
