"""`orpo demo`: the fast mode end to end, and the shipped assets are what build_assets makes."""

from __future__ import annotations

import json
import re

from _cli_support import orpo_command, run

from orpo.demo import ASSETS, check_answer, load_rows, load_tokenizer
from orpo.demo.build_assets import build_data, build_tokenizer, corpus


def test_fast_demo_runs_offline(tmp_path):
    out = tmp_path / "demo"
    result = run(orpo_command("demo", "--fast", "--output-dir", str(out)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for needle in (
        "before training",
        "after training",
        "held-out preference accuracy",
        "ORPO training summary",
        "curves:",
    ):
        assert needle in text, needle
    accuracies = [float(x) for x in re.findall(r"held-out preference accuracy\s+([\d.]+)%", text)]
    assert len(accuracies) == 2
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["eval_metrics"]["eval_rewards/accuracies"] >= 0


def test_shipped_assets_are_reproducible():
    train, heldout = build_data()
    assert load_rows("train.jsonl") == train and load_rows("heldout.jsonl") == heldout
    held_sums = {row["chosen"][0]["content"].split(" = ")[0] for row in heldout}
    train_sums = {row["chosen"][0]["content"].split(" = ")[0] for row in train}
    assert held_sums and not held_sums & train_sums  # held-out sums are never trained on
    shipped = load_tokenizer()
    assert shipped.get_vocab() == build_tokenizer(corpus(train)).get_vocab()
    assert shipped.chat_template and shipped.eos_token == "<|im_end|>"
    assert [shipped.decode([i]) for i in shipped("127", add_special_tokens=False)["input_ids"]] == ["1", "2", "7"]
    assert (ASSETS / "tokenizer.json").is_file()


def test_answer_checker():
    assert check_answer("What is 6 + 17?", "6 + 17 = 23") == (True, True)
    assert check_answer("Compute 6 + 17.", "6 + 17 = 22") == (True, False)
    assert check_answer("6 + 17 = ?", "Hmm, I think it is 23") == (False, False)
    assert check_answer("What is 6 + 17?", "7 + 17 = 24") == (False, False)
