"""Reading local data files precisely: row locations, UTF-8, CSV shape, JSON syntax and types.

The ``datasets`` builders do the actual loading (so the data are memory-mapped and later maps
are cached); these scans give every row its file/line and, when a builder fails, find the exact
spot (file, line, column, byte offset) for the error message.

Text files may be compressed (``train.jsonl.gz``, ``.bz2``, ``.xz``, ``.zst``): the builders
decompress them, and the scans read them through the same decompression, so lines and columns
are those of the decompressed text.  The magic bytes are checked against the name, so a
compressed file with a plain name is named as such instead of failing as "not UTF-8".
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import importlib
import io
import json
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from orpo.config.extras import PACKAGES

from .errors import DataError, where
from .formats import check_text

#: File extension -> how it is read.
DATA_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}


#: Compression suffix -> its name.  ``datasets`` decompresses these for its builders; so does :func:`open_data`.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
_SUFFIXES = {name: suffix for suffix, name in COMPRESSIONS.items()}
#: Data kinds that may be compressed (Parquet compresses its pages itself; a compressed Parquet file is refused).
_COMPRESSIBLE = ("jsonl", "json", "csv", "tsv")


def extension(path: Path) -> str:
    """The data format's suffix: ``.jsonl`` for ``train.jsonl`` and for ``train.jsonl.gz``.

    Args:
        path: the file.
    """
    suffix = path.suffix.lower()
    if suffix in COMPRESSIONS:
        return Path(path.stem).suffix.lower()
    return suffix


def compression(path: Path) -> str | None:
    """The compression the file's name declares ('gzip', 'bzip2', 'xz', 'zstd'), or None.

    Args:
        path: the file; only its last suffix is read.
    """
    return COMPRESSIONS.get(path.suffix.lower())


def sniff_compression(path: Path) -> str | None:
    """The compression the file's first bytes show, whatever its name.

    Args:
        path: the file; its first 10 bytes are read.

    Returns:
        ``"gzip"``, ``"bzip2"``, ``"xz"``, ``"zstd"``, or None for none of them.
    """
    with open(path, "rb") as handle:
        head = handle.read(10)
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    # "BZh", the block size digit, then a block or end-of-stream marker (text may start with "BZh" too)
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    return None


def _zstandard() -> Any:
    """The optional zstandard module (``datasets`` needs it too for .zst), or None."""
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        return None


def open_data(file: DataFile) -> io.BufferedIOBase:
    """The file's bytes, decompressed as its name says.

    Args:
        file: the data file.

    Raises:
        DataError: a ``.zst`` file without the zstandard package.
    """
    kind = compression(file.path)
    if kind == "gzip":
        return gzip.GzipFile(file.path, "rb")
    if kind == "bzip2":
        return bz2.open(file.path, "rb")
    if kind == "xz":
        return lzma.open(file.path, "rb")
    if kind == "zstd":
        zstandard = _zstandard()
        if zstandard is None:  # pragma: no cover - DataFile.of refuses the file first
            raise DataError(_zstd_missing(file.display))
        # Buffered: zstandard's own reader refuses flush(), which TextIOWrapper calls when it closes.
        return io.BufferedReader(zstandard.open(file.path, "rb"))
    return open(file.path, "rb")


def _zstd_missing(display: str) -> str:
    return (
        f"{display}: reading zstd-compressed (.zst) files needs the zstandard package: {PACKAGES['zstandard'].install}"
    )


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
    zstandard = _zstandard()
    if zstandard is not None:
        errors = (*errors, zstandard.ZstdError)
    return errors


@contextlib.contextmanager
def decompressing(file: DataFile, lines: list[int] | None = None) -> Iterator[None]:
    """A compressed file that ends early or holds bad data: one line naming it (and the last good line).

    Args:
        file: the file being read.
        lines: a one-item list the reader keeps the last line it read in (for the message); None: not known.

    Raises:
        DataError: decompression failed inside the block.
    """
    kind = compression(file.path)
    if kind is None:
        yield
        return
    try:
        yield
    except _decompression_errors() as err:
        after = f" after line {lines[0]}" if lines and lines[0] else ""
        raise DataError(
            f"{file.display}: the {kind}-compressed file is truncated or corrupt{after} ({type(err).__name__}: "
            f"{err}); re-create or re-download it"
        ) from None


def check_compression(path: Path, display: str, kind: str) -> None:
    """The name's compression must be the content's; a zstd file needs zstandard.

    Args:
        path: the file.
        display: the file as the user named it, for the message.
        kind: its data kind (``jsonl``, ``json``, ``csv``, ``tsv``, ``parquet``).

    Raises:
        DataError: content compressed otherwise than the name says, a compressed Parquet file, or a ``.zst``
            file without zstandard.
    """
    named = compression(path)
    actual = sniff_compression(path) if path.stat().st_size else named
    if actual != named:
        if actual is None:
            raise DataError(
                f"{display}: is named as {named}-compressed ({path.suffix}) but its content is not {named} data; "
                f"compress it with {named} or drop the {path.suffix} suffix"
            )
        suffix = _SUFFIXES[actual]
        if kind == "parquet":
            raise DataError(
                f"{display}: is {actual}-compressed; Parquet compresses its data itself, so decompress the file and "
                "give the .parquet file"
            )
        fix = f"rename it to {path.name}{suffix}" if named is None else f"rename it to {path.stem}{suffix}"
        state = "its name does not say so" if named is None else f"it is named {path.suffix}"
        raise DataError(f"{display}: is {actual}-compressed but {state}; {fix} so it is decompressed when read")
    if named is None:
        return
    if kind not in _COMPRESSIBLE:
        raise DataError(
            f"{display}: a {kind} file cannot be read {named}-compressed; Parquet compresses its data itself, so "
            "decompress the file and give the .parquet file"
        )
    if named == "zstd" and _zstandard() is None:
        raise DataError(_zstd_missing(display))


@dataclass
class DataFile:
    """One local data file, as the scans find it.

    Attributes:
        path: the file.
        display: the file as the user named it, in messages and row locations.
        kind: ``jsonl``, ``json_list``, ``json_object``, ``csv``, ``tsv``, ``parquet`` or ``empty``.
        locations: each row's location in the file (file and line or record), without the row index; None
            until scanned (or, for a JSON document, loaded).
        rows: the row count; None until known.
        columns: the column names (CSV header, Parquet schema); None where not read up front.
    """

    path: Path
    display: str
    kind: str  # jsonl | json_list | json_object | csv | tsv | parquet | empty
    locations: list[str] | None = None  # per-row location within the file (without the row index)
    rows: int | None = None
    columns: list[str] | None = None

    @classmethod
    def of(cls, path: Path, display: str) -> DataFile:
        """The file with its kind (for JSON: lines, a list or an object, from its first line).

        Args:
            path: the file.
            display: the file as the user named it.

        Raises:
            DataError: an unsupported extension, or a compression that does not match (:func:`check_compression`).
        """
        ext = extension(path)
        if ext not in DATA_EXTENSIONS:
            named = compression(path)
            shown = f"{ext}{path.suffix}" if named else ext
            raise DataError(
                f"{display}: unsupported file type {shown or '(no extension)'!r}; use one of "
                f"{', '.join(DATA_EXTENSIONS)}, optionally compressed ({', '.join(COMPRESSIONS)}, e.g. train.jsonl.gz)"
            )
        kind = DATA_EXTENSIONS[ext]
        check_compression(path, display, kind)
        file = cls(path=path, display=display, kind=kind)
        if kind in ("jsonl", "json"):
            file.kind = _json_kind(file, kind)
        return file

    @property
    def group(self) -> tuple[str, ...]:
        """Files with the same group are loaded by one datasets builder call."""
        if self.kind in ("json_list", "json_object"):
            return (self.kind, self.display)  # one file per call: rows are counted after loading
        if self.kind in ("csv", "tsv"):
            return (self.kind, *(self.columns or ()))
        return (self.kind,)


def _json_kind(file: DataFile, hint: str) -> str:
    with decompressing(file), open_data(file) as handle:
        line = handle.readline()
        while line and not line.strip():
            line = handle.readline()
    if not line:
        return "empty"
    first = line.lstrip(b"\xef\xbb\xbf").lstrip()
    if first.startswith(b"["):
        return "json_list"
    if hint == "jsonl":
        return "jsonl"
    try:
        obj = json.loads(first)
    except ValueError:
        return "json_object"  # a pretty-printed object, or a broken first line (diagnosed on load)
    if isinstance(obj, dict) and isinstance(obj.get("data"), list) and len(obj) == 1:
        return "json_object"
    return "jsonl"


def _utf8_error(file: DataFile, number: int, raw: bytes, offset: int, err: UnicodeDecodeError) -> DataError:
    bad = raw[err.start : err.start + 1]
    of = "the decompressed data" if compression(file.path) else "the file"
    return DataError(
        f"{file.display}, line {number}, column {err.start + 1}: not valid UTF-8 (byte 0x{bad.hex()} at byte offset "
        f"{offset + err.start} of {of}); save the file as UTF-8"
    )


def _utf8_lines(file: DataFile) -> Iterator[tuple[int, bytes]]:
    """The file's raw lines with their 1-based numbers, each checked to be UTF-8 (an error names
    the line, the column and the byte offset in the file)."""
    offset = 0
    last = [0]  # the last line read whole, for a truncated compressed file
    with decompressing(file, last), open_data(file) as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _utf8_error(file, number, raw, offset, err) from None
            offset += len(raw)
            last[0] = number
            yield number, raw


def _scan_lines(file: DataFile) -> None:
    """JSON lines: the line number of every row; UTF-8 checked with the byte offset of any error."""
    locations = [f"{file.display}, line {number}" for number, raw in _utf8_lines(file) if raw.strip()]
    file.locations = locations
    file.rows = len(locations)


def _scan_csv(file: DataFile) -> None:
    """CSV/TSV: UTF-8, the header, the same number of fields in every record, each record's line."""
    for _ in _utf8_lines(file):
        pass
    delimiter = "\t" if file.kind == "tsv" else ","
    locations = []
    with open_data(file) as raw, io.TextIOWrapper(cast("IO[bytes]", raw), encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                file.kind, file.rows, file.locations = "empty", 0, []
                return
            _check_header(file.display, header, reader.line_num)
            previous = reader.line_num
            for record in reader:
                start = previous + 1
                previous = reader.line_num
                if not record:
                    continue  # blank line
                if len(record) != len(header):
                    raise DataError(
                        f"{file.display}, line {start}: {len(record)} field(s) but the header has {len(header)} "
                        f"({', '.join(header)}); quote fields that hold {delimiter!r} or line breaks"
                    )
                locations.append(f"{file.display}, line {start}")
        except csv.Error as err:
            raise DataError(f"{file.display}, line {reader.line_num}: malformed CSV ({err})") from None
    file.columns = header
    file.locations = locations
    file.rows = len(locations)


def _check_header(display: str, header: list[str], line: int) -> None:
    """A name given to two columns: the csv builder keeps only one of them, so one column would be lost."""
    seen: dict[str, int] = {}
    repeated: dict[str, list[int]] = {}
    for number, name in enumerate(header, 1):
        if name in seen:
            repeated.setdefault(name, [seen[name]]).append(number)
        seen.setdefault(name, number)
    if repeated:
        names = "; ".join(f"{name!r} in columns {', '.join(map(str, numbers))}" for name, numbers in repeated.items())
        raise DataError(
            f"{display}, line {line}: the header repeats column name(s) ({names}); only one column of each name "
            "could be read, so rename them"
        )


def _scan_parquet(file: DataFile) -> None:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file.path)
    except Exception as err:
        raise DataError(f"{file.display}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    file.rows = parquet.metadata.num_rows
    file.columns = list(parquet.schema_arrow.names)
    file.locations = [f"{file.display}, record {i}" for i in range(file.rows)]


class TypeTracker:
    """Text columns must hold text or message lists, one kind per column across the split's rows.

    Args:
        columns: the text columns to check.
    """

    def __init__(self, columns: frozenset[str]) -> None:
        self.columns = columns
        self.first: dict[str, tuple[str, str]] = {}  # column -> (kind, location)

    def check(self, row: dict[str, Any], location: str) -> None:
        """Check one row's text columns against the kinds seen first (missing and null values are skipped).

        Args:
            row: the row.
            location: where it is, for the message.

        Raises:
            DataError: a value that is neither text nor messages, or of another kind than the column's first.
        """
        for column in self.columns:
            value = row.get(column)
            if value is None:
                continue  # missing or null: reported by check_dataset with its line
            check_text(value, where(location, column))
            kind = "text" if isinstance(value, str) else "a message list"
            first_kind, first_location = self.first.setdefault(column, (kind, location))
            if kind != first_kind:
                raise DataError(
                    f"{where(location, column)}: is {kind} but {first_location} holds {first_kind}; use one format per "
                    "column"
                )


def diagnose_json(file: DataFile, tracker: TypeTracker, start_row: int) -> int:
    """Re-read a JSON file that the builder could not load; raise the precise error if there is one.

    Args:
        file: the JSON (lines, list or object) file.
        tracker: the split's text-column type checks.
        start_row: the split's row index of the file's first row.

    Returns:
        The file's row count (for the next file's row indices).

    Raises:
        DataError: malformed JSON, a row that is not an object, or a text column of mixed types; names the line.
    """
    if file.kind == "jsonl":
        row = start_row
        with decompressing(file), open_data(file) as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                line = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{file.display}, line {number}, column {err.colno}: malformed JSON ({err.msg})"
                    ) from None
                if not isinstance(value, dict):
                    raise DataError(
                        f"{file.display}, line {number}: expected one JSON object per line, got {type(value).__name__}"
                    )
                tracker.check(value, f"{file.display}, line {number} (row {row})")
                row += 1
        return row - start_row
    text = _read_utf8(file)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{file.display}, line {err.lineno}, column {err.colno}: malformed JSON ({err.msg})") from None
    rows = _check_json_document(file, value)
    for index, item in enumerate(rows):
        tracker.check(item, f"{file.display}, record {index} (row {start_row + index})")
    return len(rows)


def _read_utf8(file: DataFile) -> str:
    with decompressing(file), open_data(file) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        number = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line_end = data.find(b"\n", err.start)
        raw = data[line_start : line_end if line_end >= 0 else len(data)]
        shifted = UnicodeDecodeError(err.encoding, raw, err.start - line_start, err.end - line_start, err.reason)
        raise _utf8_error(file, number, raw, line_start, shifted) from None


def _check_json_document(file: DataFile, value: Any) -> list[Any]:
    if isinstance(value, dict):
        if "data" not in value:
            keys = ", ".join(list(value)[:10]) or "none"
            raise DataError(
                f"{file.display}: a JSON object file must hold its rows in a 'data' list; keys found: {keys}"
            )
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(f"{file.display}: expected a list of row objects, got {type(value).__name__}")
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise DataError(
                f"{file.display}, record {index}: expected an object with prompt/chosen/rejected, got {type(row).__name__}"
            )
    return value


def prescan(file: DataFile) -> None:
    """Check a file before ``datasets`` loads it and record what it shows: rows, their locations, columns.

    JSON lines and CSV/TSV: UTF-8, syntax and record shape, with each row's line; Parquet: readable, its rows
    and columns; a JSON document: UTF-8 and (an object) its ``data`` list.

    Args:
        file: the file; its ``rows``, ``locations``, ``columns`` (and ``kind``, for an empty one) are set.

    Raises:
        DataError: the first problem, naming the file and line.
    """
    if file.kind == "jsonl":
        _scan_lines(file)
    elif file.kind in ("csv", "tsv"):
        _scan_csv(file)
    elif file.kind == "parquet":
        _scan_parquet(file)
    elif file.kind in ("json_list", "json_object"):
        text = _read_utf8(file)  # UTF-8 with line/offset, before the builder's less precise error
        if file.kind == "json_object":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{file.display}, line {err.lineno}, column {err.colno}: malformed JSON ({err.msg})"
                ) from None
            if isinstance(value, dict) and not isinstance(value.get("data"), list):
                _check_json_document(file, value)
            if not isinstance(value, dict):
                raise DataError(f"{file.display}: expected a JSON list of rows or an object with a 'data' list")
            rows = value["data"]
            file.rows = len(rows)
            if not rows:
                file.kind = "empty"
    elif file.kind == "empty":
        file.rows, file.locations = 0, []
