"""LoRA through ``peft_config``: it learns, only adapter weights move, save_model writes a loadable
adapter, and gradient checkpointing works with it."""

from __future__ import annotations

import os

import pytest
import torch
from peft import LoraConfig, PeftModel
from test_trainer import BASE, Recorder, params, uneven_pairs

from conftest import learnable_pairs
from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import tiny_causal_lm

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora() -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    recorder = Recorder()
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer, hidden_size=32, seed=0),
        args=ORPOConfig(
            output_dir=str(out), **{**BASE, "learning_rate": 1e-2, "num_train_epochs": 6, "logging_steps": 4}
        ),
        train_dataset=learnable_pairs(32),
        processing_class=tokenizer,
        peft_config=lora(),
        callbacks=[recorder],
    )
    trainer.recorder = recorder
    before = params(trainer.model)
    trainer.train()
    return trainer, before


def test_lora_learns_the_preference(trained):
    trainer, _ = trained
    assert isinstance(trainer.model, PeftModel)
    logs = [log for log in trainer.recorder.logs if "loss" in log]
    assert logs[-1]["rewards/accuracies"] >= 0.9
    assert logs[-1]["nll_loss"] < logs[0]["nll_loss"]
    assert trainer.scorer.uses_fused is True  # the LM head is not adapted: the fused path applies


def test_only_adapter_weights_change(trained):
    trainer, before = trained
    after = params(trainer.model)
    adapter = {name for name in before if "lora_" in name}
    assert adapter and len(adapter) == 2 * len(TARGETS) * 2  # A and B, per target, per layer
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == adapter
    for name in before:
        if name in adapter:
            if "lora_B" in name:  # B starts at zero and must have moved
                assert not torch.equal(before[name], after[name]), name
        else:
            assert torch.equal(before[name], after[name]), name  # bit-identical base weights
    assert sum(not torch.equal(before[n], after[n]) for n in adapter) >= len(adapter) // 2


def test_save_model_writes_a_loadable_adapter(trained, tokenizer, tmp_path):
    trainer, _ = trained
    trainer.save_model(str(tmp_path))
    files = set(os.listdir(tmp_path))
    assert "adapter_config.json" in files and "adapter_model.safetensors" in files
    assert "model.safetensors" not in files  # an adapter, not a full model
    loaded = PeftModel.from_pretrained(tiny_causal_lm(tokenizer, hidden_size=32, seed=0), str(tmp_path))
    ours = {k: v for k, v in trainer.model.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    trainer.model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits)


def test_lora_with_gradient_checkpointing(tokenizer, tmp_path):
    runs = {}
    for checkpointing in (False, True):
        recorder = Recorder()
        args = ORPOConfig(
            output_dir=str(tmp_path / str(checkpointing)),
            **{
                **BASE,
                "learning_rate": 1e-2,
                "max_steps": 2,
                "logging_steps": 1,
                "per_device_train_batch_size": 4,
                "gradient_checkpointing": checkpointing,
                "train_sampling_strategy": "sequential",
            },
        )
        trainer = ORPOTrainer(
            model=tiny_causal_lm(tokenizer, hidden_size=32, seed=0),
            args=args,
            train_dataset=uneven_pairs(8),
            processing_class=tokenizer,
            peft_config=lora(),
            callbacks=[recorder],
        )
        before = params(trainer.model)
        trainer.train()
        runs[checkpointing] = (trainer, before, [log for log in recorder.logs if "loss" in log])
    trainer, before, logs = runs[True]
    assert trainer.model.base_model.model.is_gradient_checkpointing
    after = params(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)  # adapters got gradients
    for a, b in zip(runs[False][2], logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
