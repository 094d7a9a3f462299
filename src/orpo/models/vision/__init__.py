"""Vision-language ORPO: preference pairs whose prompt shows one or more images.

A row holds an ``images`` column (a path, PIL image, encoded bytes, a ``{"bytes", "path"}``
dict as ``datasets.Image`` stores it, or a list of those) next to the usual prompt / chosen /
rejected columns (strings or messages).  The model's processor renders the prompt with the
chat template, one image placeholder per image, and expands each placeholder to the number of
tokens the vision tower produces for that image.  The completions are tokenized as text, as for
language models, so the ORPO loss and metrics keep their definitions: the average log-prob of
the completion tokens only -- the prompt and every image placeholder token carry label -100.

Preparation is the one pipeline of :mod:`orpo.data.prepare` with :class:`VisionRowTokenizer`.
Pixels are not stored in the prepared dataset (they would be megabytes per row): preparation
reads the image of every row it keeps once, to check it and to count its placeholder tokens;
the collator reads the images of each batch again and runs the processor's image processor.
"""

from orpo.data.images import IMAGE_COLUMN, IMAGE_COLUMN_ALIASES, load_image, load_images
from orpo.models.vision.pipeline import prepare_vision_dataset
from orpo.models.vision.pixels import VisionORPODataCollator
from orpo.models.vision.placeholders import placeholder_token_ids, with_image_parts
from orpo.models.vision.rows import VisionRowTokenizer
from orpo.models.vision.tower import VISION_TOWER_NAMES, find_vision_tower, freeze_vision_tower

__all__ = [
    "IMAGE_COLUMN",
    "IMAGE_COLUMN_ALIASES",
    "VISION_TOWER_NAMES",
    "VisionORPODataCollator",
    "VisionRowTokenizer",
    "find_vision_tower",
    "freeze_vision_tower",
    "load_image",
    "load_images",
    "placeholder_token_ids",
    "prepare_vision_dataset",
    "with_image_parts",
]
