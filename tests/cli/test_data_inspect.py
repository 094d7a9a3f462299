"""``orpo data inspect``: the report's numbers on a fixture with known answers, and its errors.

The fixture ``report.jsonl`` has 10 standard rows; with a word-level tokenizer every word is one
token, the prompt gets a BOS and each completion an EOS, so token lengths are word counts + 1:

    row  prompt  chosen  rejected   note
     0      2      4       2
     1      3      4       3
     2      4      5       2
     3      5      3       3        chosen == rejected
     4      6      6       4
     5      7      2       5
     6      8      1       3        empty chosen
     7      9      7       3
     8     10      3       6
     9      3      4       3        duplicate of row 1
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from orpo.cli.inspect import main
from orpo.cli.inspect_stats import LengthStats, inspect_dataset, percentile
from orpo.data.load import load_preference_data
from orpo.data.tokenize import LengthLimits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
REPORT = FIXTURES / "report.jsonl"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture(scope="module")
def word_tokenizer_dir(tmp_path_factory) -> str:
    """A saved word-level tokenizer: one token per whitespace-separated word, BOS added."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = set()
    for line in REPORT.read_text().splitlines():
        for text in json.loads(line).values():
            words.update(text.split())
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    folder = tmp_path_factory.mktemp("word-tokenizer")
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_percentile_is_nearest_rank():
    assert [percentile(range(1, 11), p) for p in (50, 90, 99, 100)] == [5, 9, 10, 10]
    assert percentile([7], 50) == 7 and percentile([], 90) == 0


def test_report_numbers_on_the_known_fixture(word_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(word_tokenizer_dir)
    train = load_preference_data(REPORT)["train"]
    report = inspect_dataset(train, tokenizer, LengthLimits(10, 6, 3, "keep_end"), source=str(REPORT))
    assert report.rows == 10 and report.formats == {"standard": 10}
    assert report.lengths == {
        "prompt": LengthStats(p50=5, p90=9, p99=10, max=10),  # sorted: 2 3 3 4 5 6 7 8 9 10
        "chosen": LengthStats(p50=4, p90=6, p99=7, max=7),  # sorted: 1 2 3 3 4 4 4 5 6 7
        "rejected": LengthStats(p50=3, p90=5, p99=6, max=6),  # sorted: 2 2 3 3 3 3 3 4 5 6
        "pair": LengthStats(p50=9, p90=16, p99=16, max=16),  # prompt + longer: 6 7 7 8 9 11 12 12 16 16
    }
    # prompts over 6 tokens: rows 5-8; completions over min(3, 10 - prompt) tokens
    assert (report.prompt_truncated, report.chosen_truncated, report.rejected_truncated) == (4, 6, 3)
    assert (report.over_limit, report.no_room) == (9, 0)
    assert (report.chosen_longer, report.rejected_longer, report.same_length) == (6, 3, 1)
    assert report.length_bias == pytest.approx(0.6)
    assert (report.identical, report.empty, report.duplicates) == (1, 1, 1)
    assert (report.distinct_prompts, report.max_prompt_repeats) == (9, 2)

    # max_length=5 and no prompt limit: rows 3-8 (prompt >= 5 tokens) leave no room for a completion;
    # rows 0, 1, 2, 9 (prompt 2, 3, 4, 3) leave 3, 2, 1, 2 tokens: every chosen is cut, rejected in rows 1, 2, 9
    no_room = inspect_dataset(train, tokenizer, LengthLimits(5, None, None, "keep_end"))
    assert (no_room.no_room, no_room.over_limit) == (6, 4)
    assert (no_room.prompt_truncated, no_room.chosen_truncated, no_room.rejected_truncated) == (0, 4, 3)


def test_cli_prints_the_report_and_the_tokenized_example(word_tokenizer_dir, capsys):
    code = main(
        [
            str(REPORT),
            "--model",
            word_tokenizer_dir,
            "--max-length",
            "10",
            "--max-prompt-length",
            "6",
            "--max-completion-length",
            "3",
            "--example",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "rows:     10" in out and "formats:  standard 10" in out
    assert "  prompt                               5       9      10      10" in out
    assert "  prompt + longer completion           9      16      16      16" in out
    assert "  prompt truncated                  4 rows" in out and "  over a limit                      9 rows" in out
    assert "chosen longer than rejected in 60.0% of rows (rejected longer 30.0%, same length 10.0%)" in out
    assert "  chosen == rejected              1  (on_identical_pair=drop by default)" in out
    assert "  duplicate rows                  1  (on_duplicate=keep by default)" in out
    assert "  empty prompt                    0  (on_empty_prompt=keep by default)" in out
    # the example: row 1, truncated to 3 completion tokens, so no EOS -- and the report says so
    assert f"example: {REPORT}, line 2 (row 1), tokenized as for training" in out
    assert "[<s>] [q1_0] [q1_1] ▌ {good0} {good1} {good2}" in out
    assert "labels: -100 x3 | " in out
    assert "the chosen completion does not end with EOS ('</s>'): it was truncated" in out


def test_blank_prompts_are_counted_and_flagged(tmp_path, capsys):
    import json

    rows = [{"prompt": p, "chosen": " yes", "rejected": " no"} for p in ("Sky?", "", "  \t", "Grass?")]
    path = tmp_path / "blank.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "  empty prompt                    2  (on_empty_prompt=keep by default)" in out
    assert "2 row(s) have an empty or whitespace-only prompt: they train as unconditional pairs" in out


def test_cli_without_a_model_says_the_counts_are_indicative(capsys):
    code = main([str(FIXTURES / "conversational.jsonl")])
    out = capsys.readouterr().out
    assert code == 0
    assert "no --model given: token counts are indicative only" in out
    assert "formats:  conversational 3" in out and "prompts:  2 distinct (a prompt repeats up to 2 times)" in out
    # the template's BOS is not doubled, the boundary follows the generation prompt, EOS is trained
    assert "[<s>] [<|im_start|>]" in out and "[<s>] [<s>]" not in out
    assert "[assistant] [\\n] ▌ {" in out and "{<|im_end|>}" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["{tmp}/nope.jsonl"], "{tmp}/nope.jsonl: no such file or folder"),
        (["{tmp}/bad.jsonl"], "{tmp}/bad.jsonl, line 2, column 11: malformed JSON (Expecting ':' delimiter)"),
        ([str(REPORT), "--text-column", "answer"], "no column 'answer' (given as the chosen column"),
        ([str(REPORT), "--example", "99"], "--example 99: the train data has rows 0..9"),
        ([str(REPORT), "--max-length", "0"], "--max-length 0: must be an integer >= 1"),
        (
            [str(REPORT), "--model", "{tmp}"],
            "cannot load the tokenizer of '{tmp}': no tokenizer files in {tmp} (it has bad.jsonl): save the tokenizer",
        ),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, argv, expected):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt" "a"}\n')
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orpo data inspect: error: ")
    assert expected.replace("{tmp}", str(tmp_path)) in lines[0]


def test_main_leaves_logging_and_progress_bars_as_they_were(capsys):
    """main() runs in-process under the CLI: silencing logs for the report must not outlive it."""
    import logging

    logger, bars = logging.getLogger("orpo"), datasets.is_progress_bar_enabled()
    level = logger.level
    try:
        datasets.enable_progress_bars()
        logger.setLevel(logging.WARNING)
        assert main([str(REPORT)]) == 0
        assert logger.level == logging.WARNING and datasets.is_progress_bar_enabled()
    finally:
        logger.setLevel(level)
        if not bars:
            datasets.disable_progress_bars()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([str(REPORT), "--no-such-flag"], "unknown flag --no-such-flag (see orpo data inspect --help)"),
        ([str(REPORT), "--max-lenght", "9"], "unknown flag --max-lenght (did you mean --max-length?)"),
        ([str(REPORT), "--max-length", "9", "--max-length", "10"], "--max-length given twice; keep one"),
        (
            [str(REPORT), "--split", "train", "--dataset-train-split", "train"],
            "--split and --dataset-train-split both set dataset_train_split; keep one",
        ),
        ([str(REPORT), "--truncation-mode", "middle"], "argument --truncation-mode: invalid choice 'middle'"),
        ([str(REPORT), "--max-length", "many"], "argument --max-length: expected an integer, got 'many'"),
        ([], "the following arguments are required: path"),
    ],
)
def test_bad_flags_are_one_line_errors_with_exit_2(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("orpo data inspect: error: ") and err.count("\n") == 1 and expected in err, err


def test_flags_are_orpo_trains(word_tokenizer_dir):
    """The same spellings as `orpo train` (AutoTrain's and the handbook's too), and ORPOConfig's defaults."""
    from orpo.cli.inspect_flags import parse_args

    args = parse_args(
        [str(REPORT), "--model", word_tokenizer_dir, "--subset", "s", "--train-split", "train[:5]", "--num-proc", "2"]
    )
    assert (args.model_name_or_path, args.dataset_config, args.dataset_train_split) == (
        word_tokenizer_dir,
        "s",
        "train[:5]",
    )
    assert (args.dataset_num_proc, args.example, args.debug) == (2, 0, False)
    assert (args.max_length, args.max_prompt_length, args.max_completion_length) == (1024, 512, None)
    assert (args.truncation_mode, args.prompt_text_column, args.chat_template) == ("keep_end", None, None)
    args = parse_args([str(REPORT), "--model-name-or-path", "m", "--max_prompt_length", "none"])
    assert (args.model_name_or_path, args.max_prompt_length) == ("m", None)


def test_python_dash_m_entry_point(tmp_path):
    (tmp_path / "conv.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": 1}\n')
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "orpo.cli.inspect", str(tmp_path / "conv.jsonl")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"orpo data inspect: error: {tmp_path / 'conv.jsonl'}, line 1 (row 0), column 'rejected': expected text or a "
        "list of messages, got int64 values (e.g. 1); map the right column with prompt_text_column / text_column / "
        "rejected_text_column"
    )
    assert "Traceback" not in result.stderr
