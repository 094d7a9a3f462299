"""load_preference_data: every source, the column mapping and split selection (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from orpo.data.errors import SOURCE_COLUMN, DataError
from orpo.data.load import ColumnMapping, load_preference_data

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
ROWS = [
    {"prompt": "What color is the sky?", "chosen": " Blue.", "rejected": " Green."},
    {"prompt": "2 + 2?", "chosen": " 4", "rejected": " 5"},
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    datasets.disable_progress_bars()


def write_jsonl(path: Path, rows: list[dict], blank_lines: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in rows]
    path.write_text(("\n\n" if blank_lines else "\n").join(lines) + "\n", encoding="utf-8")
    return path


def texts(dataset) -> list[tuple[str, str, str]]:
    return [(row["prompt"], row["chosen"], row["rejected"]) for row in dataset]


EXPECTED = [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]


# ---- local files ------------------------------------------------------------------------------


def test_jsonl_keeps_line_numbers_across_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS, blank_lines=True)
    splits = load_preference_data(str(path))
    assert list(splits) == ["train"]
    assert texts(splits["train"]) == EXPECTED
    assert splits["train"][SOURCE_COLUMN] == [f"{path}, line 1 (row 0)", f"{path}, line 3 (row 1)"]
    # file-backed: later maps are cached by datasets
    assert splits["train"].cache_files


def test_json_list_and_data_object(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "object.json").write_text(json.dumps({"data": ROWS}, indent=2))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in ROWS))
    for name in ("list.json", "object.json", "lines.json"):
        train = load_preference_data(tmp_path / name)["train"]
        assert texts(train) == EXPECTED, name
    assert load_preference_data(tmp_path / "object.json")["train"][1][SOURCE_COLUMN].endswith(
        "object.json, record 1 (row 1)"
    )


def test_mixed_types_in_other_columns_leave_text_intact(tmp_path):
    rows = [{**ROWS[0], "chosen": " 5", "id": 1}, {**ROWS[1], "id": "b-2"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    train = load_preference_data(path)["train"]
    assert train["chosen"] == [" 5", " 4"]  # text stays text
    assert train["id"] == [1, "b-2"]  # the unused column is kept as datasets reads it


def test_csv_tsv_and_parquet(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    frame.to_csv(tmp_path / "pairs.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "pairs.parquet", index=False)
    for name in ("pairs.csv", "pairs.tsv", "pairs.parquet"):
        train = load_preference_data(tmp_path / name)["train"]
        assert texts(train) == EXPECTED, name
    assert load_preference_data(tmp_path / "pairs.csv")["train"][1][SOURCE_COLUMN].endswith("pairs.csv, line 3 (row 1)")
    assert load_preference_data(tmp_path / "pairs.parquet")["train"][0][SOURCE_COLUMN].endswith("record 0 (row 0)")


def test_csv_cells_stay_text_and_autotrain_columns_map():
    mapping = ColumnMapping.from_autotrain(prompt_text_column="question", rejected_text_column="bad")
    train = load_preference_data(FIXTURES / "autotrain.csv", columns=mapping)["train"]
    # text_column defaults to "text" (AutoTrain) and becomes "chosen"; quoted commas survive
    assert texts(train) == [("What color is the sky?", " Blue.", " Green."), ('Say "hi", twice', " hi hi", " hi")]
    assert set(train.column_names) == {"prompt", "chosen", "rejected", SOURCE_COLUMN}


def test_folder_of_files_and_glob(tmp_path):
    write_jsonl(tmp_path / "data" / "a.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "data" / "b.jsonl", ROWS[1:])
    (tmp_path / "data" / "README.md").write_text("notes")
    train = load_preference_data(tmp_path / "data")["train"]
    assert texts(train) == EXPECTED
    assert train[1][SOURCE_COLUMN] == f"{tmp_path / 'data' / 'b.jsonl'}, line 1 (row 1)"
    globbed = load_preference_data(str(tmp_path / "data" / "*.jsonl"))["train"]
    assert texts(globbed) == EXPECTED


def test_mixed_file_types_in_one_split(tmp_path):
    import pandas as pd

    write_jsonl(tmp_path / "d" / "a.jsonl", ROWS[:1])
    pd.DataFrame(ROWS[1:]).to_parquet(tmp_path / "d" / "b.parquet", index=False)
    train = load_preference_data(tmp_path / "d")["train"]
    assert texts(train) == EXPECTED
    assert train[1][SOURCE_COLUMN].endswith("b.parquet, record 0 (row 1)")


def test_split_layout_files():
    splits = load_preference_data(FIXTURES / "split_layout")
    assert list(splits) == ["train", "validation"]
    assert len(splits["train"]) == 2 and len(splits["validation"]) == 1
    chosen = load_preference_data(FIXTURES / "split_layout", valid_split="validation")
    assert list(chosen) == ["train", "validation"]
    # an alias names the same split, returned under the name asked for
    aliased = load_preference_data(FIXTURES / "split_layout", valid_split="dev")
    assert list(aliased) == ["train", "dev"] and len(aliased["dev"]) == 1


def test_split_layout_folders_and_shards(tmp_path):
    write_jsonl(tmp_path / "train" / "part-0.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "train" / "part-1.jsonl", ROWS[1:])
    write_jsonl(tmp_path / "test" / "part-0.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "eval-00000-of-00001.jsonl", ROWS)
    splits = load_preference_data(tmp_path)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 2, "validation": 2, "test": 1}


def test_split_layout_with_an_unassigned_file_is_an_error(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "extra.jsonl", ROWS)
    with pytest.raises(DataError, match=r"extra.jsonl belong\(s\) to no split"):
        load_preference_data(tmp_path)


def test_split_selection_and_slices(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS * 5)
    write_jsonl(tmp_path / "test.jsonl", ROWS)
    assert len(load_preference_data(tmp_path, split="train[:3]")["train"]) == 3
    assert len(load_preference_data(tmp_path, split="train[:10%]")["train"]) == 1
    only_test = load_preference_data(tmp_path, split="test")
    assert len(only_test["train"]) == 2 and list(only_test) == ["train"]
    with pytest.raises(DataError, match=r"no split 'nope'; splits: train, test"):
        load_preference_data(tmp_path, split="nope")


# ---- datasets-native sources ----------------------------------------------------------------


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(tmp_path / "two"))
    assert texts(load_preference_data(tmp_path / "one")["train"]) == EXPECTED
    two = load_preference_data(tmp_path / "two")
    assert list(two) == ["train", "test"] and len(two["test"]) == 1


def make_dataset_repo(root: Path) -> Path:
    """A hub-style dataset repository folder: README configs, two subsets."""
    write_jsonl(root / "first" / "train.jsonl", ROWS)
    write_jsonl(root / "first" / "test.jsonl", ROWS[:1])
    write_jsonl(root / "second" / "data.jsonl", [{"question": "q?", "good": " a", "bad": " b"}])
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files:\n  - split: train\n    path: first/train.jsonl\n"
        "  - split: test\n    path: first/test.jsonl\n- config_name: second\n  data_files:\n  - split: train\n"
        "    path: second/data.jsonl\n---\n# pairs\n"
    )
    return root


def test_dataset_repository_folder_with_subsets(tmp_path):
    repo = make_dataset_repo(tmp_path / "repo")
    first = load_preference_data(repo, subset="first")
    assert list(first) == ["train", "test"] and texts(first["train"]) == EXPECTED
    second = load_preference_data(
        repo, subset="second", columns=ColumnMapping(prompt="question", chosen="good", rejected="bad")
    )
    assert texts(second["train"]) == [("q?", " a", " b")]
    with pytest.raises(DataError, match="first"):
        load_preference_data(repo, subset="third")


def test_hub_id_goes_through_datasets_load_dataset(tmp_path, monkeypatch):
    """An org/name id is handed to datasets.load_dataset with subset and split; the call is
    redirected to a local repository folder so nothing touches the network."""
    repo = make_dataset_repo(tmp_path / "repo")
    calls = []
    real = datasets.load_dataset

    def fake(path, *args, **kwargs):
        calls.append((path, kwargs.get("name"), kwargs.get("split")))
        return real(str(repo) if path == "someone/pairs" else path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    splits = load_preference_data("someone/pairs", subset="first", split="train", valid_split="test")
    assert calls[:2] == [("someone/pairs", "first", "train"), ("someone/pairs", "first", "test")]
    assert list(splits) == ["train", "test"] and texts(splits["train"]) == EXPECTED
    # a slice is datasets' business for hub ids (applied once)
    sliced = load_preference_data("someone/pairs", subset="first", split="train[:1]")
    assert calls[-1] == ("someone/pairs", "first", "train[:1]") and texts(sliced["train"]) == EXPECTED[:1]


def test_unreachable_hub_id_is_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/nothing' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"someone/nothing: could not reach the hub"):
        load_preference_data("someone/nothing")


def test_missing_local_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match=r"no such file or folder"):
        load_preference_data(str(tmp_path / "nope" / "train.jsonl"))
    with pytest.raises(DataError, match=r"no data file .* matches this pattern"):
        load_preference_data(str(tmp_path / "*.jsonl"))


# ---- in-memory ---------------------------------------------------------------------------------


def test_in_memory_sources():
    import pandas as pd

    columns = {key: [row[key] for row in ROWS] for key in ROWS[0]}  # TRL docs' dict of lists
    for source in (
        ROWS,
        columns,
        datasets.Dataset.from_list(ROWS),
        datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}),
        pd.DataFrame(ROWS),
    ):
        assert texts(load_preference_data(source)["train"]) == EXPECTED, type(source).__name__


# ---- column mapping ------------------------------------------------------------------------------


def test_column_mapping_defaults_and_clashes():
    rows = [{"prompt": "p", "text": " c", "rejected": " r", "image": "x.png"}]
    train = load_preference_data(rows)["train"]
    assert train.column_names == ["prompt", "chosen", "rejected", "images"]
    # mapping chosen to another column replaces an existing 'chosen' column
    rows = [{"prompt": "p", "chosen": " old", "answer": " new", "rejected": " r"}]
    train = load_preference_data(rows, columns={"chosen": "answer"})["train"]
    assert train[0]["chosen"] == " new" and "answer" not in train.column_names
    # a prompt column null everywhere means an implicit prompt
    train = load_preference_data([{"prompt": None, "chosen": "a b", "rejected": "a c"}])["train"]
    assert "prompt" not in train.column_names


def test_missing_column_lists_the_available_ones(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"question": "q", "good": "a", "bad": "b"}])
    with pytest.raises(
        DataError, match=rf"{path}: no chosen column \('chosen' or 'text'\); available columns: question, good, bad"
    ):
        load_preference_data(path)
    with pytest.raises(
        DataError, match=r"no column 'answer' \(given as the rejected column.*available columns: question, good, bad"
    ):
        load_preference_data(path, columns=ColumnMapping(chosen="good", rejected="answer"))
    with pytest.raises(DataError, match=r"column 'good' is mapped to both chosen and rejected"):
        load_preference_data(path, columns=ColumnMapping(chosen="good", rejected="good"))
