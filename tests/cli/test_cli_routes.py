"""One option table: every route to a run gives the same arguments for the same settings.

The routes are `orpo train` flags, a YAML recipe, `aitraining llm` flags and `LLMTrainingParams(...)`; the
last two start from AutoTrain's defaults, so the first two spell those out where AutoTrain cannot be told.
Also: transformers' field metadata (`--fsdp` alone), recipe switches turned off by flags, repeated flags.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from transformers.trainer_utils import FSDPOption

from _cli_support import assert_one_line_error, orpo_command, run
from orpo import LLMTrainingParams
from orpo.cli.aitraining import autotrain_options, parse_aitraining
from orpo.cli.train import train_sources
from orpo.config.options import merge, option_table
from orpo.config.resolve import resolve
from orpo.config.usage import UsageError
from orpo.internals import releases as compat

#: (orpo's field, AutoTrain's field, value): the same setting in both vocabularies.
SETTINGS = [
    ("model_name_or_path", "model", "some/model"),
    ("dataset_name", "data_path", "prefs.jsonl"),
    ("output_dir", "project_name", "runs/same"),
    ("dataset_train_split", "train_split", "train[:90%]"),
    ("dataset_test_split", "valid_split", "train[90%:]"),
    ("prompt_text_column", "prompt_text_column", "question"),
    ("text_column", "text_column", "good"),
    ("rejected_text_column", "rejected_text_column", "bad"),
    ("max_samples", "max_samples", 100),
    ("attn_implementation", "attn_implementation", "sdpa"),
    ("chat_template", "chat_template", "chatml"),
    ("learning_rate", "lr", 2e-5),
    ("num_train_epochs", "epochs", 2.0),
    ("per_device_train_batch_size", "batch_size", 4),
    ("gradient_accumulation_steps", "gradient_accumulation", 2),
    ("warmup_steps", "warmup_ratio", 0.05),
    ("lr_scheduler_type", "scheduler", "cosine"),
    ("optim", "optimizer", "adamw_torch"),
    ("weight_decay", "weight_decay", 0.01),
    ("max_grad_norm", "max_grad_norm", 0.5),
    ("seed", "seed", 7),
    ("logging_steps", "logging_steps", 5),
    ("eval_strategy", "eval_strategy", "steps"),
    ("save_strategy", "save_strategy", "steps"),
    ("save_steps", "save_steps", 50),
    ("save_total_limit", "save_total_limit", 2),
    ("report_to", "log", "tensorboard"),
    ("beta", "dpo_beta", 0.2),
    ("max_length", "block_size", 256),
    ("max_prompt_length", "max_prompt_length", 64),
    ("max_completion_length", "max_completion_length", 128),
    ("use_peft", "peft", True),
    ("lora_r", "lora_r", 8),
    ("lora_alpha", "lora_alpha", 16),
    ("lora_dropout", "lora_dropout", 0.1),
    ("lora_target_modules", "target_modules", "q_proj,v_proj"),
    ("merge_adapter", "merge_adapter", False),
    ("activation_checkpointing", "disable_gradient_checkpointing", False),
]
#: What AutoTrain does that LLMTrainingParams has no field for: orpo's routes say it explicitly.
AUTOTRAIN_ONLY = {
    "per_device_eval_batch_size": 4,  # AutoTrain's batch_size is also the evaluation batch size
    "load_best_model_at_end": True,  # with a validation split and matching eval/save schedules
}


def _orpo_values() -> dict:
    values = {orpo: value for orpo, _, value in SETTINGS}
    values["lora_target_modules"] = values["lora_target_modules"].split(",")
    return {**values, **AUTOTRAIN_ONLY}


def _autotrain_values() -> dict:
    values = {autotrain: value for _, autotrain, value in SETTINGS}
    values["disable_gradient_checkpointing"] = True
    return values


def _flags(values: dict) -> list[str]:
    argv: list[str] = []
    for name, value in values.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append(f"--no-{name.replace('_', '-')}")
        else:
            argv += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return argv


def _args(resolved) -> tuple:
    return resolved.model, resolved.data, resolved.config, resolved.auto_logging


def test_the_same_settings_give_the_same_arguments_on_every_route(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_orpo_values()), encoding="utf-8")
    flags = resolve(*train_sources(_flags(_orpo_values()))[0])
    from_recipe = resolve(*train_sources(["--config", str(recipe)])[0])
    params, _ = parse_aitraining(["--train", *_flags(_autotrain_values())])
    direct = LLMTrainingParams(**_autotrain_values())
    assert params == direct
    expected = _args(flags)
    assert _args(from_recipe) == expected
    assert _args(params.resolve()) == expected
    assert _args(direct.resolve()) == expected
    assert direct.to_args() == expected[:3]
    model, data, config, auto_logging = expected
    # and those are the settings
    assert (config.learning_rate, config.per_device_eval_batch_size, config.max_length, config.max_prompt_length) == (
        2e-5,
        4,
        256,
        64,
    )
    assert (config.logging_steps, auto_logging, config.activation_checkpointing, config.load_best_model_at_end) == (
        5,
        False,
        False,
        True,
    )
    assert model.lora_target_modules == ["q_proj", "v_proj"] and data.text_column == "good"


def test_autotrain_defaults_on_both_autotrain_routes():
    quick_start = ["--model", "m", "--data-path", "d.jsonl", "--project-name", "p", "--trainer", "orpo", "--peft"]
    params, namespace = parse_aitraining(["--train", *quick_start])
    assert namespace.backend == "local"
    assert params == LLMTrainingParams(model="m", data_path="d.jsonl", project_name="p", trainer="orpo", peft=True)
    resolved = params.resolve()
    config = resolved.config
    assert (config.learning_rate, config.num_train_epochs, config.gradient_accumulation_steps) == (3e-5, 1, 4)
    assert (config.per_device_train_batch_size, config.per_device_eval_batch_size, config.warmup_steps) == (2, 2, 0.1)
    assert (config.max_length, config.max_prompt_length, config.optim, config.save_total_limit) == (
        2048,
        128,
        "adamw_torch",
        1,
    )
    # no validation split: no evaluation, no checkpoints, automatic logging steps
    assert (config.eval_strategy, config.save_strategy, config.load_best_model_at_end) == ("no", "no", False)
    assert resolved.auto_logging and config.logging_steps == 10  # ORPOConfig's; the run engine picks the steps
    assert config.activation_checkpointing and config.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert resolved.model.merge_adapter and resolved.model.lora_target_modules == ["all-linear"]
    assert resolved.data.text_column is None  # AutoTrain's "text" default: chosen, else text
    assert resolved.data.dataset_train_split == "train"


def test_every_autotrain_field_is_an_orpo_train_spelling():
    table = option_table()
    for option in autotrain_options():
        assert table.lookup(option.name) is not None, option.name
    assert {f.name for f in dataclasses.fields(LLMTrainingParams)} == {o.name for o in autotrain_options()}


def test_max_prompt_length_is_used_as_given_on_every_route():
    """One rule: no halving when max_prompt_length >= max_length (AutoTrain's default 128 with block_size 128)."""
    flags = resolve(*train_sources(["--model", "m", "--data-path", "d", "--block-size", "128"])[0]).config
    params = LLMTrainingParams(model="m", data_path="d", block_size=128).resolve().config
    assert (flags.max_length, flags.max_prompt_length) == (128, 512)
    assert (params.max_length, params.max_prompt_length) == (128, 128)


# ---- transformers' field metadata --------------------------------------------------------


def given(argv: list[str]) -> dict:
    sources, _ = train_sources(argv)
    return merge(*sources)


def test_fsdp_alone_and_fsdp_true_in_yaml(tmp_path):
    assert given(["--fsdp"])["fsdp"] is True
    assert given(["--fsdp", "false"])["fsdp"] is None
    assert given(["--fsdp", "full_shard auto_wrap"])["fsdp"] == "full_shard auto_wrap"
    recipe = tmp_path / "fsdp.yaml"
    recipe.write_text("model: m\ndata: d.jsonl\nfsdp: true\nfsdp_config:\n  version: 2\n", encoding="utf-8")
    config = resolve(*train_sources(["--config", str(recipe)])[0]).config
    # How TrainingArguments spells "on" once resolved: True, or (transformers 5.3-5.5) its list of options.
    on = True if compat.FSDP_HAS_CONST else [FSDPOption.FULL_SHARD]
    assert config.fsdp == on and type(config.fsdp) is type(on) and config.fsdp_config["version"] == 2
    flag = resolve(*train_sources(["--model", "m", "--data", "d", "--fsdp"])[0]).config.fsdp
    assert flag == on and type(flag) is type(on)


def test_optional_flag_values_and_enums():
    assert given(["--gradient-checkpointing"])["gradient_checkpointing"] is True
    assert given(["--activation-checkpointing"])["activation_checkpointing"] is True
    assert given(["--no-activation-checkpointing"])["activation_checkpointing"] is False
    assert given(["--include-num-input-tokens-seen", "true"])["include_num_input_tokens_seen"] is True
    assert given(["--include-num-input-tokens-seen", "non_padding"])["include_num_input_tokens_seen"] == "non_padding"
    assert given(["--report-to", "tensorboard", "wandb"])["report_to"] == ["tensorboard", "wandb"]
    with pytest.raises(
        UsageError, match=r"argument --lr-scheduler-type: invalid choice 'cosin' \(did you mean cosine\?\)"
    ):
        given(["--lr-scheduler-type", "cosin"])
    with pytest.raises(UsageError, match="argument --log-level: invalid choice 'loud'"):
        given(["--log-level", "loud"])


# ---- a recipe's switch turned off by a flag ----------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "flags", "field", "value"),
    [
        ("load_in_4bit: true", [], "quantization", "int4"),
        ("load_in_4bit: true", ["--no-load-in-4bit"], "quantization", None),
        ("load_in_8bit: true", ["--load-in-8bit", "false"], "quantization", None),
        ("quantization: int4", ["--quantization", "none"], "quantization", None),
        ("load_in_4bit: true", ["--quantization", "int8"], "quantization", "int8"),
        ("use_flash_attention_2: true", [], "attn_implementation", "flash_attention_2"),
        ("use_flash_attention_2: true", ["--no-use-flash-attention-2"], "attn_implementation", None),
        ("use_flash_attention_2: true", ["--attn-implementation", "sdpa"], "attn_implementation", "sdpa"),
        ("gradient_checkpointing: true", ["--no-gradient-checkpointing"], "activation_checkpointing", False),
        ("disable_gradient_checkpointing: true", [], "activation_checkpointing", False),
        (
            "disable_gradient_checkpointing: true",
            ["--disable-gradient-checkpointing", "false"],
            "activation_checkpointing",
            True,
        ),
        ("activation_checkpointing: true", ["--disable-gradient-checkpointing"], "activation_checkpointing", False),
        ("mixed_precision: fp16", ["--mixed-precision", "no"], "fp16", False),
        ("use_peft: true", ["--no-peft"], "use_peft", False),
    ],
)
def test_a_flag_turns_a_recipe_switch_off(tmp_path, recipe, flags, field, value):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: m\ndata_path: d.jsonl\n{recipe}\n", encoding="utf-8")
    resolved = resolve(*train_sources(["--config", str(path), *flags])[0])
    owner = next(a for a in (resolved.model, resolved.data, resolved.config) if hasattr(a, field))
    assert getattr(owner, field) == value


# ---- one field, one value per place ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--beta", "0.1", "--beta", "0.2"], "--beta given twice; keep one"),
        (["--max_length", "9", "--max-length", "10"], "--max-length given twice; keep one"),
        (["--report-to", "a", "--report-to", "b"], "--report-to given twice; keep one"),
        (["--lr", "1e-5", "--learning-rate", "1e-5"], "--lr and --learning-rate both set learning_rate; keep one"),
        (["--load-in-4bit", "--quantization", "int8"], "--load-in-4bit and --quantization both set quantization"),
        (["--block-size", "64", "--max-length", "64"], "--block-size and --max-length both set max_length"),
        (["--mixed-precision", "bf16", "--fp16"], "--mixed-precision and --fp16 both set fp16; keep one"),
        (["--peft", "--no-peft"], "--peft and --no-peft both set use_peft; keep one"),
        (["--config", "a.yaml", "--config", "b.yaml"], "--config given twice; keep one"),
    ],
)
def test_a_field_set_twice_on_the_command_line_is_an_error(argv, message):
    with pytest.raises(UsageError) as caught:
        given(["--model", "m", *argv])
    assert message in str(caught.value)


def test_the_repeated_flag_error_on_the_command_line():
    result = run(orpo_command("train", "--model", "m", "--data-path", "d.jsonl", "--beta", "0.1", "--beta", "0.2"))
    line = assert_one_line_error(result, 2, "--beta given twice; keep one")
    assert line == "orpo train: error: --beta given twice; keep one"


def test_fallback_spellings_do_not_clash():
    """AutoTrain's model_max_length is max_length only where nothing else sets it; batch_size sets eval's too."""
    assert given(["--model-max-length", "512"])["max_length"] == 512
    assert given(["--model-max-length", "512", "--block-size", "128"])["max_length"] == 128
    assert given(["--batch-size", "4"])["per_device_eval_batch_size"] == 4
    assert given(["--batch-size", "4", "--per-device-eval-batch-size", "16"])["per_device_eval_batch_size"] == 16
    assert given(["--block-size", "-1"]).get("max_length") is None
