"""`--model` as a LoRA adapter (continued, or merged first) and LoraConfig options from the CLI/YAML."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import orpo.training.run
from _cli_support import save_tiny_model, write_pairs
from orpo.cli.train import train_sources
from orpo.config.resolve import resolve
from orpo.config.usage import UsageError
from orpo.models.sources import lora_config
from orpo.training.run import build_trainer, finish_training

ALPHA, R = 16, 4


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny base model and an 'SFT' adapter on it with non-zero B (so merging changes the weights)."""
    root = tmp_path_factory.mktemp("start")
    base = save_tiny_model(root / "base")
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(root / "adapter"))
    write_pairs(root / "prefs.jsonl", 8)
    return root


def args(start, *extra: str, out: str = "out", model: str = "adapter"):
    argv = ["--model", str(start / model), "--data-path", str(start / "prefs.jsonl"), "--output-dir"]
    sources, _ = train_sources([*argv, str(start / out), "--report-to", "none", "--max-steps", "2", *extra])
    return resolve(*sources)


def test_adapter_is_continued_on_its_base(start):
    resolved = args(start, "--per-device-train-batch-size", "4", "--learning-rate", "1e-2", out="continued")
    trainer = build_trainer(resolved.model, resolved.data, resolved.config, console=False)
    assert isinstance(trainer.model, PeftModel)
    saved = load_file(str(start / "adapter" / "adapter_model.safetensors"))
    loaded = {n.replace(".default", ""): p for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert set(loaded) == set(saved) and all(torch.equal(loaded[n].detach(), saved[n]) for n in saved)
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == {
        n for n, _ in trainer.model.named_parameters() if "lora_" in n
    }
    result = finish_training(trainer, model_args=resolved.model, console=False)
    out = json.loads((start / "continued" / "adapter_config.json").read_text())
    assert out["base_model_name_or_path"] == str((start / "base").resolve()) and result.adapter_dir
    trained = load_file(str(start / "continued" / "adapter_model.safetensors"))
    assert set(trained) == set(saved) and any(not torch.equal(trained[n], saved[n]) for n in saved)


def test_adapter_merged_first_then_new_lora(start):
    resolved = args(start, "--merge-start-adapter", "--peft", "--lora-r", "2")
    trainer = build_trainer(resolved.model, resolved.data, resolved.config, console=False)
    base = AutoModelForCausalLM.from_pretrained(str(start / "base")).state_dict()
    adapter = load_file(str(start / "adapter" / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = adapter[f"{prefix}.lora_A.weight"].double(), adapter[f"{prefix}.lora_B.weight"].double()
    expected = base["model.layers.0.self_attn.q_proj.weight"].double() + (ALPHA / R) * b @ a
    merged = dict(trainer.model.named_parameters())[
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    ]
    torch.testing.assert_close(merged.detach().double(), expected, rtol=0, atol=1e-6)
    assert trainer.model.peft_config["default"].r == 2  # the new adapter


def test_start_adapter_errors(start, monkeypatch):
    monkeypatch.setattr(orpo.training.run, "load_data", lambda *a: pytest.fail("data read before the check"))
    resolved = args(start, "--peft")
    with pytest.raises(UsageError, match="--model is a LoRA adapter, which is trained on as it is: drop --peft"):
        build_trainer(resolved.model, resolved.data, resolved.config, console=False)
    plain = args(start, "--merge-start-adapter", model="base")
    with pytest.raises(UsageError, match="--merge-start-adapter: --model is not a LoRA adapter directory"):
        build_trainer(plain.model, plain.data, plain.config, console=False)


def test_dora_rslora_and_lora_config_from_flags_and_yaml(start, tmp_path):
    flags = args(start, "--peft", "--use-dora", "--use-rslora", "--lora-config", '{"init_lora_weights": false}')
    config = lora_config(flags.model)
    assert config.use_dora and config.use_rslora and config.init_lora_weights is False and config.bias == "none"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("use_peft: true\nlora_config:\n  rank_pattern: {q_proj: 8}\n  bias: lora_only\n")
    sources, _ = train_sources(["--config", str(recipe), "--model", "m", "--data-path", "d", "--output-dir", "o"])
    config = lora_config(resolve(*sources).model)
    assert config.rank_pattern == {"q_proj": 8} and config.bias == "lora_only" and not config.use_dora


def test_lora_config_bad_keys_fail_before_data(start, monkeypatch):
    monkeypatch.setattr(orpo.training.run, "load_data", lambda *a: pytest.fail("data read before the check"))
    unknown = args(start, "--peft", "--lora-config", '{"use_dorra": true}', model="base")
    with pytest.raises(
        UsageError, match=r"lora_config: unknown key 'use_dorra'; LoraConfig takes: .*init_lora_weights"
    ):
        build_trainer(unknown.model, unknown.data, unknown.config, console=False)
    own = args(start, "--peft", "--lora-config", '{"r": 8}', model="base")
    with pytest.raises(UsageError, match="lora_config: key 'r' has its own option: --lora-r"):
        build_trainer(own.model, own.data, own.config, console=False)
    clash = args(start, "--peft", "--lora-config", '{"layers_to_transform": [0]}', model="base")
    with pytest.raises(UsageError, match="LoRA options: `layers_to_transform` cannot be used when `target_modules`"):
        build_trainer(clash.model, clash.data, clash.config, console=False)
