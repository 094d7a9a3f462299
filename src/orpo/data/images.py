"""Reading a row's images: paths, PIL images, encoded bytes, ``datasets.Image`` dicts or arrays."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from orpo.data.errors import DataError, where

#: The column that holds each row's images (the data mapping renames the user's column to it).
IMAGE_COLUMN = "images"
#: Also accepted as the image column when there is no ``images`` column.
IMAGE_COLUMN_ALIASES = ("image",)


def _describe(item: Any) -> str:
    if isinstance(item, str):
        return repr(item)
    if isinstance(item, dict) and item.get("path"):
        return repr(item["path"])
    return f"<{type(item).__name__}>"


def _digest(data: bytes, extra: Any = "") -> str:
    return hashlib.sha1(data + repr(extra).encode()).hexdigest()


def image_key(item: Any) -> str:
    """What identifies one image for duplicate detection, without decoding it: a file's absolute
    path, else a hash of the encoded bytes or of the pixels.

    Args:
        item: a path, encoded bytes, a PIL image, an array, or a ``{"bytes", "path"}`` dict.
    """
    from PIL import Image

    if isinstance(item, dict):
        if item.get("bytes"):
            return image_key(bytes(item["bytes"]))
        return image_key(str(item.get("path")))
    if isinstance(item, bytes | bytearray | memoryview):
        return _digest(bytes(item))
    if isinstance(item, str | os.PathLike):
        return os.path.abspath(os.fspath(item))
    if isinstance(item, Image.Image):
        return _digest(item.tobytes(), (item.size, item.mode))
    if hasattr(item, "__array__"):
        import numpy as np

        array = np.asarray(item)
        return _digest(array.tobytes(), array.shape)
    return f"<{type(item).__name__}>"


def image_items(value: Any, where: str) -> list[Any]:
    """The image values of one row (None or [] -> none); a null entry is an error naming ``where``.

    Args:
        value: the row's image column: None, one image, or a list (or tuple) of them.
        where: the row's location and column, for the error.

    Raises:
        DataError: an entry of the list is None.
    """
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple) else [value]
    for number, item in enumerate(items):
        if item is None:
            raise DataError(f"{where}: image {number} is null")
    return items


def _unsupported(item: Any, where: str) -> DataError:
    return DataError(
        f"{where}: unsupported image value {type(item).__name__}; use a file path, a PIL image, encoded image bytes, "
        "or a list of them"
    )


def storable_image(item: Any, where: str) -> dict[str, Any]:
    """One image as ``{"bytes", "path"}`` (how ``datasets.Image`` stores it), not decoded.

    In-memory rows may mix paths, bytes, PIL images and arrays; Arrow stores a column of one type
    only (given paths and bytes it stores the paths *as bytes*, which then read as broken images),
    so every form is brought to this one before the rows become a table.

    Args:
        item: a path, encoded bytes, a PIL image, an array, or a ``{"bytes", "path"}`` dict.
        where: the row's location and column, for the error.

    Raises:
        DataError: a value of another type.
    """
    from PIL import Image

    if isinstance(item, dict) and (item.get("bytes") or item.get("path")):
        data = item.get("bytes")
        return {"bytes": bytes(data) if data else None, "path": str(item["path"]) if item.get("path") else None}
    if isinstance(item, bytes | bytearray | memoryview):
        return {"bytes": bytes(item), "path": None}
    if isinstance(item, str | os.PathLike):
        return {"bytes": None, "path": os.fspath(item)}
    if isinstance(item, Image.Image) or hasattr(item, "__array__"):
        import datasets

        return datasets.Image().encode_example(item)
    raise _unsupported(item, where)


def storable_images(value: Any, where: str) -> list[dict[str, Any]]:
    """A row's images (None, one, or a list) as a list of :func:`storable_image` dicts.

    Args:
        value: the row's image column.
        where: the row's location and column, for errors.
    """
    items = image_items(value, where)
    return [storable_image(item, f"{where}, image {n}" if len(items) > 1 else where) for n, item in enumerate(items)]


def with_storable_images(data: Any, image_column: str | None, split: str = "train") -> Any:
    """In-memory rows (a list of dicts, a dict of lists) with every image in :func:`storable_images` form,
    so one dataset can mix paths, bytes, PIL images and arrays.  ``image_column``: the user's name for
    it (None: ``images`` or ``image``).  Anything else (a ``datasets.Dataset`` stores one type per
    column already) is returned as is.

    Args:
        data: the data as the user gave it.
        image_column: the user's name of the image column; None: ``images`` or ``image``.
        split: the split's name, for error locations.

    Raises:
        DataError: a null or unsupported image value.
    """
    import datasets

    def name_in(names: Any) -> str | None:
        candidates = (image_column,) if image_column is not None else (IMAGE_COLUMN, *IMAGE_COLUMN_ALIASES)
        return next((name for name in candidates if name in names), None)

    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        name = name_in(set().union(*(row.keys() for row in data)))
        if name is None:
            return data
        return [
            {**row, name: storable_images(row[name], where(f"{split} row {i}", name))} if name in row else row
            for i, row in enumerate(data)
        ]
    if isinstance(data, dict) and not isinstance(data, datasets.DatasetDict):
        name = name_in(data)
        if name is not None and isinstance(data[name], list | tuple):
            values = [storable_images(value, where(f"{split} row {i}", name)) for i, value in enumerate(data[name])]
            return {**data, name: values}
    return data


def _open(item: Any, where: str) -> Any:
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    if isinstance(item, bytes | bytearray | memoryview):
        image = Image.open(io.BytesIO(bytes(item)))
        image.load()
        return image
    if isinstance(item, str | os.PathLike):
        path = os.fspath(item)
        if path.startswith(("http://", "https://")):
            raise DataError(f"{where}: image {path!r} is a URL; orpo reads local files only, download it first")
        if not os.path.exists(path):
            raise DataError(f"{where}: image file {path!r} not found (working directory {os.getcwd()!r})")
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    if hasattr(item, "__array__"):
        import numpy as np

        return Image.fromarray(np.asarray(item))
    raise _unsupported(item, where)


def load_image(item: Any, where: str) -> tuple[Any, str]:
    """One image as an RGB PIL image, and its :func:`image_key`.

    ``where`` names the row's file/line and column for the error raised when the image is missing
    or unreadable.

    Args:
        item: a local path, encoded bytes, a PIL image, an array, or a ``{"bytes", "path"}`` dict.
        where: the row's location and column, for the error.

    Raises:
        DataError: a URL, a missing file, an unreadable image or an unsupported value.
    """
    from PIL import UnidentifiedImageError

    if isinstance(item, dict) and (item.get("bytes") or item.get("path")):  # as datasets.Image stores it
        return load_image(bytes(item["bytes"]) if item.get("bytes") else str(item["path"]), where)
    try:
        image = _open(item, where)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(
            f"{where}: image {_describe(item)} is not a readable image ({type(err).__name__}: {err})"
        ) from None
    key = image_key(item)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, key


def load_images(value: Any, where: str) -> tuple[list[Any], list[str]]:
    """All images of one row (None or [] -> none), with their keys.

    Args:
        value: the row's image column: None, one image, or a list of them.
        where: the row's location and column, for errors (each image numbered when there are several).

    Returns:
        (the RGB PIL images, their :func:`image_key` values).

    Raises:
        DataError: a null, missing or unreadable image.
    """
    items = image_items(value, where)
    images, keys = [], []
    for number, item in enumerate(items):
        image, key = load_image(item, f"{where}, image {number}" if len(items) > 1 else where)
        images.append(image)
        keys.append(key)
    return images, keys
