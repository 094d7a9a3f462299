"""``ORPOTrainer(args=config)`` works on its own resolved copy: the caller's config is never changed."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from transformers import TrainingArguments

from _reliability import learnable_pairs, max_diff, weights
from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import tiny_causal_lm
from orpo.internals import releases as compat

COMMON = {
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "learning_rate": 1e-3,
    "save_strategy": "no",
    "report_to": [],
    "disable_tqdm": True,
    "seed": 1,
    "dataloader_num_workers": 0,
}


def snapshot(config):
    return {field.name: copy.deepcopy(getattr(config, field.name)) for field in dataclasses.fields(config)}


@pytest.mark.parametrize("kind", [ORPOConfig, TrainingArguments], ids=["ORPOConfig", "TrainingArguments"])
def test_training_leaves_the_callers_config_unchanged(tokenizer, tmp_path, kind):
    # TrainingArguments before 5.23 names the switch gradient_checkpointing only; ORPOConfig takes both names.
    switch = (
        "activation_checkpointing"
        if kind is ORPOConfig or compat.HAS_ACTIVATION_CHECKPOINTING
        else "gradient_checkpointing"
    )
    config = kind(output_dir=str(tmp_path), remove_unused_columns=True, logging_steps=1, **{switch: True}, **COMMON)
    before = snapshot(config)
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer), args=config, train_dataset=learnable_pairs(8), processing_class=tokenizer
    )
    trainer.train()
    assert snapshot(config) == before
    assert trainer.args is not config and isinstance(trainer.args, ORPOConfig)
    # What the trainer resolved is in its copy only.
    assert trainer.args.is_encoder_decoder is False and trainer.args.remove_unused_columns is False
    if kind is ORPOConfig:
        assert config.is_encoder_decoder is None
    assert config.remove_unused_columns is True
    assert getattr(config, f"{switch}_kwargs") is None and config.gradient_checkpointing_kwargs is None
    assert trainer.model.is_gradient_checkpointing


def test_copy_keeps_every_value_and_shares_no_container(tokenizer, tmp_path):
    config = ORPOConfig(
        output_dir=str(tmp_path), lr_scheduler_kwargs={"num_cycles": 0.5}, lr_scheduler_type="cosine", **COMMON
    )
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer), args=config, train_dataset=learnable_pairs(8), processing_class=tokenizer
    )
    assert trainer.args.to_dict() == {**config.to_dict(), "is_encoder_decoder": False}
    assert trainer.args.lr_scheduler_kwargs == {"num_cycles": 0.5}
    assert trainer.args.lr_scheduler_kwargs is not config.lr_scheduler_kwargs
    assert trainer.args.report_to is not config.report_to


def test_activation_checkpointing_trains_exactly_as_without(tokenizer, tmp_path):
    """Non-reentrant checkpointing (transformers' default, which orpo relies on) recomputes exactly."""
    runs = []
    for checkpointing in (False, True):
        config = ORPOConfig(
            output_dir=str(tmp_path / str(checkpointing)), activation_checkpointing=checkpointing, **COMMON
        )
        trainer = ORPOTrainer(
            model=tiny_causal_lm(tokenizer), args=config, train_dataset=learnable_pairs(8), processing_class=tokenizer
        )
        trainer.train()
        assert trainer.model.is_gradient_checkpointing is checkpointing
        runs.append(weights(trainer.model))
    assert max_diff(*runs) < 1e-6
