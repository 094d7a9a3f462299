"""The processor of a vision-language model: whether one is, its image placeholder tokens, and image
parts in chat messages."""

from __future__ import annotations

from typing import Any


def is_vision_processor(processing_class: Any) -> bool:
    """Whether ``processing_class`` is a multimodal processor: an image processor and a tokenizer.

    Args:
        processing_class: a tokenizer, processor or anything else.
    """
    return (
        getattr(processing_class, "image_processor", None) is not None
        and getattr(processing_class, "tokenizer", None) is not None
    )


def placeholder_token_ids(processor: Any) -> list[int]:
    """Ids of the tokens that stand for image (and video/audio) features: never scored.

    Read from the processor's ``*_token_id(s)`` attributes, else from its ``image_token``.

    Args:
        processor: a vision-language processor.

    Returns:
        The ids, sorted; empty where the processor names none.
    """
    ids: set[int] = set()
    for name in ("image_token_ids", "video_token_ids", "audio_token_ids"):
        for value in getattr(processor, name, None) or []:
            if value is not None:
                ids.add(int(value))
    for name in ("image_token_id", "video_token_id"):
        value = getattr(processor, name, None)
        if isinstance(value, int):
            ids.add(value)
    token = getattr(processor, "image_token", None)
    if isinstance(token, str) and not ids:
        value = processor.tokenizer.convert_tokens_to_ids(token)
        if value is not None and value != processor.tokenizer.unk_token_id:
            ids.add(int(value))
    return sorted(ids)


def _has_image_parts(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(message.get("content"), list)
        and any(isinstance(part, dict) and part.get("type") == "image" for part in message["content"])
        for message in messages
    )


def _count_image_parts(messages: list[dict[str, Any]]) -> int:
    return sum(
        sum(1 for part in message["content"] if isinstance(part, dict) and part.get("type") == "image")
        for message in messages
        if isinstance(message.get("content"), list)
    )


def with_image_parts(messages: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Messages with ``count`` ``{"type": "image"}`` parts at the start of the first user turn.

    Messages that already place image parts are returned unchanged.

    Args:
        messages: a conversation (``{"role", "content"}`` dicts; content a string or a list of parts); not changed.
        count: how many image parts to add; 0 returns ``messages``.
    """
    if count == 0 or _has_image_parts(messages):
        return messages
    target = next((i for i, message in enumerate(messages) if message.get("role") == "user"), 0)
    out = [dict(message) for message in messages]
    content = out[target].get("content")
    parts = list(content) if isinstance(content, list) else [{"type": "text", "text": content}] if content else []
    out[target]["content"] = [{"type": "image"} for _ in range(count)] + parts
    return out
