"""Weighted mixing of several sources (files, folders, hub ids) and streaming, with the report per source."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest

from _cli_support import save_tiny_model
from orpo import ModelArguments, ORPOConfig
from orpo.config.arguments import DataArguments
from orpo.config.options import Source
from orpo.config.resolve import recipe_source, resolve
from orpo.config.usage import UsageError
from orpo.data import DataError
from orpo.data.stream import MIX_COLUMN
from orpo.training.inputs import load_data
from orpo.training.run import run_training


def _rows(tag: str, n: int) -> list[dict[str, str]]:
    return [{"prompt": f"{tag} question {i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(n)]


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A .jsonl file (10 rows), a folder with train.jsonl (4 rows) and a 'hub id' org/hub (6 rows)."""
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows("a", 10)))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows("f", 4)))
    hub = [{"question": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in _rows("h", 6)]
    calls = []
    real = datasets.load_dataset

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        if path != "org/hub":  # the builders that read local files
            return real(path, name=name, split=split, streaming=streaming, **kwargs)
        calls.append(streaming)
        data = datasets.Dataset.from_list([{"prompt": r["question"], **r} for r in hub]).remove_columns("question")
        return data.to_iterable_dataset() if streaming else (data if split else datasets.DatasetDict(train=data))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    return calls


def test_fractions_take_that_share_of_each_source(sources):
    mixer = {"a.jsonl": 0.5, "folder": 1.0, "org/hub": 0.5}
    train, evaluation = load_data(DataArguments(dataset_mixer=mixer))
    assert evaluation is None
    assert Counter(train[MIX_COLUMN]) == {"a.jsonl": 5, "folder": 4, "org/hub": 3}
    # the first rows of each source (as the alignment-handbook's select(range(int(fraction * n)))), shuffled
    assert sorted(p for p, s in zip(train["prompt"], train[MIX_COLUMN], strict=True) if s == "a.jsonl") == [
        f"a question {i}?" for i in range(5)
    ]
    assert train[MIX_COLUMN] != sorted(train[MIX_COLUMN])  # shuffled, not concatenated in order


def test_probabilities_interleave_like_datasets(sources):
    train, _ = load_data(DataArguments(dataset_mixer={"a.jsonl": 3, "folder": 1}, dataset_mixing="probabilities"))
    a = datasets.Dataset.from_list(_rows("a", 10))
    f = datasets.Dataset.from_list(_rows("f", 4))
    expected = datasets.interleave_datasets([a, f], probabilities=[0.75, 0.25], seed=42)
    assert train["prompt"] == expected["prompt"]


def test_per_source_report_and_model_card(sources, tmp_path):
    save_tiny_model(tmp_path / "model")
    result = run_training(
        ModelArguments(model_name_or_path="model"),
        DataArguments(dataset_mixer={"a.jsonl": 0.5, "org/hub": 1.0}),
        ORPOConfig(
            output_dir="out", max_steps=1, report_to=["none"], save_strategy="no", per_device_train_batch_size=4
        ),
        console=False,
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| `a.jsonl` | 5 | 5 |" in card and "| `org/hub` | 6 | 6 |" in card
    assert "- org/hub" in card.split("---", 2)[1]  # a hub id goes into the card's datasets metadata
    assert result.output_dir == "out"


def test_streamed_mix_from_the_hub_and_a_file(sources, tmp_path):
    save_tiny_model(tmp_path / "model")
    data = DataArguments(dataset_mixer={"a.jsonl": 1, "org/hub": 1}, dataset_mixing="probabilities", streaming=True)
    train, _ = load_data(data)
    assert isinstance(train, datasets.IterableDataset) and sources == [True]  # the hub source was streamed
    run_training(
        ModelArguments(model_name_or_path="model"),
        data,
        ORPOConfig(
            output_dir="out", max_steps=2, report_to=["none"], save_strategy="no", per_device_train_batch_size=2
        ),
        console=False,
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| `a.jsonl` |" in card and "| `org/hub` |" in card


def test_mixer_errors_name_the_source_and_option(sources):
    with pytest.raises(ValueError, match=r"dataset_mixer=\{'a.jsonl': 1.5\}: each fraction must be a finite number in"):
        load_data(DataArguments(dataset_mixer={"a.jsonl": 1.5}))
    with pytest.raises(
        DataError, match=r"dataset_mixer\['a.jsonl'\].*with --streaming use dataset_mixing='probabilities'"
    ):
        load_data(DataArguments(dataset_mixer={"a.jsonl": 0.5}, streaming=True))
    with pytest.raises(UsageError, match="either dataset_name"):
        load_data(DataArguments(dataset_name="a.jsonl", dataset_mixer={"a.jsonl": 1.0}))
    with pytest.raises(ValueError, match="dataset_mixing='mean' is not one of fractions, probabilities"):
        DataArguments(dataset_mixer={"a.jsonl": 1.0}, dataset_mixing="mean")


def test_mixer_and_streaming_from_flags_and_yaml(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: m\ndataset_mixer:\n  a.jsonl: 0.5\n  org/hub: 1.0\nstreaming: true\n")
    args = resolve(recipe_source(recipe))
    assert args.data.dataset_mixer == {"a.jsonl": 0.5, "org/hub": 1.0} and args.data.streaming is True
    flags = Source.from_mapping(
        "flags", {"model": "m", "dataset_mixer": '{"x.jsonl": 1}', "dataset_mixing": "probabilities"}
    )
    args = resolve(flags)
    assert args.data.dataset_mixer == {"x.jsonl": 1} and args.data.dataset_mixing == "probabilities"
