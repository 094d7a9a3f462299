"""`orpo eval`: numbers against an independent float64 computation, against training's own eval metrics,
the JSON schema, the per-kind and per-file breakdowns, --compare, generations and the error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orpo.cli.eval import build_parser, main, run
from orpo.data import DataError
from orpo.training.evaluation import METRICS, compare, sample_completions
from orpo.training.inputs import UsageError

CORPUS = [
    "Question about the sky and the grass? yes no maybe blue green",
    "What is two plus two? four five six seven, I think.",
    "user assistant system hello world good bad",
] * 10
ROWS = [
    {"prompt": "Question about the sky?", "chosen": " blue sky", "rejected": " green grass", "kind": "colour"},
    {"prompt": "What is two plus two?", "chosen": " four", "rejected": " five, I think.", "kind": "sum"},
    {"prompt": "Question about the grass?", "chosen": " green", "rejected": " yes maybe", "kind": "colour"},
    {"prompt": "hello world", "chosen": " good", "rejected": " bad bad", "kind": "greeting"},
    {"prompt": "What is two plus two?", "chosen": " four, I think.", "rejected": " six", "kind": "sum"},
]


def save_model(path: Path, seed: int) -> Path:
    from orpo.demo.tiny import build_tokenizer, tiny_causal_lm

    tokenizer = build_tokenizer(CORPUS, vocab_size=300)
    tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, seed=seed).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return save_model(root / "a", seed=1), save_model(root / "b", seed=2), write_jsonl(root / "pairs.jsonl", ROWS)


def reference(model_dir: Path, rows: list[dict]) -> list[tuple[float, float]]:
    """(chosen, rejected) average log-prob per completion token, computed here in float64 from scratch:
    BOS + prompt tokens, then the completion's tokens + EOS, each scored by the token before it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).double().eval()
    out = []
    for row in rows:
        prompt = [tokenizer.bos_token_id, *tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]]
        means = []
        for key in ("chosen", "rejected"):
            completion = [*tokenizer(row[key], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logps = model(input_ids=ids).logits[0].log_softmax(-1)
            picked = [logps[len(prompt) - 1 + i, token].item() for i, token in enumerate(completion)]
            means.append(sum(picked) / len(picked))
        out.append((means[0], means[1]))
    return out


def expected(pairs: list[tuple[float, float]]) -> dict[str, float]:
    import math

    def log_odds(c: float, r: float) -> float:
        return (c - r) - (math.log1p(-math.exp(c)) - math.log1p(-math.exp(r)))

    n = len(pairs)
    return {
        "pairs": n,
        "accuracy": sum(c > r for c, r in pairs) / n,
        "chosen_logp": sum(c for c, _ in pairs) / n,
        "rejected_logp": sum(r for _, r in pairs) / n,
        "margin": sum(c - r for c, r in pairs) / n,
        "log_odds": sum(log_odds(c, r) for c, r in pairs) / n,
    }


def eval_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_close(got: dict, want: dict) -> None:
    assert got["pairs"] == want["pairs"] and got["accuracy"] == want["accuracy"]
    for key in ("chosen_logp", "rejected_logp", "margin", "log_odds"):
        assert got[key] == pytest.approx(want[key], abs=2e-5), key


def test_numbers_match_a_float64_reference_with_a_per_kind_breakdown(setup, capsys):
    model_a, _, data = setup
    pairs = reference(model_a, ROWS)
    assert min(abs(c - r) for c, r in pairs) > 1e-3  # no near-tie, so the accuracy below is exact
    result = eval_json(capsys, str(model_a), str(data), "--by", "kind")
    assert set(result) == {"data", "by", "models"}
    assert result["data"] == {"source": str(data), "split": "train", "rows": 5} and result["by"] == "kind"
    (scored,) = result["models"]
    assert set(scored) == {"model", "data_report", *METRICS, "groups"} and scored["model"] == str(model_a)
    assert scored["ties"] == 0 and "5/5 pairs kept" in scored["data_report"]
    assert_close(scored, expected(pairs))
    assert list(scored["groups"]) == ["colour", "greeting", "sum"]
    for kind, group in scored["groups"].items():
        assert set(group) == set(METRICS)
        assert_close(group, expected([p for p, row in zip(pairs, ROWS, strict=True) if row["kind"] == kind]))


def test_eval_scores_what_training_scores(setup, capsys):
    """The same pairs through ORPOTrainer.evaluate give the same mean log-probs and accuracy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orpo import ORPOConfig, ORPOTrainer

    model_a, _, data = setup
    rows = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in ROWS]
    config = ORPOConfig(output_dir=str(data.parent / "t"), beta=0.5, report_to="none", per_device_eval_batch_size=5)
    trainer = ORPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(model_a)),
        args=config,
        processing_class=AutoTokenizer.from_pretrained(str(model_a)),
    )
    metrics = trainer.evaluate(rows)
    (scored,) = eval_json(capsys, str(model_a), str(data))["models"]
    assert scored["chosen_logp"] == pytest.approx(metrics["eval_logps/chosen"], abs=1e-6)
    assert scored["rejected_logp"] == pytest.approx(metrics["eval_logps/rejected"], abs=1e-6)
    assert scored["accuracy"] == pytest.approx(metrics["eval_rewards/accuracies"])
    assert scored["margin"] * 0.5 == pytest.approx(metrics["eval_rewards/margins"], abs=1e-6)
    assert scored["log_odds"] == pytest.approx(metrics["eval_log_odds_chosen"], abs=1e-5)


def test_compare_scores_both_models_and_counts_pairs(setup, capsys):
    model_a, model_b, data = setup
    wins_a = [c > r for c, r in reference(model_a, ROWS)]
    wins_b = [c > r for c, r in reference(model_b, ROWS)]
    result = eval_json(capsys, str(model_a), str(data), "--compare", str(model_b))
    assert [m["model"] for m in result["models"]] == [str(model_a), str(model_b)]
    assert_close(result["models"][1], expected(reference(model_b, ROWS)))
    both = sum(a and b for a, b in zip(wins_a, wins_b, strict=True))
    assert result["compare"] == {
        "pairs": 5,
        "both": both,
        "first_only": sum(wins_a) - both,
        "second_only": sum(wins_b) - both,
        "neither": 5 - sum(wins_a) - sum(wins_b) + both,
    }


def test_compare_lines_up_pairs_by_source_row():
    from orpo.training.evaluation import PairScores

    first = PairScores(torch.tensor([0.0, -1.0, -1.0]), torch.tensor([-1.0, 0.0, 0.0]), ["r0", "r1", "r2"])
    second = PairScores(torch.tensor([0.0, -1.0]), torch.tensor([-1.0, -2.0]), ["r1", "r0"])
    assert compare(first, second) == {"pairs": 2, "both": 1, "first_only": 0, "second_only": 1, "neither": 0}


def test_generations_side_by_side_are_the_models_greedy_completions(setup, capsys):
    from orpo.models.generation import generate, load_for_inference

    model_a, model_b, data = setup
    result = eval_json(
        capsys, str(model_a), str(data), "--compare", str(model_b), "--samples", "2", "--temperature", "0",
        "--max-new-tokens", "6",
    )  # fmt: skip
    samples = result["samples"]
    assert [s["prompt"] for s in samples] == [ROWS[0]["prompt"], ROWS[1]["prompt"]]
    assert [s["chosen"] for s in samples] == [ROWS[0]["chosen"].strip(), ROWS[1]["chosen"].strip()]
    assert [s["row"] for s in samples] == [f"{data}, line 1 (row 0)", f"{data}, line 2 (row 1)"]
    for path in (model_a, model_b):
        model, tokenizer = load_for_inference(str(path), device="cpu")
        want = generate(model, tokenizer, [s["prompt"] for s in samples], 6, use_chat_template=False)
        assert [s["completions"][str(path)] for s in samples] == want


def test_batched_sampling_matches_one_prompt_at_a_time(setup):
    """Left padding changes nothing: greedy batches equal unpadded single runs; sampling is seeded."""
    from orpo.models.generation import encode_prompt, load_for_inference

    model, tokenizer = load_for_inference(str(setup[0]), device="cpu")
    prompts = [encode_prompt(tokenizer, text) for text in ("hello world", "What is two plus two? four five six")]
    assert len(prompts[0]) != len(prompts[1])
    batched = sample_completions(model, tokenizer, prompts, 1, 0.0, 8)
    assert batched == [sample_completions(model, tokenizer, [p], 1, 0.0, 8)[0] for p in prompts]
    sampled = sample_completions(model, tokenizer, prompts, 3, 1.0, 8, seed=5)
    assert len(sampled) == 2 and all(len(texts) == 3 for texts in sampled)
    assert sampled == sample_completions(model, tokenizer, prompts, 3, 1.0, 8, seed=5)


def test_breakdown_by_file(setup, tmp_path, capsys):
    model_a, _, _ = setup
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "one.jsonl", ROWS[:2])
    write_jsonl(folder / "two.jsonl", ROWS[2:])
    pairs = reference(model_a, ROWS)
    result = eval_json(capsys, str(model_a), str(folder), "--by-file")
    groups = result["models"][0]["groups"]
    assert result["by"] == "file" and list(groups) == [str(folder / "one.jsonl"), str(folder / "two.jsonl")]
    assert_close(groups[str(folder / "one.jsonl")], expected(pairs[:2]))
    assert_close(groups[str(folder / "two.jsonl")], expected(pairs[2:]))


def test_split_column_mapping_and_max_pairs(setup, tmp_path, capsys):
    model_a, _, _ = setup
    renamed = [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in ROWS]
    write_jsonl(tmp_path / "train.jsonl", renamed[:1])
    write_jsonl(tmp_path / "test.jsonl", renamed[1:])
    columns = ("--prompt-text-column", "q", "--text-column", "good", "--rejected-text-column", "bad")
    result = eval_json(capsys, str(model_a), str(tmp_path), *columns)
    assert result["data"]["split"] == "test" and result["data"]["rows"] == 4  # test by default, not train
    assert_close(result["models"][0], expected(reference(model_a, ROWS[1:])))
    result = eval_json(capsys, str(model_a), str(tmp_path), *columns, "--split", "test", "--max-pairs", "2")
    assert_close(result["models"][0], expected(reference(model_a, ROWS[1:3])))


def test_text_report(setup, capsys):
    model_a, model_b, data = setup
    assert main([str(model_a), str(data), "--compare", str(model_b), "--by", "kind", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    lines = {line[:24].strip(): line[24:].split() for line in text.splitlines() if len(line) > 24}
    want = [expected(reference(path, ROWS)) for path in (model_a, model_b)]
    assert lines["preference accuracy"] == [f"{100 * w['accuracy']:.1f}%" for w in want]
    assert lines["margin (chosen - rej.)"] == [f"{w['margin']:+.3f}" for w in want]
    assert "by kind: preference accuracy (margin)" in text and "  sum (2)" in text
    assert "pair by pair (5 pairs both scored)" in text


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["{missing}", "{data}"], FileNotFoundError, "model not found: {missing} (no such directory"),
        (["{model}", "{missing}.jsonl"], DataError, "{missing}.jsonl: no such file or folder"),
        (["{model}", "{data}", "--by", "colour"], DataError, "--by colour: no such column in the data; columns to group by: kind"),
        (["{model}", "{data}", "--split", "dev"], DataError, "no split 'dev'; splits: train"),
        (["{model}", "{data}", "--text-column", "answer"], DataError, "no column 'answer' (given as the chosen column"),
        (["{model}", "{bad}"], DataError, "bad.jsonl, line 2"),
        (["{model}", "{data}", "--batch-size", "0"], UsageError, "argument --batch-size: must be a positive integer, got '0'"),
        (["{model}", "{data}", "--by", "kind", "--by-file"], UsageError, "not allowed with argument"),
    ],
)  # fmt: skip
def test_errors_are_one_line_naming_the_problem(setup, tmp_path, argv, error, message):
    model_a, _, data = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n", encoding="utf-8")
    names = {"model": str(model_a), "data": str(data), "missing": str(tmp_path / "nope"), "bad": str(bad)}
    with pytest.raises(error) as caught:
        main([part.format(**names) for part in argv] + ["--device", "cpu"])
    text = str(caught.value)
    assert message.format(**names) in text and "\n" not in text


def test_encoder_decoder_models_are_refused(tmp_path, setup):
    from orpo.demo.tiny import build_seq2seq_tokenizer, tiny_seq2seq_lm

    tokenizer = build_seq2seq_tokenizer(CORPUS)
    tiny_seq2seq_lm(tokenizer).save_pretrained(str(tmp_path / "t5"))
    tokenizer.save_pretrained(str(tmp_path / "t5"))
    args = build_parser().parse_args([str(tmp_path / "t5"), str(setup[2]), "--device", "cpu"])
    with pytest.raises(UsageError, match="orpo eval scores text-only causal language models"):
        run(args)
