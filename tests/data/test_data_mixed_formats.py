"""dataset_mixer over sources of different formats and columns: one canonical form, exact texts, a report per source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from orpo import ORPOConfig, ORPOTrainer
from orpo.config.arguments import DataArguments
from orpo.data import load_preference_data, prepare_preference_dataset
from orpo.data.normalise import ENCODED_COLUMN
from orpo.data.stream import MIX_COLUMN, READ_COLUMN
from orpo.demo.tiny import tiny_causal_lm
from orpo.training.inputs import load_data

STANDARD = [
    {"prompt": "Question one?", "chosen": " yes one", "rejected": " no one", "id": 1},
    {"prompt": "Question two?", "chosen": " yes two", "rejected": " no two", "id": 2},
]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sky?"}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}],
        "score": 0.5,
    },
    {
        "prompt": [{"role": "user", "content": "2 + 2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
        "score": 0.25,
    },
]
IMPLICIT = [
    {"chosen": "The sky is blue.", "rejected": "The sky is green.", "lang": "en"},
    {"chosen": "Two plus two is four.", "rejected": "Two plus two is five.", "lang": "en"},
    {"chosen": "Grass is green.", "rejected": "Grass is red.", "lang": "en"},
    {"chosen": "Hello world, friend.", "rejected": "Hello world, go away.", "lang": "en"},
]
IMPLICIT_CONVERSATION = [
    {
        "chosen": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hello world."}],
        "rejected": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Go away."}],
    }
]

BOS = "<s>"
EXPECTED = {  # (prompt, chosen, rejected) as training sees them, by source
    "std.jsonl": {
        ("Question one?", " yes one", " no one"),
        ("Question two?", " yes two", " no two"),
    },
    "conv.jsonl": {
        (
            f"{BOS}<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nSky?<|im_end|>\n"
            "<|im_start|>assistant\n",
            "Blue.<|im_end|>\n",
            "Green.<|im_end|>\n",
        ),
        (f"{BOS}<|im_start|>user\n2 + 2?<|im_end|>\n<|im_start|>assistant\n", "4<|im_end|>\n", "5<|im_end|>\n"),
    },
    "implicit.jsonl": {
        ("The sky is ", "blue.", "green."),
        ("Two plus two is ", "four.", "five."),
        ("Grass is ", "green.", "red."),
        ("Hello world, ", "friend.", "go away."),
    },
    "implicit_conv.jsonl": {
        (
            f"{BOS}<|im_start|>user\nHello?<|im_end|>\n<|im_start|>assistant\n",
            "Hello world.<|im_end|>\n",
            "Go away.<|im_end|>\n",
        )
    },
}
FORMATS = {
    "std.jsonl": "standard",
    "conv.jsonl": "conversational",
    "implicit.jsonl": "implicit_standard",
    "implicit_conv.jsonl": "implicit_conversational",
}


@pytest.fixture(autouse=True)
def _files(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    datasets.disable_progress_bars()
    for name, rows in (
        ("std.jsonl", STANDARD),
        ("conv.jsonl", CONVERSATIONAL),
        ("implicit.jsonl", IMPLICIT),
        ("implicit_conv.jsonl", IMPLICIT_CONVERSATION),
    ):
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    monkeypatch.chdir(tmp_path)


def config(tmp_path: Path, **overrides) -> ORPOConfig:
    values = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
    )
    return ORPOConfig(**{**values, **overrides})


def by_source(dataset) -> dict[str, set[tuple[str, str, str]]]:
    out: dict[str, set[tuple[str, str, str]]] = {}
    for row in dataset:
        out.setdefault(row[MIX_COLUMN], set()).add((row["prompt"], row["chosen"], row["rejected"]))
    return out


def test_standard_conversational_and_implicit_sources_mix_by_fractions_and_train(tmp_path, tokenizer):
    mixer = {"std.jsonl": 1.0, "conv.jsonl": 1.0, "implicit.jsonl": 0.5, "implicit_conv.jsonl": 1.0}
    train, _ = load_data(DataArguments(dataset_mixer=mixer))
    assert Counter(train[MIX_COLUMN]) == {
        "std.jsonl": 2,
        "conv.jsonl": 2,
        "implicit.jsonl": 2,
        "implicit_conv.jsonl": 1,
    }
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer), args=config(tmp_path), train_dataset=train, processing_class=tokenizer
    )
    report = trainer.data_reports["train"]
    expected = dict(EXPECTED)
    expected["implicit.jsonl"] = {("The sky is ", "blue.", "green."), ("Two plus two is ", "four.", "five.")}
    assert by_source(trainer.train_dataset) == expected  # fraction 0.5: the first half of the source's rows
    assert report.per_source == {name: (len(rows), len(rows)) for name, rows in expected.items()}
    assert report.source_rows == {"std.jsonl": 2, "conv.jsonl": 2, "implicit.jsonl": 4, "implicit_conv.jsonl": 1}
    assert report.source_formats == {name: Counter({fmt: len(expected[name])}) for name, fmt in FORMATS.items()}
    assert report.formats == {"standard": 2, "conversational": 2, "implicit_standard": 2, "implicit_conversational": 1}
    summary = report.summary()
    assert "source implicit.jsonl (implicit_standard): 4 rows read, 2 mixed in, 2 kept" in summary
    assert "source conv.jsonl (conversational): 2 rows read, 2 mixed in, 2 kept" in summary
    assert "source std.jsonl (standard): 2 rows read, 2 mixed in, 2 kept" in summary
    assert "source implicit_conv.jsonl (implicit_conversational): 1 rows read, 1 mixed in, 1 kept" in summary
    assert not {ENCODED_COLUMN, READ_COLUMN} & set(trainer.train_dataset.column_names)  # bookkeeping not carried on
    assert trainer.train().global_step == 1


def test_mixed_rows_are_normalised_exactly_as_each_source_alone(tokenizer, tmp_path):
    args = config(tmp_path)
    train, _ = load_data(DataArguments(dataset_mixer=dict.fromkeys(FORMATS, 1.0)))
    mixed, _ = prepare_preference_dataset(train, tokenizer, args)
    alone = {
        name: {
            (row["prompt"], row["chosen"], row["rejected"])
            for row in prepare_preference_dataset(load_preference_data(name)["train"], tokenizer, args)[0]
        }
        for name in FORMATS
    }
    assert by_source(mixed) == alone == EXPECTED
    locations = sorted(row["_orpo_source"] for row in mixed if row[MIX_COLUMN] == "conv.jsonl")
    assert locations == ["conv.jsonl, line 1 (row 0)", "conv.jsonl, line 2 (row 1)"]


def test_probabilities_mix_any_formats_and_count_what_the_mix_left_out(tokenizer, tmp_path, caplog):
    mixer = {"std.jsonl": 1, "conv.jsonl": 1, "implicit.jsonl": 2}
    with caplog.at_level("INFO", logger="orpo.data.mix"):
        train, _ = load_data(DataArguments(dataset_mixer=mixer, dataset_mixing="probabilities"))
    plain = [datasets.Dataset.from_dict({"i": list(range(n))}) for n in (2, 2, 4)]
    drawn = datasets.interleave_datasets(
        [d.add_column("s", [name] * len(d)) for d, name in zip(plain, mixer, strict=True)],
        probabilities=[0.25, 0.25, 0.5],
        seed=42,
    )
    assert train[MIX_COLUMN] == drawn["s"]  # the rows datasets' interleave draws, in its order
    taken = Counter(drawn["s"])
    _, report = prepare_preference_dataset(train, tokenizer, config(tmp_path))
    assert report.per_source == {name: (taken[name], taken[name]) for name in mixer if taken[name]}
    assert report.source_rows == {name: n for name, n in zip(mixer, (2, 2, 4), strict=True) if taken[name]}
    assert {name: set(counts) for name, counts in report.source_formats.items()} == {
        name: {FORMATS[name]} for name in mixer if taken[name]
    }
    for name, rows in zip(mixer, (2, 2, 4), strict=True):
        assert f"dataset_mixer[{name!r}]: {FORMATS[name]}, {rows} rows read, {taken[name]} mixed in" in caplog.text
    assert "dataset_mixer['std.jsonl']: column(s) id are not read by training" in caplog.text
    assert "dataset_mixer['conv.jsonl']: column(s) score are not read by training" in caplog.text


def test_a_streamed_mix_of_formats_prepares_and_trains(tokenizer, tmp_path):
    mixer = {"std.jsonl": 1, "conv.jsonl": 1, "implicit.jsonl": 1}
    data = DataArguments(dataset_mixer=mixer, dataset_mixing="probabilities", streaming=True)
    train, _ = load_data(data)
    assert isinstance(train, datasets.IterableDataset)
    prepared, report = prepare_preference_dataset(train, tokenizer, config(tmp_path))
    seen = by_source(list(prepared))  # the stream read once: its rows and the report's counts
    assert len(seen) >= 2 and all(texts <= EXPECTED[name] for name, texts in seen.items())
    assert report.per_source == {name: (len(texts), len(texts)) for name, texts in seen.items()}
    assert report.source_formats == {name: Counter({FORMATS[name]: len(texts)}) for name, texts in seen.items()}
    assert report.source_rows == {}  # a stream's sources are not counted up front
    assert f"source conv.jsonl (conversational): {len(seen['conv.jsonl'])} mixed in," in report.summary()
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=config(tmp_path),
        train_dataset=load_data(data)[0],
        processing_class=tokenizer,
    )
    assert trainer.train().global_step == 1


def test_tool_definitions_travel_with_their_rows(tmp_path):
    tool = {"type": "function", "function": {"name": "add", "description": "Add two numbers"}}
    rows = [{**row, "tools": [tool]} for row in CONVERSATIONAL]
    (tmp_path / "tools.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    train, _ = load_data(DataArguments(dataset_mixer={"std.jsonl": 1.0, "tools.jsonl": 1.0}))
    carried = {(row[MIX_COLUMN], row["tools"]) for row in train}
    assert carried == {("std.jsonl", None), ("tools.jsonl", json.dumps([tool]))}
