"""Batching rows with images: the text collator plus the processor's pixel inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from orpo.data.images import IMAGE_COLUMN, load_images
from orpo.models.vision.placeholders import placeholder_token_ids
from orpo.scoring.collate import ORPODataCollator
from orpo.scoring.layouts import SCORE_INDEX_KEY, score_positions


@dataclass
class VisionORPODataCollator:
    """:class:`orpo.scoring.collate.ORPODataCollator` plus the pixel inputs of every row's images.

    Rows are laid out as for text (chosen rows 0..B-1, rejected rows B..2B-1), so each pair's
    images appear twice, in the order their placeholders appear in the batch.  Image placeholder
    tokens never carry a label, whatever ``nll_scope`` says.

    Attributes:
        processor: the model's processor (its image processor makes the pixel inputs).
        pad_token_id: the id input rows are padded with.
        label_pad_token_id: the label of unscored positions (padding, prompts, image placeholders).
        pad_to_multiple_of: round padded lengths up to a multiple of this; None: no rounding.
        nll_scope: ``"completion"`` or ``"prompt_and_completion"``: which tokens the NLL term scores.
    """

    processor: Any
    pad_token_id: int
    label_pad_token_id: int = -100
    pad_to_multiple_of: int | None = None
    nll_scope: str = "completion"
    _text: ORPODataCollator = field(init=False, repr=False)
    _placeholders: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._text = ORPODataCollator(
            self.pad_token_id, self.label_pad_token_id, self.pad_to_multiple_of, self.nll_scope
        )
        self._placeholders = torch.tensor(placeholder_token_ids(self.processor), dtype=torch.long)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self._text(features)  # marked Layout.PADDED: images do not change the row layout
        placeholder = torch.isin(batch["input_ids"], self._placeholders)
        for key in ("labels", "nll_labels"):
            if key in batch:
                batch[key] = batch[key].masked_fill(placeholder, self.label_pad_token_id)
        batch[SCORE_INDEX_KEY] = score_positions(batch, self.label_pad_token_id)[2]  # the labels changed
        per_row = [
            load_images(f.get(IMAGE_COLUMN), f"batch row {i}, column '{IMAGE_COLUMN}'")[0]
            for i, f in enumerate(features)
        ]
        images = [image for row in per_row for image in row] * 2  # chosen rows, then rejected rows
        if images:
            # The image processor itself: at transformers 5.3-5.5 the Qwen2-VL and LLaVA processors need text too.
            pixels = self.processor.image_processor(images=images, return_tensors="pt")
            unused = set(getattr(self.processor, "unused_input_names", None) or ())
            batch.update({key: value for key, value in pixels.items() if key not in unused})
        if _wants_mm_token_type_ids(self.processor):
            types = self.processor.create_mm_token_type_ids(batch["input_ids"].tolist())
            batch["mm_token_type_ids"] = torch.tensor(types, dtype=torch.long)
        return batch

    @classmethod
    def from_args(cls, processor: Any, args: Any) -> VisionORPODataCollator:
        """The collator an ``ORPOConfig`` asks for.

        Args:
            processor: the model's processor (its tokenizer's pad token unless ``args.padding_value`` is set).
            args: an ``ORPOConfig`` (``padding_value``, ``label_pad_token_id``, ``pad_to_multiple_of``,
                ``nll_scope``).
        """
        pad = args.padding_value if args.padding_value is not None else processor.tokenizer.pad_token_id
        return cls(processor, pad, args.label_pad_token_id, args.pad_to_multiple_of, args.nll_scope)


def _wants_mm_token_type_ids(processor: Any) -> bool:
    """Qwen2-VL-style models need ``mm_token_type_ids`` for their multimodal RoPE.  The processor says so by
    listing it in ``model_input_names`` (every 5.x release) or by ``return_mm_token_type_ids`` (newer ones)."""
    wanted = "mm_token_type_ids" in processor.model_input_names or getattr(processor, "return_mm_token_type_ids", False)
    return bool(wanted) and hasattr(processor, "create_mm_token_type_ids")
