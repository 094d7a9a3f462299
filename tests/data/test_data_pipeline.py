"""One pipeline, three row tokenizers: the same questionable rows get the same decisions, counts and errors.

The rows come from a JSONL file so every error can be checked for the file, the line, the row
and the option to change, for a causal LM (text), a vision-language model and an encoder-decoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from orpo import ORPOConfig
from orpo.data import DataError, load_preference_data, prepare_preference_dataset
from orpo.demo.tiny import build_seq2seq_tokenizer, build_tokenizer, build_vlm_processor, make_image
from orpo.models.encoder_decoder import prepare_seq2seq_dataset
from orpo.models.vision import prepare_vision_dataset

CORPUS = ["What color is it? Which one? red blue green same no idea a square yes"] * 10
KINDS = ("text", "vision", "seq2seq")
TOO_LONG = " red blue green" * 6  # far over max_completion_length=4 in every tokenizer here
#: What each row is, by index (line = index + 1).
ROWS = (
    ("What color is it?", " red", " blue", "red.png"),  # 0: fine
    ("What color is it?", " same", " same", "blue.png"),  # 1: chosen == rejected
    ("Which one?", "  ", " blue", "red.png"),  # 2: empty chosen
    ("What color is it?", " red", " blue", "red.png"),  # 3: duplicate of row 0, image included
    ("What color?", TOO_LONG, " no", "green.png"),  # 4: chosen over max_completion_length
    ("Which one?", " green", " red", "green.png"),  # 5: fine
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def processors():
    return {
        "text": build_tokenizer(CORPUS),
        "vision": build_vlm_processor(CORPUS, "qwen2_vl"),
        "seq2seq": build_seq2seq_tokenizer(CORPUS, "t5"),
    }


PREPARE = {"text": prepare_preference_dataset, "vision": prepare_vision_dataset, "seq2seq": prepare_seq2seq_dataset}


def write_rows(folder: Path, rows=ROWS, image_column: str = "images") -> Path:
    colors = {"red.png": (255, 0, 0), "blue.png": (0, 0, 255), "green.png": (0, 160, 0)}
    for name, color in colors.items():
        make_image((20, 24), color, path=str(folder / name))
    path = folder / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for prompt, chosen, rejected, image in rows:
            row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, image_column: [str(folder / image)]}
            handle.write(json.dumps(row) + "\n")
    return path


def prepare(kind, processors, path, tmp_path, **config):
    args = ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[], max_completion_length=4, **config)
    return PREPARE[kind](load_preference_data(path)["train"], processors[kind], args)


def error_of(kind, processors, path, tmp_path, **config) -> str:
    with pytest.raises(DataError) as info:
        prepare(kind, processors, path, tmp_path, **config)
    return str(info.value)


@pytest.mark.parametrize("on_too_long", ["truncate", "drop"])
@pytest.mark.parametrize("kind", KINDS)
def test_same_rows_same_decisions_and_counts(kind, processors, tmp_path, on_too_long):
    path = write_rows(tmp_path)
    dataset, report = prepare(kind, processors, path, tmp_path, on_duplicate="drop", on_too_long=on_too_long)
    assert (report.rows_in, report.identical_pairs, report.empty_completions, report.duplicates) == (6, 1, 1, 1)
    assert report.dropped == {"empty chosen or rejected": 1, "chosen == rejected": 1, "duplicate row": 1}
    tokenized = report.tokenize
    assert (tokenized.rows_in, tokenized.chosen_truncated, tokenized.prompt_truncated) == (3, 1, 0)
    kept = [0, 4, 5] if on_too_long == "truncate" else [0, 5]
    assert tokenized.dropped_too_long == (on_too_long == "drop") and report.rows_out == len(kept)
    assert dataset["_orpo_source"] == [f"{path}, line {i + 1} (row {i})" for i in kept]
    assert all(len(ids) <= 4 for ids in dataset["chosen_input_ids"])
    assert dataset["length"] == [
        len(row["prompt_input_ids"]) + max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))
        for row in dataset
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("option", "row", "label"),
    [
        ("on_empty_completion", 2, "empty chosen or rejected"),
        ("on_identical_pair", 1, "chosen == rejected"),
        ("on_duplicate", 3, "duplicate row"),
    ],
)
def test_row_policy_errors_name_file_line_and_option(kind, processors, tmp_path, option, row, label):
    path = write_rows(tmp_path)
    assert error_of(kind, processors, path, tmp_path, **{option: "error"}) == (
        f"{path}, line {row + 1} (row {row}): {label} (1 such row(s) in the train data); fix the data or set "
        f"{option}='drop' or 'keep'"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_too_long_error_names_file_line_limit_and_option(kind, processors, tmp_path):
    path = write_rows(tmp_path)
    message = error_of(kind, processors, path, tmp_path, on_too_long="error")
    cause = "chosen is longer than max_completion_length=4" if kind == "seq2seq" else "chosen does not fit"
    assert message.startswith(f"{path}, line 5 (row 4): {cause}")
    assert "max_completion_length=4" in message
    assert message.endswith(
        "(1 such row(s) in the train data); raise the limits, or set on_too_long='truncate' or 'drop'"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_second_run_is_served_from_the_cache(kind, processors, tmp_path, monkeypatch):
    """Every row tokenizer and normaliser pickles to the same fingerprint: nothing is recomputed."""
    from orpo.data.normalise import Normaliser
    from orpo.data.tokenize import PairTokenizer
    from orpo.models.encoder_decoder import Seq2SeqRowTokenizer
    from orpo.models.vision.rows import VisionNormaliser, VisionRowTokenizer

    classes = {
        "text": (Normaliser, PairTokenizer),
        "vision": (VisionNormaliser, VisionRowTokenizer),
        "seq2seq": (Normaliser, Seq2SeqRowTokenizer),
    }
    calls = {"n": 0}
    for cls in classes[kind]:
        original = cls.__call__

        def counted(self, batch, original=original):
            calls["n"] += 1
            return original(self, batch)

        monkeypatch.setattr(cls, "__call__", counted)  # on the class: the instances' fingerprints stay the same
    path = write_rows(tmp_path)
    first, _ = prepare(kind, processors, path, tmp_path)
    assert calls["n"] >= 2
    calls["n"] = 0
    again, report = prepare(kind, processors, path, tmp_path)
    assert calls["n"] == 0 and report.rows_out == len(first)
    assert again["chosen_input_ids"] == first["chosen_input_ids"]


@pytest.mark.parametrize("kind", KINDS)
def test_blank_prompts_are_counted_and_kept_by_default(kind, processors, tmp_path, caplog):
    rows = [ROWS[0], ("", " red", " blue", "red.png"), ("   ", " green", " red", "green.png"), ROWS[5]]
    path = write_rows(tmp_path, rows)
    with caplog.at_level("WARNING", logger="orpo.data.policy"):
        dataset, report = prepare(kind, processors, path, tmp_path)
    # A vision row's prompt holds its image even when its text is blank: not an empty prompt.
    blank = 0 if kind == "vision" else 2
    assert report.empty_prompts == blank and report.rows_out == len(dataset) == 4 and not report.dropped
    assert (f"{blank} empty prompt" in report.summary()) == bool(blank)
    warned = [r.getMessage() for r in caplog.records if "empty prompt" in r.getMessage()]
    assert warned == ([f"train: keeping 2 row(s): empty prompt (first: {path}, line 2 (row 1))"] if blank else [])


@pytest.mark.parametrize("kind", ["text", "seq2seq"])
@pytest.mark.parametrize("policy", ["drop", "error"])
def test_on_empty_prompt_drop_counts_and_error_names_the_row(kind, processors, tmp_path, policy):
    rows = [ROWS[0], ("What color is it?", " red", " green", "red.png"), (" \n ", " red", " blue", "red.png")]
    path = write_rows(tmp_path, rows)
    if policy == "error":
        assert error_of(kind, processors, path, tmp_path, on_empty_prompt="error") == (
            f"{path}, line 3 (row 2): empty prompt (1 such row(s) in the train data); fix the data or set "
            "on_empty_prompt='drop' or 'keep'"
        )
        return
    dataset, report = prepare(kind, processors, path, tmp_path, on_empty_prompt="drop")
    assert report.dropped == {"empty prompt": 1} and report.empty_prompts == 1
    assert dataset["_orpo_source"] == [f"{path}, line {i + 1} (row {i})" for i in (0, 1)]


def test_a_blank_conversational_prompt_is_an_empty_prompt(processors, tmp_path):
    def turn(role, text):
        return [{"role": role, "content": text}]

    rows = [
        {"prompt": turn("user", "Which one?"), "chosen": turn("assistant", "red"), "rejected": turn("assistant", "no")},
        {"prompt": turn("user", "  "), "chosen": turn("assistant", "red"), "rejected": turn("assistant", "no")},
        {
            "prompt": turn("system", "Be brief.") + turn("user", ""),
            "chosen": turn("assistant", "a"),
            "rejected": turn("assistant", "b"),
        },
    ]
    args = ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[])
    _, report = prepare_preference_dataset(rows, processors["text"], args)
    assert report.empty_prompts == 1  # row 2 has a system turn: its prompt is not empty


# ---- image errors -------------------------------------------------------------------------------


def test_missing_image_names_file_line_and_column(processors, tmp_path):
    rows = list(ROWS)
    rows[5] = (*ROWS[5][:3], "nope.png")
    path = write_rows(tmp_path, rows)
    assert error_of("vision", processors, path, tmp_path).startswith(
        f"{path}, line 6 (row 5), column 'images': image file '{tmp_path / 'nope.png'}' not found"
    )


def test_unreadable_image_names_file_line_and_the_user_column(processors, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    rows = list(ROWS)
    rows[0] = (*ROWS[0][:3], "broken.png")
    path = write_rows(tmp_path, rows)
    broken = f"image '{tmp_path / 'broken.png'}' is not a readable image (UnidentifiedImageError"
    assert error_of("vision", processors, path, tmp_path).startswith(
        f"{path}, line 1 (row 0), column 'images': {broken}"
    )
    # In-memory rows keep the user's column name ('image', renamed to 'images' by the column mapping).
    args = ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[])
    good = {"prompt": "Which one?", "chosen": " red", "rejected": " blue", "image": str(tmp_path / "red.png")}
    with pytest.raises(DataError) as info:
        prepare_vision_dataset([good, {**good, "image": str(tmp_path / "broken.png")}], processors["vision"], args)
    assert str(info.value).startswith(f"train row 1, column 'image': {broken}")


def test_a_null_image_in_a_list_names_its_position(processors, tmp_path):
    rows = [{"prompt": "Which one?", "chosen": " red", "rejected": " blue", "images": [str(tmp_path / "a.png"), None]}]
    make_image(path=str(tmp_path / "a.png"))
    args = ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[])
    with pytest.raises(DataError) as info:
        prepare_vision_dataset(rows, processors["vision"], args)
    assert str(info.value) == "train row 0, column 'images': image 1 is null"


def test_one_dataset_mixes_image_paths_bytes_and_pil_images(processors, tmp_path):
    import io

    red = make_image((20, 24), (255, 0, 0), path=str(tmp_path / "red.png"))
    encoded = io.BytesIO()
    make_image((20, 24), (0, 0, 255)).save(encoded, format="PNG")
    forms = [str(tmp_path / "red.png"), encoded.getvalue(), red, [str(tmp_path / "red.png"), encoded.getvalue()]]
    rows = [
        {"prompt": "Which one?", "chosen": f" red {i}", "rejected": " blue", "images": v} for i, v in enumerate(forms)
    ]
    args = ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[])
    for data in (rows, {key: [row[key] for row in rows] for key in rows[0]}):
        dataset, report = prepare_vision_dataset(data, processors["vision"], args)
        assert report.rows_out == 4 and report.duplicates == 0
        placeholders = processors["vision"].image_token_id
        counts = [ids.count(placeholders) for ids in dataset["prompt_input_ids"]]
        assert counts[0] == counts[1] == counts[2] > 0 and counts[3] == 2 * counts[0]
    loaded = load_preference_data(rows)["train"]
    assert [len(value) for value in loaded["images"]] == [1, 1, 1, 2]


def test_a_broken_image_among_mixed_forms_names_its_own_row(processors, tmp_path):
    make_image(path=str(tmp_path / "red.png"))
    encoded = io_png()
    rows = [
        {"prompt": "Which one?", "chosen": " red", "rejected": " blue", "images": [value]}
        for value in (str(tmp_path / "red.png"), encoded, b"not an image")
    ]
    args = ORPOConfig(output_dir=str(tmp_path / "out"), report_to=[])
    with pytest.raises(DataError) as info:
        prepare_vision_dataset(rows, processors["vision"], args)
    assert str(info.value).startswith("train row 2, column 'images': image <bytes> is not a readable image")
    rows[2]["images"] = [3.5]
    with pytest.raises(DataError) as info:
        prepare_vision_dataset(rows, processors["vision"], args)
    assert str(info.value).startswith("train row 2, column 'images': unsupported image value float")


def io_png() -> bytes:
    import io

    buffer = io.BytesIO()
    make_image((20, 24), (0, 0, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- the length policy itself --------------------------------------------------------------------


def test_length_policy_counts_every_cut_and_always_drops_unusable_rows():
    from orpo.data.errors import SOURCE_COLUMN
    from orpo.data.policy import apply_length_policy
    from orpo.data.tokenize import (
        CHOSEN_TRUNCATED,
        IMAGE_TRUNCATED,
        NO_ROOM_FOR_COMPLETION,
        PROMPT_TRUNCATED,
        REJECTED_TRUNCATED,
    )

    flags = [
        0,
        PROMPT_TRUNCATED,
        CHOSEN_TRUNCATED | REJECTED_TRUNCATED,
        NO_ROOM_FOR_COMPLETION,
        PROMPT_TRUNCATED | IMAGE_TRUNCATED | NO_ROOM_FOR_COMPLETION,
    ]
    rows = datasets.Dataset.from_dict({SOURCE_COLUMN: [f"data.jsonl, line {i + 1} (row {i})" for i in range(5)]})
    for policy, kept, too_long in (("truncate", [0, 1, 2], 0), ("drop", [0], 2)):
        keep, report = apply_length_policy(flags, policy, str, rows, "train")
        assert keep == kept and report.rows_out == len(kept) and report.rows_in == 5
        assert (report.prompt_truncated, report.chosen_truncated, report.rejected_truncated) == (2, 1, 1)
        # an image cut is counted as such even when the prompt also leaves no room
        assert (report.dropped_image_truncated, report.dropped_no_room_for_completion) == (1, 1)
        assert report.dropped_too_long == too_long and report.dropped_rows == [i for i in range(5) if i not in kept]
    with pytest.raises(DataError) as info:
        apply_length_policy(flags, "error", lambda bits: f"flags {bits}", rows, "train")
    assert str(info.value) == (
        "data.jsonl, line 2 (row 1): flags 1 (4 such row(s) in the train data); raise the limits, or set "
        "on_too_long='truncate' or 'drop'"
    )
    assert apply_length_policy([0, 0], "error", str, rows, "train")[0] == [0, 1]
