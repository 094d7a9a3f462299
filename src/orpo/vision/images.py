"""Reading a row's images: paths, PIL images, encoded bytes, ``datasets.Image`` dicts or arrays."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

#: The column that holds each row's images (the data mapping renames the user's column to it).
IMAGE_COLUMN = "images"
#: Also accepted as the image column when there is no ``images`` column.
IMAGE_COLUMN_ALIASES = ("image",)
#: Column in which orpo's data loader records where each row came from (file, line).
SOURCE_COLUMN = "_orpo_source"


def _describe(item: Any) -> str:
    if isinstance(item, str):
        return repr(item)
    if isinstance(item, dict) and item.get("path"):
        return repr(item["path"])
    return f"<{type(item).__name__}>"


def load_image(item: Any, where: str) -> tuple[Any, str]:
    """One image as an RGB PIL image, and a key identifying it (for duplicate detection).

    ``where`` names the row and column for the error raised when the image is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(item, Image.Image):
            key = hashlib.sha1(item.tobytes() + repr((item.size, item.mode)).encode()).hexdigest()
            image = item
        elif isinstance(item, dict) and (item.get("bytes") or item.get("path")):
            if item.get("bytes"):
                return load_image(bytes(item["bytes"]), where)
            return load_image(str(item["path"]), where)
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
            key = hashlib.sha1(data).hexdigest()
            image = Image.open(io.BytesIO(data))
            image.load()
        elif isinstance(item, str | os.PathLike):
            path = os.fspath(item)
            if path.startswith(("http://", "https://")):
                raise ValueError(f"{where}: image {path!r} is a URL; orpo reads local files only, download it first")
            if not os.path.exists(path):
                raise ValueError(f"{where}: image file {path!r} not found (working directory {os.getcwd()!r})")
            key = os.path.abspath(path)
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        elif hasattr(item, "__array__"):
            import numpy as np

            array = np.asarray(item)
            key = hashlib.sha1(array.tobytes() + repr(array.shape).encode()).hexdigest()
            image = Image.fromarray(array)
        else:
            raise ValueError(
                f"{where}: unsupported image value {type(item).__name__}; use a file path, a PIL image, "
                "encoded image bytes, or a list of them"
            )
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(
            f"{where}: image {_describe(item)} is not a readable image ({type(err).__name__}: {err})"
        ) from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, key


def load_images(value: Any, where: str) -> tuple[list[Any], list[str]]:
    """All images of one row (None or [] -> none), with their keys."""
    if value is None:
        return [], []
    items = list(value) if isinstance(value, list | tuple) else [value]
    images, keys = [], []
    for number, item in enumerate(items):
        if item is None:
            raise ValueError(f"{where}: image {number} is null")
        image, key = load_image(item, f"{where}, image {number}" if len(items) > 1 else where)
        images.append(image)
        keys.append(key)
    return images, keys
