"""Streamed data (IterableDataset) is prepared like a Dataset, lazily, with the report counting as rows flow."""

from __future__ import annotations

import datasets
import pytest

from orpo import ORPOConfig
from orpo.data import ColumnMapping, DataError, prepare_preference_dataset
from orpo.data.tokenize import TOKENIZED_COLUMNS

ROWS = [
    {"q": "What is the sky?", "good": " blue", "bad": " green"},
    {"q": "Same?", "good": " yes", "bad": " yes"},  # identical: dropped
    {"q": "What is the sky?", "good": " blue", "bad": " green"},  # duplicate: kept (on_duplicate='keep')
    {"q": "Hello", "good": " ", "bad": " no"},  # empty completion: dropped
    {"q": "add two numbers: " * 20, "good": " 5", "bad": " 8"},  # prompt truncated
    {"q": "user", "good": " good", "bad": " bad"},
]
COLUMNS = ColumnMapping(prompt="q", chosen="good", rejected="bad")


def _args(**kwargs) -> ORPOConfig:
    return ORPOConfig(output_dir="unused", max_length=32, max_prompt_length=16, report_to=["none"], **kwargs)


def _stream(rows=ROWS) -> datasets.IterableDataset:
    return datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=1)


def test_streamed_pairs_equal_the_prepared_dataset_and_count_as_they_flow(tokenizer):
    args = _args()
    expected, full = prepare_preference_dataset(datasets.Dataset.from_list(ROWS), tokenizer, args, columns=COLUMNS)
    streamed, report = prepare_preference_dataset(_stream(), tokenizer, args, columns=COLUMNS)
    assert isinstance(streamed, datasets.IterableDataset)
    assert report.rows_in == 0 and report.streamed  # nothing read yet: lazy
    rows = list(streamed)
    assert [[row[name] for name in TOKENIZED_COLUMNS] for row in rows] == [
        [expected[i][name] for name in TOKENIZED_COLUMNS] for i in range(len(expected))
    ]
    assert [row["prompt"] for row in rows] == list(expected["prompt"])
    assert (report.rows_in, report.rows_out) == (6, 4) == (full.rows_in, full.rows_out)
    assert report.dropped == full.dropped and report.dropped["chosen == rejected"] == 1
    assert (report.identical_pairs, report.empty_completions, report.duplicates) == (1, 1, 1)
    assert report.tokenize.prompt_truncated == full.tokenize.prompt_truncated == 1
    assert report.summary().startswith("train: 6 rows streamed so far")


def test_duplicates_are_found_across_batches_and_errors_name_the_row(tokenizer):
    args = _args(on_duplicate="drop")
    rows = [ROWS[0], ROWS[5]] * 3
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=1)
    prepared, report = prepare_preference_dataset(stream, tokenizer, args, columns=COLUMNS)
    assert len(list(prepared)) == 2 and report.dropped["duplicate row"] == 4
    failing, _ = prepare_preference_dataset(_stream(), tokenizer, _args(on_identical_pair="error"), columns=COLUMNS)
    with pytest.raises(DataError, match=r"train row 1: chosen == rejected .*on_identical_pair"):
        list(failing)


def test_duplicates_across_separate_batches(tokenizer):
    from orpo.data.policy import RowPolicies
    from orpo.data.prepare import DataReport
    from orpo.data.stream import StreamPreparer
    from orpo.data.tokenize import LengthLimits, PairTokenizer

    args = _args(on_duplicate="drop")
    report = DataReport()
    preparer = StreamPreparer(
        PairTokenizer(tokenizer, LengthLimits.from_args(args)), RowPolicies.from_args(args), report, COLUMNS
    )
    first = preparer({"q": ["a"], "good": [" yes"], "bad": [" no"]})
    second = preparer({"q": ["a", "b"], "good": [" yes", " yes"], "bad": [" no", " no"]})
    assert len(first["prompt"]) == 1 and second["prompt"] == ["b"]
    assert second["_orpo_source"] == ["train row 2"] and report.dropped["duplicate row"] == 1


def test_a_streamed_training_run_needs_max_steps_and_trains(tokenizer, tmp_path):
    from conftest import learnable_pairs
    from orpo import ORPOTrainer
    from orpo.demo.tiny import tiny_causal_lm

    stream = datasets.Dataset.from_list(learnable_pairs(16)).to_iterable_dataset(num_shards=1)
    with pytest.raises(ValueError, match="max_steps"):
        ORPOTrainer(
            model=tiny_causal_lm(tokenizer, hidden_size=32),
            args=ORPOConfig(output_dir=str(tmp_path), report_to=["none"]),
            train_dataset=stream,
            processing_class=tokenizer,
        )
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer, hidden_size=32),
        args=ORPOConfig(
            output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, report_to=["none"], save_strategy="no"
        ),
        train_dataset=stream,
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 3
    report = trainer.data_reports["train"]
    assert report.streamed and report.rows_in >= 12 and report.rows_out == report.rows_in
