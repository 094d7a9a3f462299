"""Preparation is batched, parallel (dataset_num_proc) and cached by datasets' fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from orpo import ORPOConfig
from orpo.data import load_preference_data, prepare_preference_dataset
from orpo.data.normalise import Normaliser
from orpo.data.tokenize import PairTokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    datasets.disable_progress_bars()


def config(tmp_path, **kwargs) -> ORPOConfig:
    return ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[], **kwargs)


def write_pairs(path: Path, n: int = 24) -> Path:
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(json.dumps({"prompt": f"Question {i}?", "chosen": f" yes {i}", "rejected": f" no {i}"}) + "\n")
    return path


def counting(monkeypatch, cls) -> dict[str, int]:
    calls = {"n": 0}
    original = cls.__call__

    def wrapped(self, batch):
        calls["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(cls, "__call__", wrapped)  # a class attribute: the instances' fingerprints do not change
    return calls


def cache_files(dataset) -> set[str]:
    folder = Path(dataset.cache_files[0]["filename"]).parent
    return {p.name for p in folder.glob("cache-*.arrow")}


def test_second_run_is_served_from_the_cache(tmp_path, tokenizer, monkeypatch):
    path = write_pairs(tmp_path / "pairs.jsonl")
    tokenize_calls = counting(monkeypatch, PairTokenizer)
    normalise_calls = counting(monkeypatch, Normaliser)

    first, report = prepare_preference_dataset(load_preference_data(path)["train"], tokenizer, config(tmp_path))
    assert tokenize_calls["n"] > 0 and normalise_calls["n"] > 0 and report.rows_out == 24
    files = cache_files(first)
    assert files

    tokenize_calls["n"] = normalise_calls["n"] = 0
    again, _ = prepare_preference_dataset(load_preference_data(path)["train"], tokenizer, config(tmp_path))
    assert tokenize_calls["n"] == 0 and normalise_calls["n"] == 0  # nothing re-normalised or re-tokenized
    assert cache_files(again) == files  # and no new cache file written
    assert again["chosen_input_ids"] == first["chosen_input_ids"]

    # another tokenizer (or other limits) is another fingerprint: tokenized afresh
    from orpo.demo.tiny import build_tokenizer

    other = build_tokenizer(["Question yes no"] * 10, vocab_size=300)
    prepare_preference_dataset(load_preference_data(path)["train"], other, config(tmp_path))
    assert tokenize_calls["n"] > 0
    tokenize_calls["n"] = 0
    prepare_preference_dataset(
        load_preference_data(path)["train"], tokenizer, config(tmp_path, max_length=8, max_prompt_length=4)
    )
    assert tokenize_calls["n"] > 0


def test_parallel_preparation_matches_serial(tmp_path, tokenizer):
    path = write_pairs(tmp_path / "pairs.jsonl", n=16)
    train = load_preference_data(path)["train"]
    serial, _ = prepare_preference_dataset(train, tokenizer, config(tmp_path))
    parallel, report = prepare_preference_dataset(
        train, tokenizer, config(tmp_path, dataset_num_proc=2, max_length=9, max_prompt_length=4)
    )
    limited, _ = prepare_preference_dataset(train, tokenizer, config(tmp_path, max_length=9, max_prompt_length=4))
    assert parallel["prompt_input_ids"] == limited["prompt_input_ids"]
    assert parallel["chosen_input_ids"] == limited["chosen_input_ids"]
    assert parallel["_orpo_source"] == serial["_orpo_source"]
    assert report.tokenize.prompt_truncated > 0


def test_pre_tokenized_data_passes_through(tmp_path, tokenizer):
    rows = [{"prompt_input_ids": [1, 5], "chosen_input_ids": [6, 4], "rejected_input_ids": [7, 4]}]
    dataset, report = prepare_preference_dataset(rows, tokenizer, config(tmp_path))
    assert dataset[0]["chosen_input_ids"] == [6, 4] and report.tokenize is None


def test_text_column_default_and_length_column(tmp_path, tokenizer):
    rows = [{"prompt": "Question?", "text": " yes", "rejected": " no"}]
    dataset, _ = prepare_preference_dataset(rows, tokenizer, config(tmp_path))
    row = dataset[0]
    assert row["length"] == len(row["prompt_input_ids"]) + max(
        len(row["chosen_input_ids"]), len(row["rejected_input_ids"])
    )
