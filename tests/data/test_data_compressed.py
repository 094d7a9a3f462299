"""Compressed data files (.gz, .bz2, .xz, .zst) load to the plain file's rows, with line/column errors inside them."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import lzma
import sys

import datasets
import pytest

from orpo import ORPOConfig, ORPOTrainer
from orpo.data import DataError, load_preference_data, prepare_preference_dataset
from orpo.data.errors import SOURCE_COLUMN
from orpo.demo.tiny import tiny_causal_lm

ROWS = [
    {"prompt": "What color is the sky?", "chosen": " Blue.", "rejected": " Green."},
    {"prompt": "2 + 2?", "chosen": " 4", "rejected": " 5"},
    {"prompt": "Say hello", "chosen": " hello world", "rejected": " go away"},
]
EXPECTED = [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)  # type: ignore[no-any-return]


ZSTD = pytest.param(
    ".zst",
    marks=pytest.mark.skipif(importlib.util.find_spec("zstandard") is None, reason="zstandard is not installed"),
)
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": _zstd}
BODIES = {
    ".jsonl": "".join(json.dumps(row) + "\n" for row in ROWS),
    ".json": json.dumps(ROWS, indent=1),
    ".csv": "prompt,chosen,rejected\n" + "".join(f'"{p}","{c}","{r}"\n' for p, c, r in EXPECTED),
    ".tsv": "prompt\tchosen\trejected\n" + "".join(f"{p}\t{c}\t{r}\n" for p, c, r in EXPECTED),
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-cache"))
    datasets.disable_progress_bars()


def texts(dataset) -> list[tuple[str, str, str]]:
    return [(row["prompt"], row["chosen"], row["rejected"]) for row in dataset]


def error_of(source) -> str:
    with pytest.raises(DataError) as info:
        load_preference_data(source)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ZSTD])
@pytest.mark.parametrize("kind", [".jsonl", ".json", ".csv", ".tsv"])
def test_each_compression_loads_the_plain_files_rows(tmp_path, kind, suffix):
    plain = tmp_path / f"plain{kind}"
    plain.write_text(BODIES[kind], encoding="utf-8")
    packed = tmp_path / f"pairs{kind}{suffix}"
    packed.write_bytes(COMPRESS[suffix](BODIES[kind].encode("utf-8")))
    loaded = load_preference_data(packed)["train"]
    assert texts(loaded) == texts(load_preference_data(plain)["train"]) == EXPECTED
    where = "line" if kind in (".jsonl", ".csv", ".tsv") else "record"
    first = 1 if kind == ".jsonl" else 2 if where == "line" else 0
    assert loaded[SOURCE_COLUMN] == [f"{packed}, {where} {first + i} (row {i})" for i in range(3)]


def test_a_compressed_file_prepares_and_trains_like_the_plain_file(tmp_path, tokenizer):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(BODIES[".jsonl"], encoding="utf-8")
    packed = tmp_path / "train.jsonl.gz"
    packed.write_bytes(gzip.compress(BODIES[".jsonl"].encode("utf-8")))
    args = ORPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=3, report_to=[], save_strategy="no"
    )
    ids = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
    prepared = {
        name: prepare_preference_dataset(load_preference_data(path)["train"], tokenizer, args)[0]
        for name, path in (("plain", plain), ("packed", packed))
    }
    assert [[row[c] for c in ids] for row in prepared["packed"]] == [[row[c] for c in ids] for row in prepared["plain"]]
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=args,
        train_dataset=load_preference_data(packed)["train"],
        processing_class=tokenizer,
    )
    assert trainer.data_reports["train"].rows_in == 3
    assert trainer.train().global_step == 1


def test_a_folder_and_a_glob_of_compressed_files_are_split_by_name(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl.gz").write_bytes(gzip.compress(BODIES[".jsonl"].encode()))
    (tmp_path / "d" / "validation.csv.xz").write_bytes(lzma.compress(BODIES[".csv"].encode()))
    splits = load_preference_data(tmp_path / "d")
    assert texts(splits["train"]) == texts(splits["validation"]) == EXPECTED
    assert texts(load_preference_data(str(tmp_path / "d" / "*.jsonl.gz"))["train"]) == EXPECTED


def test_a_syntax_error_in_a_compressed_file_names_its_line_and_column(tmp_path):
    lines = [json.dumps(row) for row in ROWS]
    lines[2] = '{"prompt": "Say hello", "chosen": " hello world",, "rejected": " go away"}'
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    assert error_of(path) == (
        f"{path}, line 3, column 50: malformed JSON (Expecting property name enclosed in double quotes)"
    )


def test_bad_utf8_in_a_compressed_file_names_line_column_and_offset(tmp_path):
    body = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a\xff", "chosen": "b", "rejected": "c"}\n'
    path = tmp_path / "train.jsonl.bz2"
    path.write_bytes(bz2.compress(body))
    assert error_of(path) == (
        f"{path}, line 2, column 14: not valid UTF-8 (byte 0xff at byte offset 61 of the decompressed data); save the "
        "file as UTF-8"
    )


def test_a_compressed_file_with_a_plain_name_says_so(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(gzip.compress(BODIES[".jsonl"].encode()))
    assert error_of(path) == (
        f"{path}: is gzip-compressed but its name does not say so; rename it to train.jsonl.gz so it is decompressed "
        "when read"
    )
    csv = tmp_path / "pairs.csv"
    csv.write_bytes(bz2.compress(BODIES[".csv"].encode()))
    assert error_of(csv) == (
        f"{csv}: is bzip2-compressed but its name does not say so; rename it to pairs.csv.bz2 so it is decompressed "
        "when read"
    )
    wrong = tmp_path / "pairs.json.gz"
    wrong.write_bytes(lzma.compress(BODIES[".json"].encode()))
    assert error_of(wrong) == (
        f"{wrong}: is xz-compressed but it is named .gz; rename it to pairs.json.xz so it is decompressed when read"
    )
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text(BODIES[".jsonl"])
    assert error_of(plain) == (
        f"{plain}: is named as gzip-compressed (.gz) but its content is not gzip data; compress it with gzip or drop "
        "the .gz suffix"
    )


def test_a_truncated_compressed_file_is_named_truncated_or_corrupt(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(BODIES[".jsonl"].encode())[:-12])
    assert error_of(path) == (
        f"{path}: the gzip-compressed file is truncated or corrupt after line 2 (EOFError: Compressed file ended "
        "before the end-of-stream marker was reached); re-create or re-download it"
    )
    corrupt = tmp_path / "train.jsonl.xz"
    packed = bytearray(lzma.compress(BODIES[".jsonl"].encode()))
    packed[30] ^= 0xFF
    corrupt.write_bytes(bytes(packed))
    message = error_of(corrupt)
    assert message.startswith(f"{corrupt}: the xz-compressed file is truncated or corrupt")
    assert message.endswith("; re-create or re-download it")


def test_zstd_without_zstandard_is_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    path = tmp_path / "train.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
    assert error_of(path) == (
        f"{path}: reading zstd-compressed (.zst) files needs the zstandard package: pip install 'orpo[zstd]'"
    )


def test_compressed_parquet_and_a_bare_gz_are_refused_with_the_fix(tmp_path):
    import pandas as pd

    plain = tmp_path / "p.parquet"
    pd.DataFrame(ROWS).to_parquet(plain)
    packed = tmp_path / "pairs.parquet.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert error_of(packed) == (
        f"{packed}: a parquet file cannot be read gzip-compressed; Parquet compresses its data itself, so decompress "
        "the file and give the .parquet file"
    )
    bare = tmp_path / "pairs.gz"
    bare.write_bytes(gzip.compress(b"x"))
    assert error_of(bare) == (
        f"{bare}: unsupported file type '.gz'; use one of .jsonl, .ndjson, .json, .csv, .tsv, .parquet, optionally "
        "compressed (.gz, .bz2, .xz, .zst, e.g. train.jsonl.gz)"
    )
