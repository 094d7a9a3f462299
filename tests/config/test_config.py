"""ORPOConfig: TRL's field names and defaults, validation that names the field, conversions."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import HfArgumentParser, TrainingArguments

from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import tiny_causal_lm
from orpo.internals import releases as compat

#: The defaults TRL documents for its ORPOConfig (trl/trainer/orpo_config.py).
TRL_DEFAULTS = {
    "beta": 0.1,
    "max_length": 1024,
    "max_prompt_length": 512,
    "max_completion_length": None,
    "disable_dropout": True,
    "label_pad_token_id": -100,
    "padding_value": None,
    "truncation_mode": "keep_end",
    "generate_during_eval": False,
    "is_encoder_decoder": None,
    "model_init_kwargs": None,
    "dataset_num_proc": None,
    "learning_rate": 1e-6,
    "logging_steps": 10,
}


def test_trl_defaults(tmp_path):
    config = ORPOConfig(output_dir=str(tmp_path))
    for name, value in TRL_DEFAULTS.items():
        assert getattr(config, name) == value, name
    # ours
    assert config.nll_scope == "completion"
    assert config.fused_lm_head is True
    assert config.on_too_long == "truncate"
    assert isinstance(config, TrainingArguments)
    fields = {f.name for f in dataclasses.fields(ORPOConfig)}
    assert set(TRL_DEFAULTS) <= fields


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("truncation_mode", "middle"),
        ("nll_scope", "everything"),
        ("beta", -0.5),
        ("max_length", 0),
        ("max_prompt_length", -3),
        ("max_completion_length", 0),
        ("on_too_long", "ignore"),
        ("on_identical_pair", "nope"),
        ("on_empty_completion", "nope"),
        ("on_duplicate", "nope"),
        ("on_nonfinite", "nope"),
        ("model_init_kwargs", "{not json"),
        ("pad_to_multiple_of", 0),
    ],
)
def test_bad_values_raise_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"ORPOConfig\.{field}"):
        ORPOConfig(output_dir=str(tmp_path), **{field: value})


def test_accepted_values(tmp_path):
    config = ORPOConfig(
        output_dir=str(tmp_path),
        beta=0.0,
        truncation_mode="keep_start",
        nll_scope="prompt_and_completion",
        max_length=None,
        max_prompt_length=None,
        model_init_kwargs='{"dtype": "float32"}',
    )
    assert config.model_init_kwargs == {"dtype": "float32"}
    # As in TRL, a prompt limit at or above max_length is allowed (ORPOConfig(max_length=512) keeps the
    # default max_prompt_length=512); pairs left without room are dropped and counted.
    assert ORPOConfig(output_dir=str(tmp_path), max_length=512).max_prompt_length == 512


def test_command_line_parsing(tmp_path):
    (config,) = HfArgumentParser(ORPOConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--beta", "0.25", "--nll_scope", "prompt_and_completion", "--max_length", "256"]
    )
    assert (config.beta, config.nll_scope, config.max_length) == (0.25, "prompt_and_completion", 256)
    with pytest.raises(SystemExit):  # choices are enforced by the parser too
        HfArgumentParser(ORPOConfig).parse_args_into_dataclasses(["--output_dir", "x", "--truncation_mode", "bad"])


def test_plain_training_arguments_are_converted(tokenizer, tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=3e-4,
        per_device_train_batch_size=3,
        seed=7,
        report_to="none",
        lr_scheduler_type="cosine",
        max_steps=2,
    )
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer, hidden_size=32),
        args=args,
        processing_class=tokenizer,
        train_dataset=[{"prompt": "hello", "chosen": " yes", "rejected": " no"}] * 2,
    )
    assert isinstance(trainer.args, ORPOConfig)
    assert trainer.args.learning_rate == 3e-4
    assert trainer.args.per_device_train_batch_size == 3
    assert trainer.args.seed == 7 and trainer.args.max_steps == 2
    assert trainer.args.output_dir == str(tmp_path)
    assert trainer.args.lr_scheduler_type == "cosine"
    assert trainer.args.beta == 0.1 and trainer.args.nll_scope == "completion"  # ORPO fields: their defaults


def test_no_args_gives_a_default_config(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = ORPOTrainer(model=tiny_causal_lm(tokenizer, hidden_size=32), processing_class=tokenizer)
    assert isinstance(trainer.args, ORPOConfig)
    assert trainer.args.output_dir.endswith("-ORPO")


def test_redeclared_training_arguments_fields_keep_transformers_types_and_defaults():
    """ORPOConfig re-declares some TrainingArguments fields only to give them AutoTrain's names as aliases."""
    import typing

    ours, theirs = typing.get_type_hints(ORPOConfig), typing.get_type_hints(TrainingArguments)
    own = {"learning_rate", "logging_steps", "remove_unused_columns"}  # TRL's defaults
    base = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    redeclared = [
        f for f in dataclasses.fields(ORPOConfig) if f.name in base and f.metadata is not base[f.name].metadata
    ]
    # transformers < 5.17 still has warmup_ratio, hidden by ORPOConfig (orpo spells it as warmup_steps).
    hidden = {"warmup_ratio"} if compat.HAS_WARMUP_RATIO_FIELD else set()
    # transformers' older fsdp field, given the bare-flag metadata of newer releases.
    bare_flag = set() if compat.FSDP_HAS_CONST else {"fsdp"}
    assert {f.name for f in redeclared} == own | {
        "output_dir",
        "num_train_epochs",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "warmup_steps",
        "lr_scheduler_type",
        "optim",
        "report_to",
        "hub_model_id",
        "hub_token",
    } | hidden | bare_flag
    for f in redeclared:
        assert ours[f.name] == theirs[f.name], f.name
        if f.name in hidden:
            assert not f.init and f.default == base[f.name].default, f.name
        elif f.name not in own:
            # transformers' optim default is adamw_torch_fused from torch 2.8; orpo keeps it on older torch.
            expected = "adamw_torch_fused" if f.name == "optim" else base[f.name].default
            assert f.default == expected, f.name
            assert f.metadata["help"] == base[f.name].metadata["help"], f.name
        if f.name in bare_flag:
            assert f.metadata["nargs"] == "?" and f.metadata["const"] is True, f.name
    names = [f.name for f in dataclasses.fields(ORPOConfig)]
    assert names[: len(base)] == list(base)  # transformers' fields first, in their order, then ORPO's


def test_hf_argument_parser_takes_the_aliases_too(tmp_path):
    from orpo import DataArguments, ModelArguments

    argv = ["--model", "m", "--data-path", "d.jsonl", "--project-name", str(tmp_path), "--lr", "3e-4"]
    argv += ["--dpo-beta", "0.3", "--peft", "true", "--target-modules", "q_proj", "v_proj"]
    argv += ["--valid-split", "test", "--epochs", "2"]
    parser = HfArgumentParser((ModelArguments, DataArguments, ORPOConfig))
    model, data, config = parser.parse_args_into_dataclasses(argv)
    assert (model.model_name_or_path, model.use_peft, model.lora_target_modules) == ("m", True, ["q_proj", "v_proj"])
    assert (data.dataset_name, data.dataset_test_split) == ("d.jsonl", "test")
    assert (config.output_dir, config.learning_rate, config.beta, config.num_train_epochs) == (
        str(tmp_path),
        3e-4,
        0.3,
        2,
    )


@pytest.mark.parametrize(("field", "value"), [("dtype", "float8"), ("quantization", "int3")])
def test_model_arguments_check_their_choices(field, value):
    from orpo import ModelArguments

    with pytest.raises(ValueError, match=rf"ModelArguments\.{field}={value!r} is not one of"):
        ModelArguments(**{field: value})
