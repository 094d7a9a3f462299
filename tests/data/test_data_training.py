"""Loaded data of every format trains end to end (a few CPU steps), row locations included."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import pytest

from orpo import ORPOConfig, ORPOTrainer
from orpo.data import load_preference_data
from orpo.demo.tiny import tiny_causal_lm

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    datasets.disable_progress_bars()


def test_mixed_sources_train_and_evaluate(tmp_path, tokenizer):
    conversational = load_preference_data(FIXTURES / "conversational.jsonl")["train"]
    implicit = load_preference_data(FIXTURES / "implicit.jsonl")["train"]
    split_layout = load_preference_data(FIXTURES / "split_layout")
    args = ORPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        disable_tqdm=True,
        max_length=64,
        max_prompt_length=48,
        save_strategy="no",
        dataloader_num_workers=0,
    )
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=args,
        train_dataset=conversational,
        eval_dataset={"implicit": implicit, "validation": split_layout["validation"]},
        processing_class=tokenizer,
    )
    assert trainer.data_reports["train"].formats == {"conversational": 3}
    trainer.train()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_implicit_loss"]) and math.isfinite(metrics["eval_validation_loss"])
    # evaluate() prepares raw rows as eval_dataset was prepared, and takes tokenized rows as they are
    prepared = trainer.eval_dataset["implicit"]
    assert trainer._tokenized_eval(prepared) is prepared
    raw = trainer.evaluate(eval_dataset=implicit, metric_key_prefix="raw")
    again = trainer.evaluate(eval_dataset=prepared, metric_key_prefix="again")
    assert raw["raw_loss"] == again["again_loss"] == metrics["eval_implicit_loss"]
