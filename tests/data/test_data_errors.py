"""Every data error names the file, the line (1-based) or row (0-based) and the column."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from orpo import ORPOConfig
from orpo.data import DataError, load_preference_data, prepare_preference_dataset

GOOD = {"prompt": "What color is the sky?", "chosen": " Blue.", "rejected": " Green."}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    datasets.disable_progress_bars()


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def jsonl(*rows: object) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def error_of(source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_preference_data(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def prepare_error(data, tokenizer, tmp_path, **config) -> str:
    args = ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[], **config)
    with pytest.raises(DataError) as info:
        prepare_preference_dataset(data, tokenizer, args)
    return str(info.value)


# ---- file-level -------------------------------------------------------------------------------


def test_malformed_json_line_names_line_and_column(tmp_path):
    path = write(tmp_path / "pairs.jsonl", jsonl(GOOD, "", '{"prompt": "a", "chosen": "b" "rejected": "c"}'))
    assert error_of(path) == f"{path}, line 3, column 31: malformed JSON (Expecting ',' delimiter)"


def test_json_line_cut_short_points_at_its_end_not_the_next_line(tmp_path):
    # The newline is not part of the JSON text: the error is just past the last character of line 2.
    path = write(tmp_path / "pairs.jsonl", jsonl(GOOD, '{"prompt": "a",', GOOD))
    assert (
        error_of(path)
        == f"{path}, line 2, column 16: malformed JSON (Expecting property name enclosed in double quotes)"
    )


def test_a_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "pairs.jsonl", jsonl(GOOD, "[1, 2]"))
    assert error_of(path) == f"{path}, line 2: expected one JSON object per line, got list"


def test_malformed_json_document(tmp_path):
    path = write(
        tmp_path / "pairs.json",
        '[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a" "chosen": "b"}\n]',
    )
    assert error_of(path) == f"{path}, line 3, column 18: malformed JSON (Expecting ',' delimiter)"


def test_json_object_without_data_list(tmp_path):
    path = write(tmp_path / "pairs.json", json.dumps({"rows": [GOOD]}, indent=1))
    assert error_of(path) == f"{path}: a JSON object file must hold its rows in a 'data' list; keys found: rows"


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.csv", "pairs.json"])
def test_non_utf8_bytes_name_file_line_and_byte_offset(tmp_path, name):
    if name.endswith(".csv"):
        body = b"prompt,chosen,rejected\nab,cd,ef\ngh,i\xe9j,kl\n"
        line, column, offset = 3, 5, 36
    elif name.endswith(".json"):
        body = b'[\n{"prompt": "a", "chosen": "b", "rejected": "c"},\n{"prompt": "\xff", "chosen": "b", "rejected": "c"}\n]'
        line, column, offset = 3, 13, 63
    else:
        body = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a\xff", "chosen": "b", "rejected": "c"}\n'
        line, column, offset = 2, 14, 61
    path = write(tmp_path / name, body)
    assert body[offset] >= 0x80
    assert error_of(path) == (
        f"{path}, line {line}, column {column}: not valid UTF-8 (byte 0x{body[offset]:02x} at byte offset {offset} of "
        "the file); save the file as UTF-8"
    )


def test_ragged_csv_row(tmp_path):
    path = write(tmp_path / "pairs.csv", "prompt,chosen,rejected\na,b,c\nd,e\n")
    assert error_of(path) == (
        f"{path}, line 3: 2 field(s) but the header has 3 (prompt, chosen, rejected); quote fields that hold ',' or "
        "line breaks"
    )


def test_a_csv_header_repeating_a_column_name(tmp_path):
    """datasets' csv builder keeps one of two same-named columns: that would lose a column silently."""
    path = write(tmp_path / "pairs.csv", "prompt,chosen,chosen,rejected,prompt\na,b,c,d,e\n")
    assert error_of(path) == (
        f"{path}, line 1: the header repeats column name(s) ('chosen' in columns 2, 3; 'prompt' in columns 1, 5); "
        "only one column of each name could be read, so rename them"
    )
    tsv = write(tmp_path / "pairs.tsv", "prompt\tchosen\trejected\trejected\na\tb\tc\td\n")
    assert "('rejected' in columns 3, 4)" in error_of(tsv)


def test_a_dataframe_with_two_columns_of_one_name(tmp_path, tokenizer):
    import pandas as pd

    frame = pd.DataFrame([["Q?", " a", " b", " c"]], columns=["prompt", "chosen", "rejected", "chosen"])
    expected = (
        "train data: the DataFrame has more than one column named 'chosen'; rename them so each column has its own name"
    )
    assert error_of(frame) == expected
    assert prepare_error(frame, tokenizer, tmp_path) == expected


def test_empty_sources(tmp_path):
    path = write(tmp_path / "pairs.jsonl", "\n\n")
    assert error_of(path) == f"train data is empty: no rows in {path}"
    assert error_of(write(tmp_path / "header_only.csv", "prompt,chosen,rejected\n")).startswith("train data is empty")
    assert error_of([]) == "train data is empty: no preference pairs"
    assert error_of(datasets.Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})) == (
        "train data is empty: no preference pairs"
    )


def test_files_of_a_split_with_different_columns(tmp_path):
    write(tmp_path / "a.csv", "prompt,chosen,rejected\na,b,c\n")
    write(tmp_path / "b.csv", "prompt,good,rejected\na,b,c\n")
    assert "b.csv: columns (prompt, good, rejected) differ from those of" in error_of(tmp_path)


# ---- row-level at load ---------------------------------------------------------------------------


def test_missing_column_lists_available(tmp_path):
    path = write(tmp_path / "pairs.jsonl", jsonl({"prompt": "a", "chosen": "b"}))
    assert error_of(path) == (
        f"{path}: no rejected column ('rejected'); available columns: prompt, chosen; name yours with "
        "rejected_text_column / --rejected-text-column"
    )


def test_null_and_missing_values_name_line_row_and_column(tmp_path):
    path = write(tmp_path / "pairs.jsonl", jsonl(GOOD, GOOD, {"prompt": "a", "chosen": None, "rejected": "c"}))
    assert error_of(path) == f"{path}, line 3 (row 2), column 'chosen': value is missing or null, expected text"
    path = write(tmp_path / "missing.jsonl", jsonl(GOOD, {"prompt": "a", "chosen": "b"}))
    assert error_of(path) == f"{path}, line 2 (row 1), column 'rejected': value is missing or null, expected text"


def test_number_where_text_is_expected(tmp_path):
    path = write(tmp_path / "pairs.jsonl", jsonl(GOOD, {"prompt": "a", "chosen": 42, "rejected": "c"}))
    assert error_of(path) == (
        f"{path}, line 2 (row 1), column 'chosen': expected text or a list of messages, got int 42"
    )
    path = write(tmp_path / "all_numbers.jsonl", jsonl({"prompt": 1, "chosen": "b", "rejected": "c"}))
    assert error_of(path).startswith(
        f"{path}, line 1 (row 0), column 'prompt': expected text or a list of messages, got int64"
    )


def test_one_mistyped_row_among_text_that_looks_like_numbers(tmp_path):
    """datasets would store the column as JSON and turn the valid text ' 5' into 5; orpo reads strictly."""
    rows = [GOOD, {"prompt": "a", "chosen": " 5", "rejected": "c"}, GOOD, {"prompt": "b", "chosen": 7, "rejected": "c"}]
    path = write(tmp_path / "pairs.jsonl", jsonl(*rows))
    assert error_of(path) == f"{path}, line 4 (row 3), column 'chosen': expected text or a list of messages, got int 7"
    rows[3] = {"prompt": "b", "chosen": ["x", "y"], "rejected": "c"}
    path = write(tmp_path / "strings.json", json.dumps(rows))
    assert error_of(path).startswith(f"{path}, record 3 (row 3), column 'chosen': expected text or a list of")
    rows[3] = {"prompt": "b", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "c"}
    path = write(tmp_path / "mixed.jsonl", jsonl(*rows))
    assert error_of(path) == (
        f"{path}, line 4 (row 3), column 'chosen': is a message list but {path}, line 1 (row 0) holds text; use one "
        "format per column"
    )


def test_in_memory_rows_name_the_row(tmp_path):
    assert error_of([GOOD, {"prompt": "a", "chosen": 3.5, "rejected": "c"}]) == (
        "train row 1, column 'chosen': expected text or a list of messages, got float 3.5"
    )
    assert (
        error_of([GOOD, "not a row"]) == "train row 1: expected a dict with prompt/chosen/rejected, got str 'not a row'"
    )
    assert error_of({"prompt": ["a"], "chosen": ["b", "c"], "rejected": ["d"]}) == (
        "train data: columns have different lengths (prompt: 1, chosen: 2, rejected: 1)"
    )
    messages = [{"role": "assistant", "content": "x"}]
    assert error_of([GOOD, {"prompt": "a", "chosen": messages, "rejected": messages}]) == (
        "train row 1, column 'chosen': is a message list but row 0 holds text; use one format per column"
    )


# ---- row-level at preparation (conversational checks, policies, lengths) ------------------------


def conversation(user: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_chosen_and_rejected_not_sharing_the_prompt(tmp_path, tokenizer):
    path = write(
        tmp_path / "conv.jsonl",
        jsonl(
            {"chosen": conversation("Sky?", "Blue."), "rejected": conversation("Sky?", "Green.")},
            {"chosen": conversation("Sky?", "Blue."), "rejected": conversation("Grass?", "Green.")},
        ),
    )
    train = load_preference_data(path)["train"]
    message = prepare_error(train, tokenizer, tmp_path)
    assert message.startswith(f"{path}, line 2 (row 1): chosen and rejected do not share the prompt: message 0 differs")
    assert "chosen user: 'Sky?'; rejected user: 'Grass?'" in message
    # with a prompt column, conversations repeating a different prompt are refused too
    rows = [{"prompt": "Sky?", "chosen": conversation("Sky?", "Blue."), "rejected": conversation("Grass?", "Green.")}]
    assert "do not share the prompt" in prepare_error(rows, tokenizer, tmp_path)
    rows = [{"prompt": "Water?", "chosen": conversation("Sky?", "Blue."), "rejected": conversation("Sky?", "Green.")}]
    assert prepare_error(rows, tokenizer, tmp_path).startswith(
        "train row 0, column 'prompt': does not match the prompt messages that chosen and rejected start with"
    )


def test_invalid_roles_name_the_message(tmp_path, tokenizer):
    bad = [{"role": "user", "content": "Sky?"}, {"role": "robot", "content": "Blue."}]
    path = write(tmp_path / "conv.jsonl", jsonl({"chosen": conversation("Sky?", "Blue."), "rejected": bad}))
    message = prepare_error(load_preference_data(path)["train"], tokenizer, tmp_path)
    assert message == (
        f"{path}, line 1 (row 0), column 'rejected', message 1: role 'robot' is not one of system, user, assistant, "
        "tool, developer"
    )
    sharegpt = [{"from": "human", "value": "Sky?"}, {"from": "gpt", "value": "Blue."}]
    message = prepare_error([{"chosen": sharegpt, "rejected": sharegpt}], tokenizer, tmp_path)
    assert message.startswith("train row 0, column 'chosen', message 0: no 'role' (keys: from, value)")
    assert "ShareGPT" in message
    human = [{"role": "human", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}]
    assert "did you mean 'user'?" in prepare_error([{"chosen": human, "rejected": human}], tokenizer, tmp_path)


def test_no_prompt_to_extract(tmp_path, tokenizer):
    message = prepare_error(
        [{"question": "Sky?", "chosen": "Blue sky", "rejected": "Green grass"}], tokenizer, tmp_path
    )
    assert message.startswith(
        "train row 0: there is no prompt: no 'prompt' column, and chosen/rejected share no text prefix"
    )
    assert "available columns: question, chosen, rejected (map your prompt column with prompt_text_column" in message


def test_policy_errors_name_file_and_line(tmp_path, tokenizer):
    path = write(tmp_path / "pairs.jsonl", jsonl(GOOD, GOOD, {"prompt": "a", "chosen": " same", "rejected": " same"}))
    train = load_preference_data(path)["train"]
    assert prepare_error(train, tokenizer, tmp_path, on_identical_pair="error") == (
        f"{path}, line 3 (row 2): chosen == rejected (1 such row(s) in the train data); fix the data or set "
        "on_identical_pair='drop' or 'keep'"
    )
    assert prepare_error(train, tokenizer, tmp_path, on_duplicate="error").startswith(
        f"{path}, line 2 (row 1): duplicate row (1 such row(s)"
    )
    empty = [GOOD, {"prompt": "a", "chosen": "  ", "rejected": " b"}]
    assert prepare_error(empty, tokenizer, tmp_path, on_empty_completion="error").startswith(
        "train row 1: empty chosen or rejected"
    )


def test_too_long_error_names_the_original_line_after_drops(tmp_path, tokenizer):
    long_row = {"prompt": "a", "chosen": " yes" * 40, "rejected": " no"}
    identical = {"prompt": "b", "chosen": " x", "rejected": " x"}
    path = write(tmp_path / "pairs.jsonl", jsonl(identical, GOOD, long_row))
    train = load_preference_data(path)["train"]
    # row 0 is dropped first (identical), yet the error still names line 3
    message = prepare_error(train, tokenizer, tmp_path, on_too_long="error", max_length=20, max_prompt_length=10)
    assert message.startswith(
        f"{path}, line 3 (row 2): chosen does not fit (max_length=20, max_completion_length=None)"
    )
    assert "set on_too_long='truncate' or 'drop'" in message


def test_conversational_data_without_a_chat_template(tmp_path):
    from orpo.demo.tiny import build_tokenizer

    plain = build_tokenizer(["hello world"], chat_template=None)
    rows = [{"chosen": conversation("Sky?", "Blue."), "rejected": conversation("Sky?", "Green.")}]
    assert "needs a chat template but the tokenizer has none" in prepare_error(rows, plain, tmp_path)
