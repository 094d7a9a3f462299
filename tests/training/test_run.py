"""The run engine leaves the caller's ORPOConfig as it was (what the run decides goes into a copy) and loads
the model and tokenizer, given or named, with the chosen chat template."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from _cli_support import save_tiny_model, write_pairs
from orpo import ModelArguments, ORPOConfig
from orpo.config.arguments import DataArguments
from orpo.training.inputs import auto_logging_steps
from orpo.training.run import build_trainer, copy_config, run_training


def _config(tmp_path, **kwargs) -> ORPOConfig:
    return ORPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        eval_strategy="steps",  # there will be no eval data: the run turns evaluation off
        eval_steps=1,
        report_to=["none"],
        max_length=64,
        max_prompt_length=32,
        save_strategy="no",
        **kwargs,
    )


def _fields(config: ORPOConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_build_trainer_leaves_the_callers_config_unchanged(tmp_path, tokenizer):
    from orpo.demo.tiny import tiny_causal_lm

    config = _config(tmp_path, lr_scheduler_kwargs={"power": 2.0})
    before = copy.deepcopy(_fields(config))
    rows = [{"prompt": "hello", "chosen": " yes", "rejected": " no"}] * 8
    trainer = build_trainer(
        ModelArguments(),
        None,
        config,
        model=tiny_causal_lm(tokenizer, hidden_size=32),
        tokenizer=tokenizer,
        train_dataset=rows,
        auto_logging=True,
        console=False,
    )
    assert _fields(config) == before
    assert config.eval_strategy == "steps" and config.logging_steps == 10 and config.dataloader_pin_memory
    run_args = trainer.args
    assert run_args is not config
    assert (run_args.eval_strategy, run_args.do_eval, run_args.load_best_model_at_end) == ("no", False, False)
    assert run_args.logging_steps == auto_logging_steps(8, config) == 1
    assert run_args.dataloader_pin_memory is False  # this CPU-only machine
    # nothing mutable is shared with the caller's config
    assert (
        run_args.lr_scheduler_kwargs == {"power": 2.0}
        and run_args.lr_scheduler_kwargs is not config.lr_scheduler_kwargs
    )
    assert run_args.report_to is not config.report_to


def test_run_training_leaves_the_callers_config_unchanged(tmp_path, monkeypatch):
    save_tiny_model(tmp_path / "model")
    write_pairs(tmp_path / "prefs.jsonl", 8)
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path)
    before = copy.deepcopy(_fields(config))
    result = run_training(
        ModelArguments(model_name_or_path="model"),
        DataArguments(dataset_name="prefs.jsonl"),
        config,
        console=False,
        auto_logging=True,
    )
    assert _fields(config) == before
    assert len([log for log in result.log_history if "loss" in log]) == 2  # logged every step, as auto picked


def test_copy_config_validates_and_copies(tmp_path):
    config = _config(tmp_path, fsdp_config={"version": 2})
    copied = copy_config(config, logging_steps=3)
    assert copied.logging_steps == 3 and config.logging_steps == 10
    assert copied.fsdp_config == config.fsdp_config and copied.fsdp_config is not config.fsdp_config
    assert dataclasses.replace(copied, logging_steps=10) == config  # the same config but for the change


@pytest.mark.parametrize("given", ["model and tokenizer", "model", "tokenizer", "neither"])
def test_the_chosen_chat_template_reaches_the_tokenizer_on_every_route(tmp_path, given):
    """Given or loaded (from --model, or from a model object's name_or_path), the tokenizer trains with
    --chat-template, not the template saved with it (ChatML)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orpo.models.sources import CHAT_TEMPLATES

    path = str(save_tiny_model(tmp_path / "model"))
    model = AutoModelForCausalLM.from_pretrained(path) if "model" in given else None
    tokenizer = AutoTokenizer.from_pretrained(path) if "tokenizer" in given else None
    rows = [{"prompt": "hello", "chosen": " yes", "rejected": " no"}] * 8
    trainer = build_trainer(
        ModelArguments(model_name_or_path=path, chat_template="zephyr"),
        None,
        _config(tmp_path),
        model=model,
        tokenizer=tokenizer,
        train_dataset=rows,
        console=False,
    )
    assert trainer.processing_class.chat_template == CHAT_TEMPLATES["zephyr"] != CHAT_TEMPLATES["chatml"]
    assert tokenizer is None or trainer.processing_class is tokenizer
    assert model is None or trainer.model is model


@pytest.mark.parametrize("revision", ["v1", None])
def test_a_revision_for_a_local_model_folder_is_warned_about(tmp_path, caplog, revision):
    """A local folder has no revisions: --model-revision would be ignored, so the run says so (once)."""
    import logging

    path = str(save_tiny_model(tmp_path / "model"))
    rows = [{"prompt": "hello", "chosen": " yes", "rejected": " no"}] * 8
    with caplog.at_level(logging.WARNING, logger="orpo.training.run"):
        build_trainer(
            ModelArguments(model_name_or_path=path, model_revision=revision),
            None,
            _config(tmp_path),
            train_dataset=rows,
            console=False,
        )
    said = [r.getMessage() for r in caplog.records if "model-revision" in r.getMessage()]
    assert said == ([f"--model-revision v1 has no effect: --model {path} is a local folder"] if revision else [])
