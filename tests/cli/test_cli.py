"""`orpo train`: flags generated from ORPOConfig, aliases, YAML recipes, real runs and error paths."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from _cli_support import assert_one_line_error, orpo_command, run, save_tiny_model, write_pairs
from orpo import ORPOConfig
from orpo.cli import main
from orpo.cli.train import build_train_parser, train_sources
from orpo.config.options import merge, option_table
from orpo.config.resolve import recipe_source, resolve
from orpo.config.usage import UsageError

RECIPES = Path(__file__).resolve().parents[2] / "src" / "orpo" / "config" / "recipes"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_tiny_model(root / "model")
    write_pairs(root / "prefs.jsonl", 16)
    return root


def explicit(argv: list[str]) -> dict:
    """The fields the command line (and its --config recipe) set, converted."""
    sources, _ = train_sources(argv)
    return merge(*sources)


def resolved(argv: list[str]):
    sources, _ = train_sources(argv)
    return resolve(*sources)


# ---- flags <-> fields ------------------------------------------------------------------


def _sample(option) -> str:
    """A valid command-line value for an option, by its kind."""
    if option.name == "debug":
        return "underflow_overflow"
    if option.kind.choices:
        return option.kind.choices[0]
    return {"BOOL": "true", "INT": "3", "FLOAT": "0.5", "JSON": '{"a": 1}'}.get(option.kind.metavar, "x")


def test_every_config_field_is_a_flag_and_every_flag_a_field():
    fields = {f.name for f in dataclasses.fields(ORPOConfig) if f.init}
    table = option_table()
    assert table.names("orpo") | table.names("training") == fields
    parser_flags = {flag for action in build_train_parser()._actions for flag in action.option_strings}
    for name in fields:
        assert f"--{name}" in parser_flags, name
        assert f"--{name.replace('_', '-')}" in parser_flags, name
    # Every generated field flag maps back to exactly its field.
    for name in sorted(fields):
        option = table.options[name]
        if name == "parallelism_config":
            continue  # needs accelerate's ParallelismConfig fields
        assert name in explicit([f"--{name.replace('_', '-')}", _sample(option)]), name


def test_flag_values_are_typed():
    given = explicit(
        [
            "--beta",
            "0.25",
            "--max-length",
            "none",
            "--disable-dropout",
            "false",
            "--report-to",
            "tensorboard",
            "--no-fused-lm-head",
            "--lr-scheduler-kwargs",
            '{"power": 2}',
            "--lora-target-modules",
            "q_proj,v_proj",
        ]
    )
    assert given["beta"] == 0.25
    assert given["max_length"] is None
    assert given["disable_dropout"] is False
    assert given["fused_lm_head"] is False
    assert given["report_to"] == "tensorboard"
    assert given["lr_scheduler_kwargs"] == {"power": 2}
    assert given["lora_target_modules"] == ["q_proj", "v_proj"]


def test_autotrain_spellings_map_to_fields():
    args = resolved(
        [
            "--model",
            "m",
            "--data-path",
            "d.jsonl",
            "--project-name",
            "proj",
            "--trainer",
            "orpo",
            "--lr",
            "2e-5",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--gradient-accumulation",
            "8",
            "--dpo-beta",
            "0.2",
            "--max-completion-length",
            "64",
            "--prompt-text-column",
            "q",
            "--text-column",
            "good",
            "--rejected-text-column",
            "bad",
            "--image-column",
            "img",
            "--peft",
            "--lora-r",
            "8",
            "--lora-alpha",
            "16",
            "--lora-dropout",
            "0.1",
            "--target-modules",
            "q_proj,k_proj",
            "--merge-adapter",
            "--valid-split",
            "test",
            "--log",
            "tensorboard",
            "--warmup-ratio",
            "0.1",
            "--scheduler",
            "cosine",
            "--optimizer",
            "adamw_torch",
            "--mixed-precision",
            "no",
            "--disable-gradient-checkpointing",
            "--chat-template",
            "chatml",
            "--block-size",
            "256",
            "--backend",
            "local",
        ]
    )
    model, data, config, auto_logging = args.model, args.data, args.config, args.auto_logging
    assert (model.model_name_or_path, data.dataset_name, config.output_dir) == ("m", "d.jsonl", "proj")
    assert (config.learning_rate, config.num_train_epochs, config.per_device_train_batch_size) == (2e-5, 2.0, 4)
    assert (config.gradient_accumulation_steps, config.beta, config.max_completion_length) == (8, 0.2, 64)
    assert (data.prompt_text_column, data.text_column, data.rejected_text_column, data.image_column) == (
        "q",
        "good",
        "bad",
        "img",
    )
    assert (
        model.use_peft and model.merge_adapter and (model.lora_r, model.lora_alpha, model.lora_dropout) == (8, 16, 0.1)
    )
    assert model.lora_target_modules == ["q_proj", "k_proj"]
    assert data.dataset_test_split == "test" and config.report_to == ["tensorboard"]
    assert config.warmup_steps == 0.1 and config.lr_scheduler_type == "cosine" and config.optim == "adamw_torch"
    assert config.activation_checkpointing is False and config.max_length == 256 and model.chat_template == "chatml"
    assert auto_logging


def test_unsupported_trainer_and_backend_are_usage_errors():
    with pytest.raises(UsageError, match="trainer 'dpo' is not supported"):
        explicit(["--trainer", "dpo"])
    with pytest.raises(UsageError, match="backend 'spaces-a10g' is not supported"):
        explicit(["--backend", "spaces-a10g"])


# ---- YAML recipes ----------------------------------------------------------------------


def test_yaml_recipe_with_cli_override(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model_name_or_path: some/model\ndataset_name: prefs.jsonl\nbeta: 0.05\n"
        "lr: 5e-6\n"  # AutoTrain's alias; PyYAML reads 5e-6 as a string, converted like a flag value
        "max_length: 128\nmax_prompt_length: 64\nload_in_4bit: true\nlora_target_modules: [q_proj, v_proj]\n"
        "gradient_checkpointing_kwargs:\n  use_reentrant: false\noutput_dir: out\n",
        encoding="utf-8",
    )
    args = resolved(["--config", str(recipe), "--beta", "0.3", "--output-dir", "elsewhere"])
    model, config = args.model, args.config
    assert config.beta == 0.3 and config.output_dir == "elsewhere"  # flags override the file
    assert config.learning_rate == 5e-6
    assert config.max_length == 128 and model.quantization == "int4"
    assert model.lora_target_modules == ["q_proj", "v_proj"]
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_resolve(recipe):
    args = resolved(["--config", str(recipe), "--bf16", "false"])  # this CPU machine
    assert args.model.model_name_or_path and args.data.dataset_name and args.config.output_dir


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"

    def error(text: str) -> str:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(UsageError) as caught:
            merge(recipe_source(bad))
        return str(caught.value)

    assert error("beta: 0.1\nlerning_rate: 0.1\n") == (
        f"{bad}, line 2: unknown key 'lerning_rate' (did you mean learning_rate?)"
    )
    assert error("beta: [1, 2\n").startswith(f"{bad}, line 2: invalid YAML")
    assert error("learning_rate: 0.1\nlr: 0.2\n") == (
        f"{bad}: keys 'learning_rate' and 'lr' both set learning_rate; keep one"
    )
    assert error("beta: 0.1\nbeta: 0.2\n") == f"{bad}: key 'beta' given twice (lines 1 and 2); keep one"
    assert error("seed: 1\nbeta: high\n") == f"{bad}, line 2: key 'beta': expected a number, got 'high'"
    assert error("trainer: dpo\n").startswith(f"{bad}, line 1: trainer 'dpo' is not supported")
    assert error("- beta\n") == f"{bad}: expected a mapping of option: value, got seq"


def test_print_config_round_trips(tmp_path, capsys):
    status = main(["train", "--model", "m", "--data-path", "d.jsonl", "--lr", "1e-4", "--peft", "--print-config"])
    assert status == 0
    text = capsys.readouterr().out
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text, encoding="utf-8")
    args = resolved(["--config", str(recipe)])
    model, data, config = args.model, args.data, args.config
    assert (model.model_name_or_path, data.dataset_name, config.learning_rate, model.use_peft) == (
        "m",
        "d.jsonl",
        1e-4,
        True,
    )
    assert config.output_dir == "runs/m-orpo"


def test_print_config_does_not_check_this_machines_hardware(capsys):
    """A recipe for a GPU machine can be written on a laptop: bf16 is not checked against this one."""
    argv = ["train", "--model", "m", "--data-path", "d.jsonl", "--bf16", "--optim", "adamw_torch", "--print-config"]
    assert main(argv) == 0
    assert "bf16: true" in capsys.readouterr().out
    assert main(["train", "--model", "m", "--data-path", "d.jsonl", "--beta", "-1", "--print-config"]) == 2
    assert "--beta -1: must be a finite number >= 0" in capsys.readouterr().err  # orpo's own checks still apply


def test_the_resume_hint_is_the_same_command_with_resume(monkeypatch):
    from orpo.cli.train import cmd_train, resume_command

    argv = ["--config", "my recipe.yaml", "--resume-from-checkpoint", "runs/x/checkpoint-4", "--lr", "1e-4"]
    assert resume_command(argv) == "orpo train --config 'my recipe.yaml' --lr 1e-4 --resume-from-checkpoint latest"
    assert resume_command(["--resume_from_checkpoint=true"]) == "orpo train --resume-from-checkpoint latest"
    seen = {}

    class Stop(Exception):
        pass

    def fake_run(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr("orpo.training.run.run_training", fake_run)
    with pytest.raises(Stop):
        cmd_train(["--model", "m", "--data-path", "d.jsonl"])
    assert seen["resume_command"] == "orpo train --model m --data-path d.jsonl --resume-from-checkpoint latest"


# ---- real runs (subprocess) ------------------------------------------------------------


def test_train_with_flags_lora_tensorboard(workspace):
    out = workspace / "run-flags"
    result = run(
        orpo_command(
            "train",
            "--model",
            "model",
            "--data-path",
            "prefs.jsonl",
            "--output-dir",
            str(out),
            "--peft",
            "--lora-r",
            "4",
            "--max-steps",
            "6",
            "--batch-size",
            "4",
            "--learning-rate",
            "1e-3",
            "--max-length",
            "64",
            "--max-prompt-length",
            "32",
            "--report-to",
            "tensorboard",
            "--save-strategy",
            "no",
        ),
        cwd=workspace,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # one progress line per logging step, with preference accuracy; then the summary table
    assert "step 6/6" in result.stdout and " acc " in result.stdout
    assert "ORPO training summary" in result.stdout and "rewards/accuracies" in result.stdout
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "training_curves.png").stat().st_size > 10_000
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["health"] and summary["first_last"]["rewards/accuracies"]["last"] is not None
    assert list((out / "runs").rglob("events.out.tfevents*")), "tensorboard logs requested by report_to"
    recipe = (out / "orpo_recipe.yaml").read_text()
    assert "use_peft: true" in recipe and "max_steps: 6" in recipe


def test_train_with_yaml_recipe_full_finetune(workspace):
    out = workspace / "run-yaml"
    recipe = workspace / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: model\ndataset_name: prefs.jsonl\noutput_dir: {out}\nbeta: 0.2\nmax_steps: 50\n"
        "per_device_train_batch_size: 4\nlearning_rate: 1.0e-3\nmax_length: 64\nmax_prompt_length: 32\n"
        "logging_steps: 1\nsave_strategy: 'no'\ndataset_test_split: train[:8]\neval_strategy: steps\neval_steps: 2\n",
        encoding="utf-8",
    )
    result = run(orpo_command("train", "--config", str(recipe), "--max-steps", "4"), cwd=workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # the flag overrode the recipe's max_steps
    assert any("eval_rewards/accuracies" in log for log in state["log_history"])
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "eval_loss" in result.stdout


# ---- error paths -----------------------------------------------------------------------


def test_error_unknown_flag_subprocess(workspace):
    result = run(orpo_command("train", "--model", "model", "--lerning-rate", "0.1"), cwd=workspace)
    assert_one_line_error(result, 2, "unknown flag --lerning-rate", "--learning-rate")


def test_error_missing_data_file_subprocess(workspace):
    result = run(orpo_command("train", "--model", "model", "--data-path", "missing.jsonl"), cwd=workspace)
    assert_one_line_error(result, 1, "missing.jsonl")


def test_error_bad_data_subprocess(workspace):
    bad = workspace / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"\n', encoding="utf-8")
    result = run(orpo_command("train", "--model", "model", "--data-path", str(bad), "--max-steps", "1"), cwd=workspace)
    line = assert_one_line_error(result, 1, "bad.jsonl")
    assert "line 2" in line


@pytest.mark.parametrize(
    ("argv", "status", "needle"),
    [
        (["train", "--model", "m"], 2, "no training data"),
        (["train", "--data-path", "d.jsonl"], 2, "no model"),
        (["train", "--model", "m", "--data-path", "d", "--trainer", "sft"], 2, "trainer 'sft' is not supported"),
        (["train", "--model", "m", "--data-path", "d", "--lr", "fast"], 2, "argument --lr: expected a number"),
        (
            ["train", "--model", "m", "--data-path", "d", "--truncation-mode", "middle"],
            2,
            "argument --truncation-mode: invalid choice 'middle'; choose from keep_end, keep_start",
        ),
        (["train", "--model", "m", "--data-path", "d", "--beta", "-1"], 2, "--beta -1: must be a finite number >= 0"),
        (["train", "--config", "nowhere.yaml"], 1, "config file not found: nowhere.yaml"),
        (["train", "--model", "./no-model", "--data-path", "PREFS"], 1, "model not found: ./no-model"),
        (["train", "--model", "MODEL", "--data-path", "PREFS", "--chat-template", "nonsense"], 2, "chat template"),
        (["train", "stray"], 2, "unexpected argument 'stray'"),
        # refused before the (missing) data is looked at
        (["train", "--model", "MODEL", "--data-path", "./nowhere.jsonl", "--max-steps", "0"], 2, "max_steps=0 trains"),
        (["train", "--model", "MODEL", "--data-path", "./nowhere.jsonl", "--lr", "0"], 2, "learning_rate=0 leaves"),
        (
            ["train", "--model", "MODEL", "--data-path", "./nowhere.jsonl", "--epochs", "0"],
            2,
            "nothing would be trained: num_train_epochs=0 trains no step",
        ),
        (
            [
                "train",
                "--model",
                "MODEL",
                "--data-path",
                "./nowhere.jsonl",
                "--output-dir",
                "fresh",
                "--resume-from-checkpoint",
                "latest",
            ],
            1,
            "nothing to resume: 'fresh' has no complete checkpoint",
        ),
        (["generate", "./no-model", "hi"], 1, "model not found: ./no-model"),
        (["merge", "MODEL", "out"], 1, "not a LoRA adapter directory"),
        (["merge", "./missing-adapter", "out"], 1, "adapter directory not found"),
        (["plot", "./nowhere"], 1, "no trainer_state.json"),
        (["frobnicate"], 2, "unknown command 'frobnicate'"),
        (["data", "explode"], 2, "unknown command 'explode'"),
    ],
)
def test_error_paths_one_line(workspace, capsys, monkeypatch, argv, status, needle):
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("ORPO_DEBUG", raising=False)
    argv = [
        str(workspace / "prefs.jsonl") if a == "PREFS" else str(workspace / "model") if a == "MODEL" else a
        for a in argv
    ]
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    with pytest.raises(FileNotFoundError):
        main(["--debug", "train", "--model", "model", "--data-path", "missing.jsonl"])
    # ... while TrainingArguments' own --debug OPTION still reaches the config
    assert explicit(["--debug", "underflow_overflow"])["debug"] == "underflow_overflow"


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--learning-rate" in out and "--dpo-beta" in out and "--project-name" in out


def test_data_inspect_is_delegated(workspace, capsys, monkeypatch):
    import orpo.cli.inspect as inspect_module

    seen = []
    monkeypatch.setattr(inspect_module, "print_report", lambda args: seen.append(args) or 0)
    assert main(["data", "inspect", "prefs.jsonl", "--model", "model", "--split", "train[:4]"]) == 0
    (args,) = seen
    assert (args.path, args.model_name_or_path, args.dataset_train_split) == ("prefs.jsonl", "model", "train[:4]")
    assert (args.max_length, args.max_prompt_length, args.truncation_mode) == (1024, 512, "keep_end")  # ORPOConfig's
