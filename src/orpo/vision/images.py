"""Reading a row's images: paths, PIL images, encoded bytes, ``datasets.Image`` dicts or arrays."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from ..data.errors import DataError

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
    path, else a hash of the encoded bytes or of the pixels."""
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
    """The image values of one row (None or [] -> none); a null entry is an error naming ``where``."""
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple) else [value]
    for number, item in enumerate(items):
        if item is None:
            raise DataError(f"{where}: image {number} is null")
    return items


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
    raise DataError(
        f"{where}: unsupported image value {type(item).__name__}; use a file path, a PIL image, encoded image bytes, "
        "or a list of them"
    )


def load_image(item: Any, where: str) -> tuple[Any, str]:
    """One image as an RGB PIL image, and its :func:`image_key`.

    ``where`` names the row's file/line and column for the error raised when the image is missing
    or unreadable.
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
    """All images of one row (None or [] -> none), with their keys."""
    items = image_items(value, where)
    images, keys = [], []
    for number, item in enumerate(items):
        image, key = load_image(item, f"{where}, image {number}" if len(items) > 1 else where)
        images.append(image)
        keys.append(key)
    return images, keys
