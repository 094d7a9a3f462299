"""Shipped recipes and launch configs by name, `orpo env`, and the tracker check before data preparation."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from _cli_support import save_tiny_model, write_pairs
from orpo.cli import main
from orpo.cli.train import train_sources
from orpo.config import shipped
from orpo.config.resolve import resolve
from orpo.config.usage import UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_by_name_equals_recipe_by_path():
    by_name, _ = train_sources(["--config", "qwen2-0.5b-lora", "--bf16", "false"])
    by_path, _ = train_sources(["--config", str(shipped.RECIPES_DIR / "qwen2-0.5b-lora.yaml"), "--bf16", "false"])
    assert resolve(*by_name).values == resolve(*by_path).values
    assert resolve(*by_name).model.model_name_or_path == "Qwen/Qwen2-0.5B-Instruct"
    assert shipped.recipe_file("qwen2-0.5b-lora.yaml") == shipped.RECIPES_DIR / "qwen2-0.5b-lora.yaml"


def test_config_list_and_unknown_name(capsys):
    assert main(["train", "--config", "list"]) == 0
    names = capsys.readouterr().out.split()
    assert names == sorted(p.stem for p in shipped.RECIPES_DIR.glob("*.yaml")) and "qwen2-0.5b-lora" in names
    with pytest.raises(
        UsageError,
        match=r"no recipe file or shipped name 'qwen2-0.5b-lorra' \(did you mean qwen2-0.5b-lora\?\); shipped: autotrain",
    ):
        shipped.recipe_file("qwen2-0.5b-lorra")
    assert main(["train", "--config", "qwen-lora"]) == 2
    assert "no recipe file or shipped name 'qwen-lora'" in capsys.readouterr().err
    assert main(["train", "--config", "nope/missing.yaml"]) == 1  # a path: as before
    assert "config file not found: nope/missing.yaml" in capsys.readouterr().err


def test_orpo_config_list_and_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["config", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("qwen2-0.5b-lora", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "zero2", "zero3"):
        assert re.search(rf"^  {re.escape(name)}$", listing, re.MULTILINE), name
    assert main(["config", "path", "fsdp"]) == 0
    assert capsys.readouterr().out.strip() == str(shipped.LAUNCH_DIR / "fsdp.yaml")
    assert main(["config", "path", "zero3"]) == 0
    assert json.loads(Path(capsys.readouterr().out.strip()).read_text())["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_yaml_points_at_the_installed_json(capsys, tmp_path, monkeypatch, stage):
    monkeypatch.chdir(tmp_path)  # accelerate reads the path relative to the working directory
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["config", "path", f"deepspeed_{stage}"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.parent == tmp_path / "cache" / "orpo" / "launch"
    copy, original = (
        yaml.safe_load(printed.read_text()),
        yaml.safe_load((shipped.LAUNCH_DIR / printed.name).read_text()),
    )
    json_file = Path(copy["deepspeed_config"].pop("deepspeed_config_file"))
    assert json_file.is_absolute() and json_file == (shipped.LAUNCH_DIR / f"{stage}.json").resolve()
    assert original["deepspeed_config"].pop("deepspeed_config_file") == f"{stage}.json"
    assert copy == original  # nothing else changed
    assert shipped.launch_file(f"deepspeed_{stage}") == printed  # idempotent


def test_package_data_ships_every_recipe_and_launch_config():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["orpo"]
    shipped_files = [*shipped.RECIPES_DIR.glob("*.yaml"), *shipped.LAUNCH_DIR.iterdir()]
    package = ROOT / "src" / "orpo"
    for file in shipped_files:
        assert any(file.relative_to(package).match(pattern) for pattern in globs), file


def test_orpo_env_text_and_json(capsys, monkeypatch):
    real = metadata.version

    def version(name):
        if name == "deepspeed":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr("orpo.cli.env.metadata.version", version)
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert f"- transformers: {real('transformers')}\n" in text and f"- peft: {real('peft')}\n" in text
    assert "- deepspeed: not installed\n" in text and "- torch cuda available: " in text
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == real("torch") and info["orpo"] == real("orpo") and info["deepspeed"] == "not installed"
    assert set(info) >= {"python", "platform", "tokenizers", "safetensors", "trl", "liger-kernel", "flash-attn"}
    assert isinstance(info["torch cuda available"], bool) and isinstance(info["torch devices"], list)


def test_missing_tracker_fails_before_data_preparation(tmp_path, monkeypatch, capsys):
    import importlib.util

    import orpo.training.run

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.setattr(
        orpo.training.run, "load_data", lambda *a: pytest.fail("data prepared before the tracker check")
    )
    save_tiny_model(tmp_path / "model")
    write_pairs(tmp_path / "prefs.jsonl", 4)
    argv = ["train", "--model", str(tmp_path / "model"), "--data-path", str(tmp_path / "prefs.jsonl")]
    assert main([*argv, "--output-dir", str(tmp_path / "out"), "--report-to", "tensorboard", "wandb"]) == 2
    err = capsys.readouterr().err
    assert err == "orpo train: error: --report-to wandb needs wandb: pip install 'orpo[wandb]'\n"
