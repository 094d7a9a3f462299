"""The bad-input catalogue, end to end: each input gets a clear message or a counted, reported decision.

File-based items go through ``orpo.data.load.load_preference_data``; everything else through
``ORPOTrainer`` with in-memory rows, the way users call it.
"""

from __future__ import annotations

import json
import logging
import math
import os

import pytest

from _reliability import make_trainer
from orpo.data import DataError
from orpo.data.load import load_preference_data

GOOD = [
    {"prompt": "What is the color of the sky?", "chosen": " The sky is blue.", "rejected": " No."},
    {"prompt": "add two numbers: 2 + 3", "chosen": " 5", "rejected": " 8 wrong"},
    {"prompt": "Answer politely.", "chosen": " Thank you for asking.", "rejected": " Go away."},
]
QUICK = {"max_steps": 1, "save_strategy": "no", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}


def _trainer(tokenizer, tmp_path, data, **overrides):
    return make_trainer(tokenizer, tmp_path / "out", data=data, **{**QUICK, **overrides})


def _trains(trainer):
    trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(trainer.recorder.logs[-1]["loss"])


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---- files --------------------------------------------------------------------------------
def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", GOOD)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"prompt": "x", "chosen": "y",\n')
    with pytest.raises(ValueError, match=r"data\.jsonl, line 4.*malformed JSON"):
        load_preference_data(str(path))


def test_non_utf8_names_file_line_and_byte(tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", GOOD)
    with open(path, "ab") as handle:
        handle.write(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"data\.jsonl, line 4.*not valid UTF-8.*0xe9"):
        load_preference_data(str(path))


def test_good_file_trains_and_keeps_row_origins(tokenizer, tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", GOOD)
    trainer = _trainer(tokenizer, tmp_path, load_preference_data(str(path))["train"])
    _trains(trainer)


# ---- columns --------------------------------------------------------------------------------
def test_missing_column_lists_available_ones(tokenizer, tmp_path):
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"]} for r in GOOD]
    with pytest.raises(ValueError, match=r"no rejected column.*available columns: prompt, chosen"):
        _trainer(tokenizer, tmp_path, rows)


@pytest.mark.parametrize(
    ("value", "kind"),
    [(3, "int"), (None, "null|None"), (2.5, "float"), (True, "bool")],
    ids=["int", "null", "float", "bool"],
)
def test_mistyped_column_names_row_and_column(tokenizer, tmp_path, value, kind):
    rows = [*GOOD, {"prompt": "Q?", "chosen": value, "rejected": "b"}]
    with pytest.raises(ValueError, match=rf"row 3.*'chosen'.*({kind})"):
        _trainer(tokenizer, tmp_path, rows)


@pytest.mark.parametrize("value", [7, ["a", "b"]], ids=["number", "list-of-strings"])
def test_mistyped_column_in_a_file_names_line_and_column(tmp_path, value):
    # Line 2 holds the valid string " 5": a loader that lets datasets infer a JSON column for the mixed
    # types decodes it to int 5 and blames the wrong line.
    path = _jsonl(tmp_path / "data.jsonl", [*GOOD, {"prompt": "Q?", "chosen": value, "rejected": "b"}])
    with pytest.raises(ValueError, match=r"data\.jsonl, line 4.*column 'chosen': expected text"):
        load_preference_data(str(path))


# ---- row policies -----------------------------------------------------------------------------
@pytest.mark.parametrize("blank", ["", "   ", "\n\t"], ids=["empty", "spaces", "whitespace"])
def test_empty_or_blank_completion_is_dropped_and_counted(tokenizer, tmp_path, blank, caplog):
    rows = [
        *GOOD,
        {"prompt": "Q?", "chosen": blank, "rejected": " b"},
        {"prompt": "Q2?", "chosen": " a", "rejected": blank},
    ]
    caplog.set_level(logging.WARNING)
    trainer = _trainer(tokenizer, tmp_path, rows)
    report = trainer.data_reports["train"]
    assert report.empty_completions == 2 and sum(report.dropped.values()) == 2
    assert "empty" in report.summary() and "dropping 2" in caplog.text
    assert len(trainer.train_dataset) == 3
    _trains(trainer)


def test_empty_completion_error_policy_names_row(tokenizer, tmp_path):
    rows = [*GOOD, {"prompt": "Q?", "chosen": "  ", "rejected": " b"}]
    with pytest.raises(DataError) as info:
        _trainer(tokenizer, tmp_path, rows, on_empty_completion="error")
    assert str(info.value) == (
        "train row 3: empty chosen or rejected (1 such row(s) in the train data); fix the data or set "
        "on_empty_completion='drop' or 'keep'"
    )


def test_chosen_equal_rejected_is_dropped_and_counted(tokenizer, tmp_path):
    rows = [*GOOD, {"prompt": "Q?", "chosen": " same", "rejected": " same"}]
    trainer = _trainer(tokenizer, tmp_path, rows)
    report = trainer.data_reports["train"]
    assert report.identical_pairs == 1 and report.dropped["chosen == rejected"] == 1
    assert "chosen == rejected" in report.summary()
    _trains(trainer)
    with pytest.raises(DataError) as info:
        _trainer(tokenizer, tmp_path, rows, on_identical_pair="error")
    assert str(info.value) == (
        "train row 3: chosen == rejected (1 such row(s) in the train data); fix the data or set "
        "on_identical_pair='drop' or 'keep'"
    )


# ---- lengths -----------------------------------------------------------------------------------
LONG = {"prompt": "What is the color of the sky? " * 40, "chosen": " blue", "rejected": " green"}


def test_prompt_longer_than_max_length_is_truncated_and_counted(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, tmp_path, [*GOOD, LONG], max_length=64, max_prompt_length=32)
    tokenized = trainer.data_reports["train"].tokenize
    assert tokenized.prompt_truncated == 1 and tokenized.rows_out == 4
    assert "1 prompt truncated" in trainer.data_reports["train"].summary()
    longest = max(len(r["prompt_input_ids"]) + len(r["chosen_input_ids"]) for r in trainer.train_dataset)
    assert longest <= 64
    _trains(trainer)


def test_prompt_leaving_no_room_is_dropped_and_counted(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, tmp_path, [*GOOD, LONG], max_length=64, max_prompt_length=None)
    tokenized = trainer.data_reports["train"].tokenize
    assert tokenized.dropped_no_room_for_completion == 1 and tokenized.rows_out == 3
    _trains(trainer)


@pytest.mark.parametrize("policy", ["error", "drop"])
def test_too_long_policies(tokenizer, tmp_path, policy):
    if policy == "error":
        with pytest.raises(DataError) as info:
            _trainer(tokenizer, tmp_path, [*GOOD, LONG], max_length=64, max_prompt_length=32, on_too_long="error")
        assert str(info.value) == (
            "train row 3: the prompt is longer than max_prompt_length=32 (1 such row(s) in the train data); raise "
            "the limits, or set on_too_long='truncate' or 'drop'"
        )
    else:
        trainer = _trainer(tokenizer, tmp_path, [*GOOD, LONG], max_length=64, max_prompt_length=32, on_too_long="drop")
        assert trainer.data_reports["train"].tokenize.dropped_too_long == 1
        assert len(trainer.train_dataset) == 3


# ---- sizes -------------------------------------------------------------------------------------
def test_single_row_dataset_trains(tokenizer, tmp_path):
    _trains(_trainer(tokenizer, tmp_path, GOOD[:1], per_device_train_batch_size=1))


@pytest.mark.parametrize("data", [[], {"prompt": [], "chosen": [], "rejected": []}], ids=["no-rows", "no-values"])
def test_empty_dataset_is_a_clear_error(tokenizer, tmp_path, data):
    with pytest.raises(ValueError, match=r"empty|no rows|no preference pairs"):
        _trainer(tokenizer, tmp_path, data)


def test_empty_file_is_a_clear_error(tokenizer, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty|no rows|no preference pairs"):
        _trainer(tokenizer, tmp_path, load_preference_data(str(path))["train"])


def test_batch_larger_than_dataset_warns_and_trains(tokenizer, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    trainer = _trainer(tokenizer, tmp_path, GOOD, per_device_train_batch_size=8)
    _trains(trainer)
    assert "3 pair(s), fewer than one batch of 8" in caplog.text


def test_batch_larger_than_dataset_with_drop_last_is_an_error(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, tmp_path, GOOD, per_device_train_batch_size=8, dataloader_drop_last=True)
    with pytest.raises(ValueError, match=r"3 pair\(s\), fewer than one batch of 8.*dataloader_drop_last"):
        trainer.train()


# ---- conversations -----------------------------------------------------------------------------
def _turn(role, content):
    return {"role": role, "content": content}


def test_conversations_whose_prompts_differ(tokenizer, tmp_path):
    rows = [
        {
            "chosen": [_turn("user", "What color is the sky?"), _turn("assistant", "Blue.")],
            "rejected": [_turn("user", "What color is grass?"), _turn("assistant", "Red.")],
        }
    ]
    with pytest.raises(ValueError, match=r"row 0.*(share|prompt).*differ"):
        _trainer(tokenizer, tmp_path, rows)


def test_unknown_role_names_row_column_and_message(tokenizer, tmp_path):
    rows = [
        {
            "prompt": [_turn("user", "hello")],
            "chosen": [_turn("bot", "yes")],
            "rejected": [_turn("assistant", "no")],
        }
    ]
    with pytest.raises(ValueError, match=r"row 0.*'chosen'.*message 0.*role 'bot'.*not one of"):
        _trainer(tokenizer, tmp_path, rows)


def test_conversational_rows_train(tokenizer, tmp_path):
    rows = [
        {
            "chosen": [_turn("user", "What color is the sky?"), _turn("assistant", "Blue.")],
            "rejected": [_turn("user", "What color is the sky?"), _turn("assistant", "Green.")],
        }
    ] * 2
    trainer = _trainer(tokenizer, tmp_path, rows, on_duplicate="keep")
    assert trainer.data_reports["train"].formats["implicit_conversational"] == 2
    _trains(trainer)


# ---- output directory --------------------------------------------------------------------------
def test_output_dir_under_a_file_is_a_clear_error_before_training(tokenizer, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"output_dir .*not-a-dir/out.* is not writable \(Not a directory\)"):
        make_trainer(tokenizer, blocker / "out", data=GOOD, **QUICK)


def test_output_dir_made_unwritable_after_construction_fails_before_training(tokenizer, tmp_path):
    out = tmp_path / "out"
    trainer = make_trainer(tokenizer, out, data=GOOD, **QUICK)
    out.rmdir()
    out.write_text("now a file")  # what a vanished mount or a mistake leaves
    with pytest.raises(ValueError, match=r"is not writable"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_read_only_output_dir_is_a_clear_error_before_training(tokenizer, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"is not writable \(Permission denied\)"):
            make_trainer(tokenizer, out, data=GOOD, **QUICK)
    finally:
        out.chmod(0o700)
