"""AutoTrain's Python API: LLMTrainingParams + AutoTrainProject(backend="local").create()."""

from __future__ import annotations

import dataclasses
import json

import pytest

from _cli_support import save_tiny_model, write_pairs
from orpo import AutoTrainProject, LLMTrainingParams
from orpo.config.usage import UsageError


def test_defaults_are_autotrains():
    params = LLMTrainingParams()
    expected = {
        "trainer": "orpo",
        "dpo_beta": 0.1,
        "max_completion_length": None,
        "max_prompt_length": 128,
        "lr": 3e-5,
        "epochs": 1,
        "batch_size": 2,
        "gradient_accumulation": 4,
        "warmup_ratio": 0.1,
        "peft": False,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": "all-linear",
        "merge_adapter": True,
        "text_column": "text",
        "prompt_text_column": None,
        "rejected_text_column": None,
        "image_column": None,
        "quantization": None,
        "mixed_precision": None,
        "optimizer": "adamw_torch",
        "scheduler": "linear",
        "seed": 42,
    }
    assert {key: getattr(params, key) for key in expected} == expected


def test_mapping_to_orpo_config():
    params = LLMTrainingParams(
        model="m",
        data_path="d.jsonl",
        project_name="p",
        dpo_beta=0.15,
        epochs=3,
        batch_size=2,
        gradient_accumulation=4,
        lr=2e-5,
        peft=True,
        lora_r=32,
        lora_alpha=64,
        valid_split="validation",
        max_completion_length=128,
        target_modules="q_proj,v_proj",
        block_size=512,
    )
    model, data, config = params.to_args()
    assert (config.output_dir, config.beta, config.learning_rate, config.num_train_epochs) == ("p", 0.15, 2e-5, 3)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps, config.warmup_steps) == (2, 4, 0.1)
    assert (config.max_length, config.max_prompt_length, config.max_completion_length) == (512, 128, 128)
    assert config.eval_strategy == "epoch" and config.load_best_model_at_end
    assert (
        model.use_peft
        and (model.lora_r, model.lora_alpha) == (32, 64)
        and model.lora_target_modules == ["q_proj", "v_proj"]
    )
    assert data.dataset_test_split == "validation" and data.text_column is None  # "text" default also finds "chosen"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trainer": "sft"}, "trainer 'sft' is not supported"),
        ({"model_ref": "x"}, "no reference model"),
        ({"add_eos_token": False}, "EOS"),
        ({"unsloth": True}, "unsloth is not supported"),
        ({"lr": "fast"}, r"LLMTrainingParams\.lr: expected a number, got 'fast'"),
        ({"quantization": "int3"}, r"LLMTrainingParams\.quantization: invalid choice 'int3'"),
    ],
)
def test_invalid_params(kwargs, message):
    with pytest.raises(UsageError, match=message):
        LLMTrainingParams(**kwargs)


def test_values_orpo_config_refuses_are_refused_by_to_args():
    with pytest.raises(UsageError, match=r"^LLMTrainingParams\.dpo_beta=-1\.0: must be a finite number >= 0$"):
        LLMTrainingParams(dpo_beta=-1.0).to_args()  # refused as given, by the range of the field it sets


def test_unknown_backend():
    with pytest.raises(UsageError, match="backend 'spaces-a10g-large' is not supported"):
        AutoTrainProject(params=LLMTrainingParams(), backend="spaces-a10g-large")


def test_create_trains_in_process(tmp_path, monkeypatch):
    save_tiny_model(tmp_path / "model")
    write_pairs(tmp_path / "prefs.jsonl", 12)
    monkeypatch.chdir(tmp_path)
    params = LLMTrainingParams(
        model="model",
        data_path="prefs.jsonl",
        project_name="my-orpo",
        trainer="orpo",
        prompt_text_column="prompt",
        text_column="chosen",
        rejected_text_column="rejected",
        dpo_beta=0.1,
        max_completion_length=None,
        epochs=2,
        batch_size=4,
        gradient_accumulation=1,
        lr=1e-3,
        peft=True,
        lora_r=4,
        merge_adapter=False,
        disable_gradient_checkpointing=True,
        logging_steps=1,
    )
    result = AutoTrainProject(params=params, backend="local", process=True).create(console=False)
    project = tmp_path / "my-orpo"
    assert result.output_dir == "my-orpo"
    assert (project / "adapter_config.json").is_file() and not (project / "model.safetensors").exists()
    saved = json.loads((project / "training_params.json").read_text())
    assert saved == {k: v for k, v in dataclasses.asdict(params).items() if k != "token"}
    train_logs = [log for log in result.log_history if "loss" in log]
    assert len(train_logs) == 6  # 12 pairs / batch 4 x 2 epochs, logged every step
    assert all("rewards/accuracies" in log for log in train_logs)
    assert result.plot_path and (project / "training_curves.png").is_file()
