"""Outputs that travel: a model card on every save and push, adapters that name their base absolutely."""

from __future__ import annotations

import json

import pytest
import yaml

from _cli_support import save_tiny_model, write_pairs
from orpo import ModelArguments, ORPOConfig
from orpo.config.arguments import DataArguments
from orpo.training.card import PAPER, VERSIONED, versions
from orpo.training.run import build_trainer, finish_training


def _config(tmp_path, **kwargs) -> ORPOConfig:
    values = dict(
        output_dir="out",
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        report_to=["none"],
        max_length=64,
        max_prompt_length=32,
        save_strategy="steps",
        save_steps=2,
        beta=0.25,
    )
    return ORPOConfig(**{**values, **kwargs})


def _metadata(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---", 2)[1])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run from a model and data given by relative paths, as `orpo train --model model` does."""
    import os

    root = tmp_path_factory.mktemp("card")
    save_tiny_model(root / "model")
    write_pairs(root / "prefs.jsonl", 8)
    (root / "prefs.jsonl").open("a").write(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        trainer = build_trainer(
            ModelArguments(model_name_or_path="model", use_peft=True, lora_r=4, lora_alpha=8),
            DataArguments(dataset_name="prefs.jsonl"),
            _config(root),
            console=False,
        )
        result = finish_training(trainer, model_args=ModelArguments(use_peft=True), console=False)
    finally:
        os.chdir(cwd)
    return root, trainer, result


def test_final_card_records_method_base_data_hyperparameters_metrics_health_versions(lora_run):
    root, _, result = lora_run
    card = (root / "out" / "README.md").read_text(encoding="utf-8")
    meta = _metadata(card)
    assert meta["library_name"] == "peft"
    assert {"orpo", "transformers", "peft", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local path is no hub id; the body names it
    assert PAPER in card and "Hong, Lee & Thorne" in card and "2403.07691" in card
    assert f"fine-tuned from `{(root / 'model').resolve()}`" in card
    assert "| `prefs.jsonl` | 9 | 8 |" in card  # 9 rows read, the identical pair dropped
    assert (
        "| beta | 0.25 |" in card
        and "| max_steps | 2 |" in card
        and "| lr_scheduler_type | linear |" in card
        and "| lora_r | 4 |" in card
    )
    assert f"| train_loss | {result.train_metrics['train_loss']:.6g} |" in card
    assert result.health and all(f"- {finding.line()}" in card for finding in result.health)
    for name, version in versions().items():
        assert f"| {name} | {version} |" in card
    assert set(versions()) == set(VERSIONED)


def test_every_checkpoint_carries_a_card(lora_run):
    root, _, _ = lora_run
    card = (root / "out" / "checkpoint-2" / "README.md").read_text(encoding="utf-8")
    assert PAPER in card and "| `prefs.jsonl` | 9 | 8 |" in card
    assert "Not run (the run has not finished)." in card  # the verdict comes with the final save


def test_adapter_records_an_absolute_base_path_and_loads_from_elsewhere(lora_run, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    root, _, _ = lora_run
    for directory in (root / "out", root / "out" / "checkpoint-2"):
        saved = json.loads((directory / "adapter_config.json").read_text())
        assert saved["base_model_name_or_path"] == str((root / "model").resolve())
    monkeypatch.chdir(tmp_path)  # where no ./model exists
    model = AutoPeftModelForCausalLM.from_pretrained(str(root / "out"))
    assert model.peft_config["default"].r == 4


def test_push_card_adds_the_callers_tags_and_hub_metadata(lora_run, tmp_path):
    _, trainer, _ = lora_run
    trainer.args.output_dir = str(tmp_path / "push")
    trainer.train_source = "org/prefs"  # a hub dataset id: listed in the metadata
    trainer.create_model_card(model_name="my-model", tags=["custom"])
    card = (tmp_path / "push" / "README.md").read_text(encoding="utf-8")
    meta = _metadata(card)
    assert meta["datasets"] == ["org/prefs"] and meta["model_name"] == "my-model"
    assert "custom" in meta["tags"] and "orpo" in meta["tags"]
    assert card.splitlines()[len(card.split("---", 2)[1].splitlines()) + 1] == "# my-model"


def test_full_model_card_names_a_hub_base_in_metadata(tmp_path, tokenizer):
    from orpo import ORPOTrainer
    from orpo.demo.tiny import tiny_causal_lm

    model = tiny_causal_lm(tokenizer, hidden_size=32)
    model.name_or_path = "org/base-model"
    trainer = ORPOTrainer(
        model=model,
        args=_config(tmp_path, output_dir=str(tmp_path / "full"), save_strategy="no"),
        train_dataset=[{"prompt": "hi", "chosen": " yes", "rejected": " no"}] * 4,
        processing_class=tokenizer,
    )
    trainer.save_model()
    card = (tmp_path / "full" / "README.md").read_text(encoding="utf-8")
    meta = _metadata(card)
    assert meta["base_model"] == "org/base-model" and meta["library_name"] == "transformers"
    assert "| `in-memory dataset` | 4 | 4 |" in card
    assert "No metrics logged yet." in card
