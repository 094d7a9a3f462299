"""The alignment-handbook's ``dataset_mixture``: read from recipes and ``--dataset-mixture`` JSON, loaded row for
row as the handbook's ``get_dataset`` (columns kept, weight after a seeded shuffle, the mixture shuffled with
the seed, ``test_split_size`` held out), its errors one line naming the key, and the per-source report."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest
import yaml

from _cli_support import save_tiny_model
from orpo import ModelArguments, ORPOConfig
from orpo.cli import main
from orpo.cli.train import train_sources
from orpo.config.arguments import DataArguments
from orpo.config.dataset_mixture import MixtureDataset, MixtureError, parse_mixture
from orpo.config.resolve import resolve
from orpo.config.usage import UsageError
from orpo.data import DataError
from orpo.data.stream import MIX_COLUMN
from orpo.training.inputs import load_data
from orpo.training.run import run_training


def _rows(tag: str, n: int) -> list[dict]:
    return [
        {"prompt": f"{tag} question {i}?", "chosen": f" yes {i}", "rejected": f" no {i}", "score": i, "tag": tag}
        for i in range(n)
    ]


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def files(tmp_path, monkeypatch):
    """a.jsonl (10 rows), b.jsonl (6 rows, one column more) and a folder with train/test files (4 + 3 rows)."""
    _write(tmp_path / "a.jsonl", _rows("a", 10))
    _write(tmp_path / "b.jsonl", [{**r, "extra": "x"} for r in _rows("b", 6)])
    (tmp_path / "folder").mkdir()
    _write(tmp_path / "folder" / "train.jsonl", _rows("ftrain", 4))
    _write(tmp_path / "folder" / "test.jsonl", _rows("ftest", 3))
    monkeypatch.chdir(tmp_path)
    return tmp_path


COLUMNS = ["prompt", "chosen", "rejected"]
MIXTURE = {
    "datasets": [
        {"id": "a.jsonl", "columns": COLUMNS, "weight": 0.5},
        {"id": "b.jsonl", "columns": ["rejected", "prompt", "chosen"], "weight": 1.0},
        {"id": "folder", "split": "test", "columns": COLUMNS},
    ],
    "seed": 7,
    "test_split_size": 0.25,
}


def _handbook(mixture: dict) -> datasets.DatasetDict:
    """The handbook's get_dataset on the same files, written out here (datasets' own json builder)."""
    seed = mixture.get("seed", 0)
    parts = []
    for entry in mixture["datasets"]:
        path = entry["id"] if entry["id"].endswith(".jsonl") else f"{entry['id']}/{entry.get('split', 'train')}.jsonl"
        data = datasets.load_dataset("json", data_files=path, split="train")
        if entry.get("columns") is not None:
            data = data.select_columns(entry["columns"])
        weight = entry.get("weight", 1.0)
        if weight is not None:
            data = data.shuffle(seed=seed).select(range(int(len(data) * weight)))
        parts.append(data.select_columns(COLUMNS))
    mixed = datasets.concatenate_datasets(parts).shuffle(seed=seed)
    if mixture.get("test_split_size") is None:
        return datasets.DatasetDict(train=mixed)
    return mixed.train_test_split(test_size=mixture["test_split_size"], seed=seed)


def test_mixture_loads_row_for_row_as_the_handbook(files):
    train, evaluation = load_data(DataArguments(dataset_mixture=MIXTURE))
    expected = _handbook(MIXTURE)
    # 5 of a (weight 0.5), 6 of b, 3 of folder's test split: 14 rows; 0.25 held out -> ceil(3.5) = 4
    assert (len(train), len(evaluation)) == (10, 4)
    assert train["prompt"] == expected["train"]["prompt"] and evaluation["prompt"] == expected["test"]["prompt"]
    assert train["chosen"] == expected["train"]["chosen"]
    assert Counter(train[MIX_COLUMN]) + Counter(evaluation[MIX_COLUMN]) == {"a.jsonl": 5, "b.jsonl": 6, "folder": 3}
    # only the selected columns (plus orpo's row location and source label): score, tag and extra are gone
    assert [c for c in train.column_names if not c.startswith("_orpo_")] == COLUMNS
    assert {c for c in train.column_names if c.startswith("_orpo_")} == {
        "_orpo_source", "_orpo_encoded", MIX_COLUMN, "_orpo_mix_read"
    }  # fmt: skip
    assert all(p.startswith("ftest") for p, s in zip(train["prompt"], train[MIX_COLUMN], strict=True) if s == "folder")


def test_weight_takes_a_seeded_shuffle_not_the_first_rows(files):
    mixture = {"datasets": [{"id": "a.jsonl", "weight": 0.3}], "seed": 1}
    train, evaluation = load_data(DataArguments(dataset_mixture=mixture))
    assert evaluation is None and len(train) == 3
    shuffled = datasets.Dataset.from_list(_rows("a", 10)).shuffle(seed=1).select(range(3))
    assert sorted(train["prompt"]) == sorted(shuffled["prompt"]) != [f"a question {i}?" for i in range(3)]
    # defaults: every column, weight 1.0, seed 0, no test split
    train, evaluation = load_data(DataArguments(dataset_mixture={"datasets": [{"id": "a.jsonl"}]}))
    assert evaluation is None and len(train) == 10
    assert train["prompt"] == _handbook({"datasets": [{"id": "a.jsonl"}]})["train"]["prompt"]
    # an integer test_split_size is a row count
    _, evaluation = load_data(DataArguments(dataset_mixture={"datasets": [{"id": "a.jsonl"}], "test_split_size": 2}))
    assert len(evaluation) == 2


def test_parse_defaults_and_labels():
    mixture = parse_mixture(
        {
            "datasets": [
                {"id": "org/ds", "config": "default", "split": "train_prefs"},
                {"id": "org/ds", "split": "test_prefs"},
            ]
        }
    )
    assert mixture.datasets[0] == MixtureDataset("org/ds", "default", "train_prefs", None, 1.0)
    assert (mixture.seed, mixture.test_split_size) == (0, None)
    assert mixture.labels == ["org/ds (default, train_prefs)", "org/ds (test_prefs)"]
    assert parse_mixture({"datasets": [{"id": "x", "weight": None}]}).datasets[0].weight is None


@pytest.mark.parametrize(
    ("mixture", "message"),
    [
        ({"dataset": []}, "dataset_mixture must be a mapping with a 'datasets' key: {datasets: [{id, config, split, "
         "columns, weight}], seed, test_split_size}"),
        ({"datasets": [{"id": "a", "columns": ["prompt", "chosen"]}, {"id": "b", "columns": ["prompt", "text"]}]},
         "dataset_mixture.datasets[1].columns ['prompt', 'text'] differ from datasets[0].columns ['prompt', 'chosen']: "
         "every dataset of a mixture keeps the same columns"),
        ({"datasets": [{"id": "a", "wieght": 0.5}]},
         "dataset_mixture.datasets[0]: unknown key 'wieght' (did you mean weight?); the keys are id, config, split, "
         "columns, weight"),
        ({"datasets": [{"id": "a", "weight": 1.5}]},
         "dataset_mixture.datasets[0].weight=1.5: the fraction of the dataset's rows to take, between 0 and 1"),
        ({"datasets": [{"config": "x"}]}, "dataset_mixture.datasets[0] has no id: give a hub dataset id or a local path"),
        ({"datasets": []}, "dataset_mixture.datasets is empty: give at least one {id: ...} entry"),
        ({"datasets": [{"id": "a"}], "test_split_size": 1.5},
         "dataset_mixture.test_split_size=1.5: a fraction between 0 and 1 (exclusive), or a number of rows >= 1"),
        ({"datasets": [{"id": "a"}], "sed": 1}, "dataset_mixture: unknown key 'sed' (did you mean seed?)"),
    ],
)  # fmt: skip
def test_malformed_mixtures_are_one_line_naming_the_entry(mixture, message):
    with pytest.raises(MixtureError) as caught:
        DataArguments(dataset_mixture=mixture)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_arguments_a_mixture_replaces_are_refused():
    mixture = {"datasets": [{"id": "a.jsonl"}]}
    for others, message in [
        ({"dataset_name": "d.jsonl"}, "give either dataset_name or dataset_mixture, not both"),
        ({"dataset_mixer": {"a.jsonl": 1.0}}, "give either dataset_mixer or dataset_mixture, not both"),
        ({"dataset_config": "c"}, "dataset_config does not apply to dataset_mixture: give each entry its own config"),
        ({"dataset_train_split": "train_prefs"}, "dataset_train_split='train_prefs' does not apply to dataset_mixture"),
        ({"dataset_test_split": "test"}, "dataset_test_split='test' needs dataset_mixture.test_split_size"),
        ({"streaming": True}, "dataset_mixture needs the rows counted"),
    ]:
        with pytest.raises(MixtureError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
            DataArguments(dataset_mixture=mixture, **others)
    # the handbook's split names for the mixture's own splits are accepted
    DataArguments(
        dataset_mixture={**mixture, "test_split_size": 2}, dataset_train_split="train", dataset_test_split="test"
    )


def test_load_errors_name_the_entry(files):
    with pytest.raises(DataError) as caught:
        load_data(
            DataArguments(
                dataset_mixture={"datasets": [{"id": "a.jsonl"}, {"id": "b.jsonl", "columns": ["chosen", "nope"]}]}
            )
        )
    assert str(caught.value) == (
        "dataset_mixture.datasets[1]: b.jsonl: no column 'nope' to keep; available columns: prompt, chosen, "
        "rejected, score, tag, extra"
    )
    with pytest.raises(DataError, match=r"^dataset_mixture.datasets\[0\]: data not found: missing.jsonl"):
        load_data(DataArguments(dataset_mixture={"datasets": [{"id": "missing.jsonl"}]}))
    with pytest.raises(DataError, match=r"^dataset_mixture: no rows taken"):
        load_data(DataArguments(dataset_mixture={"datasets": [{"id": "a.jsonl", "weight": 0}]}))
    with pytest.raises(DataError, match=r"^dataset_mixture.test_split_size=20 does not fit the mixture's 10 rows"):
        load_data(DataArguments(dataset_mixture={"datasets": [{"id": "a.jsonl"}], "test_split_size": 20}))


def test_mixture_from_a_recipe_and_from_json_on_the_command_line(files):
    recipe = files / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset_mixture": MIXTURE}), encoding="utf-8")
    from_yaml = resolve(*train_sources(["--config", str(recipe)])[0])
    from_flag = resolve(*train_sources(["--model", "m", "--dataset-mixture", json.dumps(MIXTURE)])[0])
    from_underscores = resolve(*train_sources(["--model", "m", "--dataset_mixture", json.dumps(MIXTURE)])[0])
    assert from_yaml.data.dataset_mixture == from_flag.data.dataset_mixture == from_underscores.data.dataset_mixture
    assert from_flag.data.dataset_mixture == MIXTURE and from_flag.data.dataset_name is None
    given = json.loads(json.dumps(MIXTURE))
    DataArguments(dataset_mixture=given)
    assert given == MIXTURE  # the caller's mapping is not rewritten


def test_cli_errors_are_one_line(files, capsys):
    bad = files / "bad.yaml"
    bad.write_text("model_name_or_path: m\ndataset_mixture:\n  - id: a.jsonl\n", encoding="utf-8")
    assert main(["train", "--config", str(bad), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"orpo train: error: {bad}, line 2: key 'dataset_mixture': expected a mapping (JSON object), got a list: "
        "[{'id': 'a.jsonl'}]"
    )
    bad.write_text("model_name_or_path: m\ndataset_mixture:\n  dataset: []\n", encoding="utf-8")
    assert main(["train", "--config", str(bad), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "orpo train: error: dataset_mixture must be a mapping with a 'datasets' key: {datasets: [{id, config, split, "
        "columns, weight}], seed, test_split_size}"
    )
    assert main(["train", "--model", "m", "--dataset-mixture", "{not json"]) == 2
    assert "argument --dataset-mixture: invalid JSON" in capsys.readouterr().err
    assert main(["train", "--model", "m", "--print-config"]) == 2
    assert "dataset_mixture" in capsys.readouterr().err  # named among the ways to give data


def test_print_config_keeps_the_mixture(files, capsys):
    assert main(["train", "--model", "m", "--dataset-mixture", json.dumps(MIXTURE), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["dataset_mixture"] == MIXTURE


def test_dataset_mixer_still_works(files):
    train, _ = load_data(DataArguments(dataset_mixer={"a.jsonl": 0.5, "b.jsonl": 1.0}))
    assert Counter(train[MIX_COLUMN]) == {"a.jsonl": 5, "b.jsonl": 6}


def test_run_reports_each_source(files, caplog):
    save_tiny_model(files / "model")
    mixture = {"datasets": [{"id": "a.jsonl", "columns": COLUMNS, "weight": 0.5}, {"id": "b.jsonl", "columns": COLUMNS}],
               "seed": 3, "test_split_size": 3}  # fmt: skip
    with caplog.at_level("INFO", logger="orpo"):
        run_training(
            ModelArguments(model_name_or_path="model"),
            DataArguments(dataset_mixture=mixture),
            ORPOConfig(
                output_dir="out",
                max_steps=1,
                report_to=["none"],
                save_strategy="no",
                per_device_train_batch_size=4,
                eval_strategy="steps",
                eval_steps=1,
            ),
            console=False,
        )
    assert "dataset_mixture: a.jsonl: 10 rows read, 5 taken (weight 0.5)" in caplog.text
    assert "dataset_mixture: b.jsonl: 6 rows read, 6 taken (weight 1.0)" in caplog.text
    # 11 rows mixed, 3 held out for evaluation: the train rows per source, each kept
    expected = _handbook(mixture)["train"]
    per_source = Counter("a" if p.startswith("a") else "b" for p in expected["prompt"])
    card = (files / "out" / "README.md").read_text()
    assert f"| `a.jsonl` | {per_source['a']} | {per_source['a']} |" in card
    assert f"| `b.jsonl` | {per_source['b']} | {per_source['b']} |" in card
    assert sum(per_source.values()) == 8
    state = json.loads((files / "out" / "trainer_state.json").read_text())
    assert any("eval_loss" in log for log in state["log_history"])  # the held-out split was evaluated


def test_resolve_without_data_names_dataset_mixture():
    with pytest.raises(UsageError, match="dataset_mixer or dataset_mixture"):
        resolve(*train_sources(["--model", "m"])[0])
