"""AutoTrain compatibility: the documented `aitraining llm ... --trainer orpo` Quick Start, run unchanged."""

from __future__ import annotations

import json

import pytest

from _cli_support import aitraining_command, assert_one_line_error, run, save_tiny_model, write_pairs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("aitraining")
    save_tiny_model(root / "model")
    write_pairs(root / "preferences.jsonl", 16)
    return root


def test_quick_start_runs_unchanged(workspace):
    # AutoTrain's ORPO Quick Start, word for word but for a local model and file.
    result = run(
        aitraining_command(
            "llm",
            "--train",
            "--model",
            "./model",
            "--data-path",
            "./preferences.jsonl",
            "--project-name",
            "gemma-orpo",
            "--trainer",
            "orpo",
            "--prompt-text-column",
            "prompt",
            "--text-column",
            "chosen",
            "--rejected-text-column",
            "rejected",
            "--peft",
        ),
        cwd=workspace,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    project = workspace / "gemma-orpo"
    # AutoTrain's defaults: LoRA merged into a full model in the project dir (adapter kept in adapter/)
    assert (project / "model.safetensors").is_file() and (project / "config.json").is_file()
    assert (project / "adapter" / "adapter_config.json").is_file()
    params = json.loads((project / "training_params.json").read_text())
    assert params["trainer"] == "orpo" and params["dpo_beta"] == 0.1 and params["peft"] is True
    assert (project / "training_curves.png").is_file()
    state = json.loads((project / "trainer_state.json").read_text())
    # 16 pairs, batch_size 2 x gradient_accumulation 4 (AutoTrain's defaults), 1 epoch -> 2 steps
    assert state["global_step"] == 2
    assert "ORPO training summary" in result.stdout


def test_other_trainers_get_a_clear_message(workspace):
    result = run(
        aitraining_command("llm", "--train", "--model", "./model", "--data-path", "x", "--trainer", "dpo"),
        cwd=workspace,
    )
    assert_one_line_error(result, 2, "trainer 'dpo' is not supported")


def test_aitraining_usage_errors_in_process(capsys):
    from orpo.cli import aitraining_main

    assert aitraining_main(["text-classification", "--train"]) == 2
    assert "only `aitraining llm --trainer orpo`" in capsys.readouterr().err
    assert aitraining_main(["llm", "--model", "m"]) == 2
    assert "nothing to do: pass --train" in capsys.readouterr().err
    assert aitraining_main(["llm", "--train", "--lerning-rate", "1"]) == 2
    assert "unknown flag --lerning-rate" in capsys.readouterr().err
    assert aitraining_main(["llm", "--train", "--backend", "spaces-a10g-large"]) == 2
    assert "backend 'spaces-a10g-large' is not supported" in capsys.readouterr().err
    assert aitraining_main(["llm", "--train", "--quantization", "int3"]) == 2
    assert "argument --quantization: invalid choice 'int3' (did you mean int8?)" in capsys.readouterr().err
    assert aitraining_main(["llm", "--train", "--lr", "1e-5", "--lr", "2e-5"]) == 2
    assert "aitraining llm: error: --lr given twice; keep one" in capsys.readouterr().err
    assert aitraining_main(["llm", "--train", "--model-ref", "gpt2"]) == 2
    assert "ORPO uses no reference model: drop model_ref" in capsys.readouterr().err
