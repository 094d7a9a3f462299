"""The vision-language model itself: finding and freezing its vision tower.

Whether a model is one is :func:`orpo.models.kinds.kind_of`'s answer.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

#: Names under which image-text-to-text models keep their vision encoder (outermost match wins).
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model", "vision_encoder", "image_encoder", "vpm")


def find_vision_tower(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """(name, module) of the model's vision encoder: the outermost module named like one.

    Args:
        model: a vision-language model (or a PEFT model around one).

    Returns:
        The dotted name and the module, or None where no module is named like one of :data:`VISION_TOWER_NAMES`.
    """
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_TOWER_NAMES:
            return name, module
    return None


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Stop training the vision encoder (adapters inside it included); returns the frozen parameter count.

    Args:
        model: a vision-language model (or a PEFT model around one).

    Raises:
        ValueError: the model has no vision tower.
    """
    found = find_vision_tower(model)
    if found is None:
        raise ValueError(
            f"freeze_vision_tower=True but {type(model).__name__} has no vision tower (no submodule named "
            f"{', '.join(VISION_TOWER_NAMES)})"
        )
    name, tower = found
    count = 0
    for parameter in tower.parameters():
        parameter.requires_grad_(False)
        count += parameter.numel()
    logger.info("froze the vision tower %s (%d parameters)", name, count)
    return count
