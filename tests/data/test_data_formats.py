"""Every row shape normalises to the right (prompt, chosen, rejected) texts."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from orpo import ORPOConfig
from orpo.data import load_preference_data, prepare_preference_dataset
from orpo.data.errors import SOURCE_COLUMN
from orpo.data.formats import detect_format, normalize_row

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
SYSTEM = "<s><|im_start|>system\nAnswer in one word.<|im_end|>\n"
SKY = "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    datasets.disable_progress_bars()


def prepare(data, tokenizer, tmp_path, **config):
    args = ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[], **config)
    return prepare_preference_dataset(data, tokenizer, args)


def triples(dataset) -> list[tuple[str, str, str]]:
    return [(row["prompt"], row["chosen"], row["rejected"]) for row in dataset]


def test_standard_strings_are_used_verbatim(tokenizer):
    row = {"prompt": "Q: sky?", "chosen": " A: blue", "rejected": " A: green"}
    out = normalize_row(row, tokenizer, "row 0")
    assert (out["prompt"], out["chosen"], out["rejected"], out["format"]) == (
        "Q: sky?",
        " A: blue",
        " A: green",
        "standard",
    )


def test_conversational_with_system_prompt_and_repeated_prompts(tmp_path, tokenizer):
    train = load_preference_data(FIXTURES / "conversational.jsonl")["train"]
    dataset, report = prepare(train, tokenizer, tmp_path)
    assert report.formats == {"conversational": 3}
    assert report.distinct_prompts == 2 and report.duplicates == 0  # one prompt, two pairs: not duplicates
    assert triples(dataset)[:2] == [
        (SYSTEM + SKY, "Blue.<|im_end|>\n", "Green.<|im_end|>\n"),
        (SYSTEM + SKY, "Blue.<|im_end|>\n", "Red.<|im_end|>\n"),
    ]
    # the prompt ends with the generation prompt; prompt + completion is the full rendered chat
    full = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What color is the sky?"},
            {"role": "assistant", "content": "Blue."},
        ],
        tokenize=False,
    )
    assert dataset[0]["prompt"] + dataset[0]["chosen"] == full
    # BOS once although the template writes it too; EOS (<|im_end|>) ends each completion once
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert dataset[0]["prompt_input_ids"][:2].count(bos) == 1
    assert dataset[0]["chosen_input_ids"][-1] == eos and dataset[0]["chosen_input_ids"].count(eos) == 1
    assert dataset[0][SOURCE_COLUMN].endswith("conversational.jsonl, line 1 (row 0)")


def test_implicit_prompt_is_the_longest_shared_prefix(tmp_path, tokenizer):
    dataset, report = prepare(load_preference_data(FIXTURES / "implicit.jsonl")["train"], tokenizer, tmp_path)
    assert report.formats == {"implicit_conversational": 2}
    single, multi = triples(dataset)
    assert single == ("<s>" + SKY, "Blue.<|im_end|>\n", "Green.<|im_end|>\n")
    # multi-turn: the prompt runs up to the last shared user turn
    assert multi[0] == "<s>" + SKY + "Blue.<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"
    assert multi[1:] == ("Yes.<|im_end|>\n", "No.<|im_end|>\n")


def test_conversations_repeating_the_prompt_column(tmp_path, tokenizer):
    """UltraFeedback-style: a prompt string plus full conversations that start with it."""
    dataset, report = prepare(load_preference_data(FIXTURES / "ultrafeedback.jsonl")["train"], tokenizer, tmp_path)
    assert report.formats == {"conversational": 1}
    assert triples(dataset) == [("<s>" + SKY, "Blue.<|im_end|>\n", "Green.<|im_end|>\n")]
    assert dataset[0]["score_chosen"] == 9.0  # extra columns are kept


def test_string_prompt_with_message_completions_and_vice_versa(tokenizer):
    answer = [{"role": "assistant", "content": "Blue."}]
    out = normalize_row(
        {"prompt": "What color is the sky?", "chosen": answer, "rejected": "Green."}, tokenizer, "row 0"
    )
    assert (out["prompt"], out["chosen"], out["rejected"]) == ("<s>" + SKY, "Blue.<|im_end|>\n", "Green.<|im_end|>\n")
    assert (
        detect_format({"prompt": [{"role": "user", "content": "x"}], "chosen": "a", "rejected": "b"})
        == "conversational"
    )


def test_implicit_prompt_from_strings(tokenizer):
    row = {"chosen": "Question: sky color? Answer: blue", "rejected": "Question: sky color? Answer: green"}
    out = normalize_row(row, tokenizer, "row 0")
    assert (out["prompt"], out["chosen"], out["rejected"]) == ("Question: sky color? Answer: ", "blue", "green")
    assert out["format"] == "implicit_standard"


def test_json_encoded_messages_in_csv_cells(tmp_path, tokenizer):
    import csv
    import json

    user = [{"role": "user", "content": "What color is the sky?"}]
    path = tmp_path / "chat.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerow(
            [
                json.dumps(user),
                json.dumps([{"role": "assistant", "content": "Blue."}]),
                json.dumps([{"role": "assistant", "content": "Green."}]),
            ]
        )
    dataset, report = prepare(load_preference_data(path)["train"], tokenizer, tmp_path)
    assert report.formats == {"conversational": 1}
    assert triples(dataset) == [("<s>" + SKY, "Blue.<|im_end|>\n", "Green.<|im_end|>\n")]


def test_empty_completion_is_judged_on_content_not_rendered_text(tmp_path, tokenizer):
    user = {"role": "user", "content": "Sky?"}
    rows = [
        {
            "chosen": [user, {"role": "assistant", "content": "Blue."}],
            "rejected": [user, {"role": "assistant", "content": " "}],
        },
        {
            "chosen": [user, {"role": "assistant", "content": "Blue."}],
            "rejected": [user, {"role": "assistant", "content": "Red."}],
        },
    ]
    dataset, report = prepare(rows, tokenizer, tmp_path)
    assert report.empty_completions == 1 and report.dropped == {"empty chosen or rejected": 1} and len(dataset) == 1


def test_row_policies_drop_keep_and_counts(tmp_path, tokenizer):
    rows = [
        {"prompt": "p", "chosen": " a", "rejected": " b"},
        {"prompt": "p", "chosen": " a", "rejected": " b"},  # duplicate
        {"prompt": "p", "chosen": " same", "rejected": " same "},  # identical (whitespace aside)
        {"prompt": "p", "chosen": "", "rejected": " b"},  # empty
        {"prompt": "p", "chosen": " c", "rejected": " d"},
    ]
    dataset, report = prepare(rows, tokenizer, tmp_path)  # defaults: drop identical, drop empty, keep duplicates
    assert (report.identical_pairs, report.empty_completions, report.duplicates) == (1, 1, 1)
    assert len(dataset) == 3 and report.rows_out == 3
    dataset, report = prepare(
        rows, tokenizer, tmp_path, on_duplicate="drop", on_identical_pair="keep", on_empty_completion="keep"
    )
    assert len(dataset) == 4 and report.dropped == {"duplicate row": 1}
    assert [row[SOURCE_COLUMN] for row in dataset] == ["train row 0", "train row 2", "train row 3", "train row 4"]
