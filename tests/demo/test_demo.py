"""`orpo demo`: the default run's claims all pass, the claim checks themselves, the module layout, the assets."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest

from _cli_support import orpo_command, run
from orpo.demo import ASSETS, load_rows, load_tokenizer
from orpo.demo.build_assets import HEDGES, build_data, build_tokenizer, corpus
from orpo.demo.claims import CLAIMS, MEASURES, Claim, check_claims
from orpo.demo.records import Setup
from orpo.demo.report import print_claims
from orpo.demo.task import is_correct, is_hedged, operands

CLAIM_LINE = re.compile(r"^  (PASS|FAIL|----)  (.+?): ORPO (\S+) vs SFT (\S+) \(margin (.+) (>|<=) (.+) required\)$")
SETUP = Setup(80, 640, 640, 160, ("a", "b"), ("c", "d"), 1, 320, 600, 300, 16, 0, 1, False)


def test_default_demo_claims_all_pass(tmp_path):
    """The demo as `make demo` runs it (default seed): every claim it states holds, with its margin printed."""
    out = tmp_path / "demo"
    result = run(orpo_command("demo", "--output-dir", str(out)), cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for needle in ("1. base model: SFT on 640 answers that all hedge", "SFT  (beta=0): 300 steps", "ORPO (beta=2)"):
        assert needle in text, needle
    lines = [m.groups() for m in map(CLAIM_LINE.match, text.splitlines()) if m]
    assert [line[1] for line in lines] == [claim.text for claim in CLAIMS]
    assert [line[0] for line in lines] == ["PASS"] * len(CLAIMS), "\n".join(text.splitlines()[-30:])
    assert f"all {len(CLAIMS)} claims hold" in text and "FAIL" not in text
    labels = [line[2:42].rstrip() for line in text.splitlines() if line[2:42].rstrip() in {m[0] for m in MEASURES}]
    assert labels == [label for label, _, _ in MEASURES]  # the information table, in order
    assert "better" not in text and "was better on" not in text  # no one-run verdicts any more
    assert (out / "logps.png").stat().st_size > 10_000
    for name in ("base", "sft", "orpo"):
        assert (out / name / "model.safetensors").is_file() and (out / name / "tokenizer.json").is_file()
    heldout = ASSETS / "heldout.jsonl"  # run from tmp_path, so not relative to the working directory
    assert f"try     orpo eval {out / 'orpo'} {heldout} --compare {out / 'sft'} --by kind --samples 3" in text


@pytest.mark.parametrize("direction", [1, -1])
def test_claim_passes_only_beyond_its_margin(direction):
    """ORPO must be ahead of SFT in the claim's direction by more than ``required``; equal or behind fails."""
    claim = Claim("x", "k", direction, 0.25, False)
    ahead = lambda by: claim.check(sft=1.0, orpo=1.0 + direction * by)  # noqa: E731
    assert ahead(0.30).passed and ahead(0.30).margin == pytest.approx(0.30)
    assert not ahead(0.20).passed and not ahead(0.25).passed
    assert not ahead(-0.30).passed and ahead(-0.30).margin == pytest.approx(-0.30)
    assert not ahead(0.0).passed


def test_claim_lines():
    """The PASS/FAIL text carries both values, the margin and the requirement, with the right relation."""
    rate = Claim("ORPO hedges less", "hedged_greedy", -1, 0.20, True)
    assert rate.check(0.5, 0.0).line() == (
        "PASS  ORPO hedges less: ORPO 0.0% vs SFT 50.0% (margin 50.0 points > 20.0 points required)"
    )
    assert rate.check(0.3, 0.2).line() == (
        "FAIL  ORPO hedges less: ORPO 20.0% vs SFT 30.0% (margin 10.0 points <= 20.0 points required)"
    )
    logp = Claim("ORPO's margin exceeds SFT's", "margin_hedged", 1, 0.25, False)
    assert logp.check(0.10, 1.23).line() == (
        "PASS  ORPO's margin exceeds SFT's: ORPO +1.23 vs SFT +0.10 (margin 1.13 > 0.25 required)"
    )
    assert logp.check(1.23, 0.10).line().startswith("FAIL") and "(margin -1.13 <= 0.25 required)" in (
        logp.check(1.23, 0.10).line()
    )
    assert logp.check(0.10, 1.23).line(checked=False).startswith("----  ")


def test_print_claims_says_what_failed(capsys):
    measures = {name: {claim.key: 0.0 for claim in CLAIMS} for name in ("sft", "orpo")}
    print_claims(check_claims(measures), SETUP)  # ORPO equal to SFT everywhere: every claim fails
    text = capsys.readouterr().out
    assert text.count("\n  FAIL  ") == len(CLAIMS) and f"{len(CLAIMS)} of {len(CLAIMS)} claims FAILED" in text
    print_claims(check_claims(measures), replace(SETUP, fast=True))
    text = capsys.readouterr().out
    assert "not checked with --fast" in text and "FAIL" not in text and text.count("\n  ----  ") == len(CLAIMS)


def test_claims_are_margins_of_measures():
    keys = {key for _, key, _ in MEASURES}
    for claim in CLAIMS:
        assert claim.key in keys and claim.direction in (1, -1) and claim.required > 0
        assert claim.percent == dict((key, shown) for _, key, shown in MEASURES)[claim.key]


def test_demo_modules_do_not_import_each_other_back():
    """Constants live in setting.py; no submodule imports the package, report and experiment stay apart."""
    package = Path(load_rows.__code__.co_filename).parent
    imports: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.add(node.module or "__init__")  # `from . import x` runs the package's own names
        imports[path.stem] = found
    for name, found in imports.items():
        assert name == "__init__" or "__init__" not in found, name
    assert "experiment" not in imports["report"] and "report" not in imports["experiment"]
    assert imports["setting"] == set() and imports["claims"] == set()


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
