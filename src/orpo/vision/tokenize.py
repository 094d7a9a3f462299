"""One preference row with images -> token ids, with the processor expanding each image placeholder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.formats import detect_format, is_conversation, to_text_triple
from ..data.tokenize import (
    LengthLimits,
    SpecialTokens,
    TokenizeReport,
    finalize_completion,
    finalize_prompt,
    truncate_pair,
    whitespace_token_ids,
)
from .images import IMAGE_COLUMN, SOURCE_COLUMN, load_images
from .placeholders import placeholder_token_ids, with_image_parts

#: Flag of a row whose prompt truncation would cut into image placeholder tokens.
IMAGE_TRUNCATED = 16


def _check_value(value: Any, where: str) -> None:
    if value is None:
        raise ValueError(f"{where}: value is missing or null, expected text or messages")
    if not isinstance(value, str | list):
        raise ValueError(f"{where}: expected text or a list of messages, got {type(value).__name__} {value!r:.60}")


class _VisionRowTokenizer:
    """Picklable row function for ``datasets.map``: one preference row with images -> token ids.

    Renders the prompt with image placeholders, tokenizes it with the processor (which expands each
    placeholder to the image's token count), tokenizes the completions as text with one EOS each,
    and applies the length limits (never cutting into image placeholders).
    """

    def __init__(self, processor: Any, limits: LengthLimits, split: str, has_prompt: bool, image_column: str | None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.limits = limits
        self.split = split
        self.has_prompt = has_prompt
        self.image_column = image_column
        self.special = SpecialTokens.probe(self.tokenizer)
        self.whitespace_ids = whitespace_token_ids(self.tokenizer)
        self.placeholders = frozenset(placeholder_token_ids(processor))
        self.image_token = getattr(processor, "image_token", None)
        has_template = getattr(processor, "chat_template", None) is not None
        self.template_owner = processor if has_template else self.tokenizer

    def _text_triple(self, row: dict[str, Any], count: int, where: str) -> tuple[str, str, str]:
        prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
        raw = self.image_token is not None and isinstance(prompt, str) and self.image_token in prompt
        has_template = getattr(self.template_owner, "chat_template", None) is not None
        conversational = any(is_conversation(v) for v in (prompt, chosen, rejected))
        if not conversational and isinstance(prompt, str) and has_template and not raw:
            # A VLM places images through its chat template: plain strings become one user turn
            # and the assistant's replies.
            prompt, conversational = [{"role": "user", "content": prompt}], True
        if conversational:
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if prompt is not None:
                prompt = with_image_parts(prompt, count)
            else:
                chosen = with_image_parts(chosen, count) if is_conversation(chosen) else chosen
                rejected = with_image_parts(rejected, count) if is_conversation(rejected) else rejected
        triple = to_text_triple({"prompt": prompt, "chosen": chosen, "rejected": rejected}, self.template_owner, where)
        prompt_text, chosen_text, rejected_text = triple
        if self.image_token is not None:
            found = prompt_text.count(self.image_token)
            if found == 0 and count and not conversational:
                prompt_text = self.image_token * count + "\n" + prompt_text
                found = count
            if found != count:
                raise ValueError(
                    f"{where}: the prompt has {found} image placeholder(s) ({self.image_token!r}) but the row has "
                    f"{count} image(s) in column '{IMAGE_COLUMN}'"
                )
            for name, text in (("chosen", chosen_text), ("rejected", rejected_text)):
                if self.image_token in text:
                    raise ValueError(
                        f"{where}, column '{name}': a completion cannot contain the image placeholder {self.image_token!r}"
                    )
        return prompt_text, chosen_text, rejected_text

    def __call__(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        where = row.get(SOURCE_COLUMN) or f"{self.split} row {index}"
        for column in ("prompt", "chosen", "rejected") if self.has_prompt else ("chosen", "rejected"):
            _check_value(row.get(column), f"{where}, column '{column}'")
        value = row.get(self.image_column) if self.image_column else None
        images, keys = load_images(value, f"{where}, column '{self.image_column}'")
        prompt_text, chosen_text, rejected_text = self._text_triple(row, len(images), where)
        try:
            encoded = self.processor(text=[prompt_text], images=images or None, add_special_tokens=False)
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"{where}: the processor could not process this row's prompt and images: {err}") from err
        prompt_ids = finalize_prompt(list(encoded["input_ids"][0]), self.special)
        completions = self.tokenizer([chosen_text, rejected_text], add_special_tokens=False)["input_ids"]
        chosen_ids, rejected_ids = (finalize_completion(ids, self.special, self.whitespace_ids) for ids in completions)
        for name, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            if any(token in self.placeholders for token in ids):
                raise ValueError(f"{where}, column '{name}': a completion cannot contain image placeholder tokens")
        cut_prompt, chosen_ids, rejected_ids, flags = truncate_pair(prompt_ids, chosen_ids, rejected_ids, self.limits)
        if sum(t in self.placeholders for t in cut_prompt) != sum(t in self.placeholders for t in prompt_ids):
            flags |= IMAGE_TRUNCATED
        return {
            "prompt": prompt_text,
            "chosen": chosen_text,
            "rejected": rejected_text,
            "prompt_input_ids": cut_prompt,
            "chosen_input_ids": chosen_ids,
            "rejected_input_ids": rejected_ids,
            "tokenize_flags": flags,
            "format": detect_format({k: row.get(k) for k in ("prompt", "chosen", "rejected")}),
            "image_key": "|".join(keys),
        }


@dataclass
class VisionTokenizeReport(TokenizeReport):
    dropped_image_truncated: int = 0

    def summary(self) -> str:
        text = super().summary()
        if self.dropped_image_truncated:
            text += f"; {self.dropped_image_truncated} dropped: the prompt limit would cut image tokens"
        return text
