"""Checked at load: damaged model, tokenizer and adapter files are named (orpo.models.damaged), and a tokenizer
with more tokens than the model's embeddings is refused or, with --resize-embeddings, fitted
(orpo.models.checks); through the CLI's main(), one line, no traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from _cli_support import save_tiny_model, write_pairs
from orpo.cli import main

EXTRA_TOKENS = 10


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny model, an adapter on it, and preference data."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("guards")
    save_tiny_model(root / "model")
    write_pairs(root / "prefs.jsonl", 4)
    base = AutoModelForCausalLM.from_pretrained(str(root / "model"))
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    adapter.save_pretrained(str(root / "adapter"))
    config_file = root / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(root / "model")
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return root


def _copy(workspace, tmp_path, name: str = "model"):
    target = tmp_path / name
    shutil.copytree(workspace / name, target)
    return target


def _cut(path) -> tuple[int, int]:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data) // 2, len(data)


def _truncated_safetensors(workspace, tmp_path):
    model = _copy(workspace, tmp_path)
    half, full = _cut(model / "model.safetensors")
    return model, model, f"{model}/model.safetensors: truncated or corrupt (has {half} of its {full} bytes)"


def _corrupt_bin(workspace, tmp_path):
    import torch
    from safetensors.torch import load_file

    model = _copy(workspace, tmp_path)
    weights = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    torch.save(weights, model / "pytorch_model.bin")
    _cut(model / "pytorch_model.bin")
    return (
        model,
        model,
        f"{model}/pytorch_model.bin: truncated or corrupt (incomplete zip archive, its central directory is missing)",
    )


def _invalid_config(workspace, tmp_path):
    model = _copy(workspace, tmp_path)
    (model / "config.json").write_text('{"model_type": "llama",\n  "vocab_size": 382,,\n}', encoding="utf-8")
    cause = "invalid JSON: Expecting property name enclosed in double quotes at line 2, column 21"
    return model, model, f"{model}/config.json: truncated or corrupt ({cause})"


def _invalid_tokenizer(workspace, tmp_path):
    model = _copy(workspace, tmp_path)
    (model / "tokenizer.json").write_text('{"version": "1.0",\n  "truncation": nul', encoding="utf-8")
    cause = "invalid JSON: Expecting value at line 2, column 17"
    return model, model, f"{model}/tokenizer.json: truncated or corrupt ({cause})"


def _truncated_adapter(workspace, tmp_path):
    adapter = _copy(workspace, tmp_path, "adapter")
    half, full = _cut(adapter / "adapter_model.safetensors")
    return (
        adapter,
        adapter,
        f"{adapter}/adapter_model.safetensors: truncated or corrupt (has {half} of its {full} bytes)",
    )


DAMAGES = {
    "truncated model.safetensors": _truncated_safetensors,
    "corrupt pytorch_model.bin": _corrupt_bin,
    "invalid config.json": _invalid_config,
    "invalid tokenizer.json": _invalid_tokenizer,
    "truncated adapter_model.safetensors": _truncated_adapter,
}


def _one_error(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0].removeprefix(f"{prog}: error: ")


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_damaged_file_is_named(workspace, tmp_path, capsys, monkeypatch, command, damage):
    monkeypatch.delenv("ORPO_DEBUG", raising=False)
    model, _, message = DAMAGES[damage](workspace, tmp_path)
    data = str(workspace / "prefs.jsonl")
    if command == "train":
        argv = ["train", "--model", str(model), "--data-path", data, "--max-steps", "1"]
        argv += ["--output-dir", str(tmp_path / "out")]
    else:
        argv = ["eval", str(model), data, "--device", "cpu"]
    assert main(argv) == 1
    assert _one_error(capsys, f"orpo {command}") == message


def test_a_damaged_file_is_named_by_data_inspect(workspace, tmp_path, capsys):
    model, _, message = _invalid_tokenizer(workspace, tmp_path)
    assert main(["data", "inspect", str(workspace / "prefs.jsonl"), "--model", str(model)]) == 2
    assert _one_error(capsys, "orpo data inspect") == message


def test_a_good_model_is_not_checked(workspace, monkeypatch):
    """The files are only looked at when a load fails."""
    import orpo.models.damaged as damaged
    from orpo.models.loading import load_model_and_processor

    monkeypatch.setattr(damaged, "find_damaged", lambda *a: pytest.fail("files checked on a good load"))
    load_model_and_processor(str(workspace / "model"))


def test_another_failure_is_left_as_it_is(workspace, tmp_path):
    from orpo.models.loading import load_model_and_processor

    model = _copy(workspace, tmp_path)
    (model / "model.safetensors").unlink()
    with pytest.raises(OSError) as info:
        load_model_and_processor(str(model))
    assert "truncated or corrupt" not in str(info.value)


# ---- the tokenizer against the embeddings ------------------------------------------------


@pytest.fixture(scope="module")
def big_tokenizer(workspace):
    """The tiny model with a tokenizer of 10 more tokens than its embeddings have rows."""
    from transformers import AutoTokenizer

    target = workspace / "big"
    shutil.copytree(workspace / "model", target)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(EXTRA_TOKENS)])
    tokenizer.save_pretrained(str(target))
    return target, len(tokenizer)


def _too_small(model, tokens: int, rows: str) -> str:
    return (
        f"{model}: the tokenizer has {tokens} tokens (ids up to {tokens - 1}, added and special tokens included) "
        f"but {rows}: ids from {tokens - EXTRA_TOKENS} on would fail at the first step (index out of range); resize "
        "the embeddings (orpo train --resize-embeddings, YAML resize_embeddings: true; Python: "
        "model.resize_token_embeddings(len(tokenizer))) or use the model's own tokenizer"
    )


def test_train_refuses_a_tokenizer_larger_than_the_embeddings(workspace, big_tokenizer, tmp_path, capsys, monkeypatch):
    import orpo.training.trainer as trainer

    monkeypatch.setattr(trainer.ORPOTrainer, "_prepare_datasets", lambda *a: pytest.fail("data prepared first"))
    model, tokens = big_tokenizer
    argv = ["train", "--model", str(model), "--data-path", str(workspace / "prefs.jsonl"), "--max-steps", "1"]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    rows = f"the model's input embeddings have {tokens - EXTRA_TOKENS} rows"
    assert _one_error(capsys, "orpo train") == _too_small(model, tokens, rows)


def test_eval_refuses_a_tokenizer_larger_than_the_embeddings(workspace, big_tokenizer, capsys):
    model, tokens = big_tokenizer
    assert main(["eval", str(model), str(workspace / "prefs.jsonl"), "--device", "cpu"]) == 2
    rows = f"the model's input embeddings have {tokens - EXTRA_TOKENS} rows"
    assert _one_error(capsys, "orpo eval") == _too_small(model, tokens, rows)


def test_data_inspect_reads_the_vocab_size_from_the_config(workspace, big_tokenizer, capsys, monkeypatch):
    import orpo.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    model, tokens = big_tokenizer
    data = str(workspace / "prefs.jsonl")
    assert main(["data", "inspect", data, "--model", str(model)]) == 2
    rows = f"the model config's vocab_size is {tokens - EXTRA_TOKENS}"
    assert _one_error(capsys, "orpo data inspect") == _too_small(model, tokens, rows)
    assert main(["data", "inspect", data, "--model", str(model), "--resize-embeddings"]) == 0  # as train will


def test_resize_embeddings_trains_and_saves_the_larger_model(workspace, big_tokenizer, tmp_path, capsys):
    from transformers import AutoConfig

    model, _ = big_tokenizer
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {model}\ndataset_name: {workspace / 'prefs.jsonl'}\nmax_steps: 1\n"
        f"save_strategy: 'no'\noutput_dir: {tmp_path / 'out'}\nresize_embeddings: true\n",
        encoding="utf-8",
    )
    assert main(["train", "--config", str(recipe)]) == 0, capsys.readouterr().err
    assert AutoConfig.from_pretrained(str(tmp_path / "out")).vocab_size == 448  # 392 up to a multiple of 64
    assert main(["eval", str(tmp_path / "out"), str(workspace / "prefs.jsonl"), "--device", "cpu", "--json"]) == 0


def test_the_field_is_one_option_everywhere():
    from orpo.cli.train import train_sources
    from orpo.config.arguments import ModelArguments
    from orpo.config.options import merge

    assert ModelArguments().resize_embeddings is False
    for flag in ("--resize-embeddings", "--resize_embeddings", "--resize-token-embeddings"):
        assert merge(*train_sources(["--model", "m", "--data-path", "d", flag])[0])["resize_embeddings"] is True


def test_chat_template_tokens_count(workspace):
    """Ids the chat template's special tokens map to count, also beyond len(tokenizer) and the vocabulary."""
    from transformers import AutoTokenizer

    from orpo.models.checks import token_id_range

    tokenizer = AutoTokenizer.from_pretrained(str(workspace / "model"))
    assert token_id_range(tokenizer) == (len(tokenizer), len(tokenizer))

    class Stub:  # a tokenizer whose template token maps to an id its length does not cover
        chat_template = "{{ '<|im_start|>' + message['content'] + '<|unknown|>' }}"
        unk_token_id = 0
        all_special_ids = (1,)

        def __len__(self) -> int:
            return 10

        def get_vocab(self) -> dict:
            return {"a": 2}

        def convert_tokens_to_ids(self, token: str) -> int:
            return 500 if token == "<|im_start|>" else 0

    assert token_id_range(Stub()) == (10, 501)
