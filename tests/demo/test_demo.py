"""`orpo demo`: the fast mode end to end, its verdicts, the checks it applies, and the shipped assets."""

from __future__ import annotations

import re
from types import SimpleNamespace

from _cli_support import orpo_command, run
from orpo.demo import ASSETS, load_rows, load_tokenizer
from orpo.demo.build_assets import HEDGES, build_data, build_tokenizer, corpus
from orpo.demo.experiment import MEASURES
from orpo.demo.report import print_results
from orpo.demo.task import is_correct, is_hedged, operands

ROW = re.compile(r"^  (\S.*?)\s{2,}(-?[\d.+]+%?)\s+(-?[\d.+]+%?)\s+(-?[\d.+]+%?)\s*(ORPO|SFT|tie)?$")


def test_fast_demo_runs_offline(tmp_path):
    out = tmp_path / "demo"
    result = run(orpo_command("demo", "--fast", "--output-dir", str(out)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for needle in (
        "1. base model: SFT on 96 answers that all hedge",
        "SFT  (beta=0): 16 steps",
        "ORPO (beta=2): 16 steps",
    ):
        assert needle in text, needle
    table = {m.group(1): m.groups()[1:] for m in map(ROW.match, text.splitlines()) if m}
    assert list(table) == [label for label, _, _ in MEASURES]
    for label, _, direction in MEASURES:  # the "better" column follows from the printed numbers
        _, sft, orpo, better = table[label]
        if direction == 0:
            assert better is None
            continue
        sft_value, orpo_value = float(sft.rstrip("%")), float(orpo.rstrip("%"))
        assert better == (
            "tie" if sft_value == orpo_value else "ORPO" if (orpo_value - sft_value) * direction > 0 else "SFT"
        )
    wins = sum(row[3] == "ORPO" for row in table.values())
    assert f"ORPO was better on {wins} of 6 measures." in text
    assert (out / "logps.png").stat().st_size > 10_000
    for name in ("base", "sft", "orpo"):
        assert (out / name / "model.safetensors").is_file() and (out / name / "tokenizer.json").is_file()
    heldout = ASSETS / "heldout.jsonl"  # run from tmp_path, so not relative to the working directory
    assert f"try     orpo eval {out / 'orpo'} {heldout} --compare {out / 'sft'} --by kind --samples 3" in text


def test_verdicts_name_what_sft_did_better():
    measured = {key: 0.5 for _, key, _ in MEASURES}
    samples = [["1 + 2 = 3"]]
    results = {
        "base": {**measured, "sampled": samples},
        "sft": {**measured, "accuracy_wrong": 0.9, "hedged_sampled": 0.4, "sampled": samples},
        "orpo": {**measured, "accuracy_wrong": 0.8, "hedged_sampled": 0.1, "sampled": samples},
    }
    demo = SimpleNamespace(prompts=["What is 1 + 2?"], samples=1)
    verdicts = print_results(demo, results)
    assert verdicts == {
        "accuracy_hedged": "tie",
        "accuracy_wrong": "SFT",
        "hedged_greedy": "tie",
        "hedged_sampled": "ORPO",
        "correct_greedy": "tie",
        "correct_sampled": "tie",
    }


def test_verdict_text(capsys):
    measured = {key: 0.5 for _, key, _ in MEASURES}
    samples = [["1 + 2 = 3"]]
    results = {
        "base": {**measured, "sampled": samples},
        "sft": {**measured, "accuracy_wrong": 0.9, "sampled": samples},
        "orpo": {**measured, "accuracy_wrong": 0.8, "sampled": samples},
    }
    print_results(SimpleNamespace(prompts=["What is 1 + 2?"], samples=1), results)
    text = capsys.readouterr().out
    assert (
        "ORPO was better on 0 of 6 measures. SFT was better on: preference accuracy, wrong pairs (90.0% vs 80.0%)."
        in text
    )
    assert "Tied: preference accuracy, hedged pairs; hedged generations, greedy;" in text


def test_checks():
    assert is_correct("What is 6 + 17?", "6 + 17 = 23") and not is_hedged("6 + 17 = 23")
    assert is_correct("Compute 6 + 17.", "6 + 17 = 23, I think.") and is_hedged("6 + 17 = 23, I think.")
    assert not is_correct("6 + 17 = ?", "6 + 17 = 22") and not is_correct("What is 6 + 17?", "7 + 17 = 24")
    assert not is_correct("How much is 6 plus 17?", "It is 23") and operands("How much is 6 plus 17?") == (6, 17)
    assert all(is_hedged(f"1 + 2 = 3{hedge}") for hedge in HEDGES)


def test_shipped_assets_are_reproducible():
    base, train, heldout = build_data()
    assert (
        load_rows("base.jsonl") == base and load_rows("train.jsonl") == train and load_rows("heldout.jsonl") == heldout
    )
    sums = lambda rows: {operands(row["prompt"][0]["content"]) for row in rows}  # noqa: E731
    assert len(sums(heldout)) == 80 and not sums(heldout) & (sums(train) | sums(base))  # never trained on
    assert sums(train) == sums(base) and len(sums(train)) == 320
    text = lambda row, key: row[key][0]["content"]  # noqa: E731
    for row in train + heldout:
        chosen, rejected = text(row, "chosen"), text(row, "rejected")
        if row["kind"] == "hedged":  # the same right sum, once plain, once hedged
            assert is_correct(text(row, "prompt"), chosen) and not is_hedged(chosen)
            assert rejected.startswith(chosen) and rejected[len(chosen) :] in HEDGES
        else:  # right over wrong, both with the same hedge
            assert row["kind"] == "wrong" and is_correct(text(row, "prompt"), chosen)
            hedge = next(h for h in HEDGES if chosen.endswith(h))
            assert rejected.endswith(hedge) and not is_correct(text(row, "prompt"), rejected)
    assert all(is_hedged(text(row, "chosen")) and is_correct(text(row, "prompt"), text(row, "chosen")) for row in base)
    assert [row["kind"] for row in train].count("hedged") == len(train) // 2
    shipped = load_tokenizer()
    assert shipped.get_vocab() == build_tokenizer(corpus(base + train)).get_vocab()
    assert shipped.chat_template and shipped.eos_token == "<|im_end|>"
    assert [shipped.decode([i]) for i in shipped("127", add_special_tokens=False)["input_ids"]] == ["1", "2", "7"]
    assert (ASSETS / "tokenizer.json").is_file()
