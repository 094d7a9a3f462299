"""Rows with images -> token ids: the vision-language :class:`orpo.data.tokenize.RowTokenizer`.

The normaliser renders each prompt with one image placeholder per image (through the chat
template where there is one) and keys the row by its images, so duplicates compare images too.
The tokenizer reads the images and lets the processor expand each placeholder to the image's
token count; completions are tokenized as text, with one EOS each.
"""

from __future__ import annotations

from typing import Any

from orpo.data.errors import SOURCE_COLUMN, DataError, where
from orpo.data.formats import FORMAT_REVISION, detect_format, is_conversation, maybe_decode_messages, normalize_row
from orpo.data.images import IMAGE_COLUMN, image_items, image_key, load_images
from orpo.data.normalise import EMPTY_COLUMN, EMPTY_PROMPT_COLUMN, FORMAT_COLUMN, KEY_COLUMN, Batch
from orpo.data.tokenize import (
    FLAGS_COLUMN,
    IMAGE_TRUNCATED,
    TOKENIZED_COLUMNS,
    UNUSABLE,
    LengthLimits,
    SpecialTokens,
    describe_flags,
    finalize_completion,
    finalize_prompt,
    truncate_pair,
    whitespace_token_ids,
)
from orpo.data.validate import TEXT_COLUMNS
from orpo.models.vision.placeholders import placeholder_token_ids, with_image_parts


class VisionNormaliser:
    """Picklable batch function for ``datasets.map``: rows with images -> text triple and image key.

    Args:
        processor: the model's processor (its chat template, else its tokenizer's, and ``image_token``).
        image_column: the user's name for the image column, for error messages.
    """

    def __init__(self, processor: Any, image_column: str = IMAGE_COLUMN) -> None:
        has_template = getattr(processor, "chat_template", None) is not None
        self.template_owner = processor if has_template else processor.tokenizer
        self.has_template = getattr(self.template_owner, "chat_template", None) is not None
        self.image_token: str | None = getattr(processor, "image_token", None)
        self.image_column = image_column
        self.revision = FORMAT_REVISION  # in the cache fingerprint, as for text rows

    def __call__(self, batch: Batch) -> Batch:
        columns_out = (*TEXT_COLUMNS, FORMAT_COLUMN, EMPTY_COLUMN, EMPTY_PROMPT_COLUMN, KEY_COLUMN)
        out: Batch = {name: [] for name in columns_out}
        images = batch.get(IMAGE_COLUMN)
        columns = [name for name in batch if not name.startswith("_orpo_")]
        for index, location in enumerate(batch[SOURCE_COLUMN]):
            row = {name: batch[name][index] if name in batch else None for name in TEXT_COLUMNS}
            items = image_items(images[index] if images is not None else None, where(location, self.image_column))
            result = self.render(row, len(items), location, columns)
            for name in TEXT_COLUMNS:
                out[name].append(result[name])
            out[FORMAT_COLUMN].append(detect_format(row))
            out[EMPTY_COLUMN].append(result["empty"])
            out[EMPTY_PROMPT_COLUMN].append(result["empty_prompt"] and not items)  # the images are a prompt
            out[KEY_COLUMN].append("|".join(image_key(item) for item in items))
        return out

    def render(self, row: dict[str, Any], count: int, location: str, columns: Any = None) -> dict[str, Any]:
        """The row's texts (as :func:`orpo.data.formats.normalize_row`) with ``count`` image placeholders.

        Args:
            row: the row's ``prompt``, ``chosen`` and ``rejected`` values (strings or messages).
            count: the row's number of images.
            location: where the row is (file and line), for error messages.
            columns: the data's column names, for error messages.

        Raises:
            DataError: the placeholders in the prompt do not match the images, or a completion contains one.
        """
        prompt, chosen, rejected = (maybe_decode_messages(row[name]) for name in TEXT_COLUMNS)
        raw = self.image_token is not None and isinstance(prompt, str) and self.image_token in prompt
        conversational = any(is_conversation(value) for value in (prompt, chosen, rejected))
        if not conversational and isinstance(prompt, str) and self.has_template and not raw:
            # A VLM places images through its chat template: a plain prompt becomes one user turn.
            prompt, conversational = [{"role": "user", "content": prompt}], True
        if conversational:
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if prompt is not None:
                prompt = with_image_parts(prompt, count)
            else:
                chosen = with_image_parts(chosen, count) if is_conversation(chosen) else chosen
                rejected = with_image_parts(rejected, count) if is_conversation(rejected) else rejected
        texts = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        result = normalize_row(texts, self.template_owner, location, columns)
        self._place_images(result, count, conversational, location)
        return result

    def _place_images(self, result: dict[str, Any], count: int, conversational: bool, location: str) -> None:
        """One placeholder per image in the prompt (prepended to plain text), none in a completion."""
        token = self.image_token
        if token is None:
            return
        found = result["prompt"].count(token)
        if found == 0 and count and not conversational:
            result["prompt"] = token * count + "\n" + result["prompt"]
            found = count
        if found != count:
            raise DataError(
                f"{location}: the prompt has {found} image placeholder(s) ({token!r}) but the row has {count} "
                f"image(s) in column '{self.image_column}'"
            )
        for name in ("chosen", "rejected"):
            if token in result[name]:
                raise DataError(f"{where(location, name)}: a completion cannot contain the image placeholder {token!r}")


class VisionRowTokenizer:
    """Vision-language rows: the processor tokenizes the prompt with its images, the tokenizer the
    completions; the length limits never cut into image placeholders (such a row is unusable).

    A :class:`orpo.data.tokenize.RowTokenizer`; picklable for ``datasets.map``.

    Args:
        processor: the model's processor (tokenizer and image processor).
        limits: the length limits and truncation mode.
        image_column: the user's name for the image column, for error messages.
    """

    def __init__(self, processor: Any, limits: LengthLimits, image_column: str = IMAGE_COLUMN) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.limits = limits
        self.image_column = image_column
        self.normaliser = VisionNormaliser(processor, image_column)
        self.special = SpecialTokens.probe(self.tokenizer)
        self.whitespace_ids = whitespace_token_ids(self.tokenizer)
        self.placeholders = frozenset(placeholder_token_ids(processor))

    def __call__(self, batch: Batch) -> Batch:
        out: Batch = {name: [] for name in (*TOKENIZED_COLUMNS, FLAGS_COLUMN)}
        images = batch.get(IMAGE_COLUMN)
        for index, location in enumerate(batch[SOURCE_COLUMN]):
            value = images[index] if images is not None else None
            loaded, _ = load_images(value, where(location, self.image_column))
            prompt, chosen, rejected = (batch[name][index] for name in TEXT_COLUMNS)
            cut = self.tokenize_row(prompt, chosen, rejected, loaded, location)
            for name, ids in zip(TOKENIZED_COLUMNS, cut[:3], strict=True):
                out[name].append(ids)
            out[FLAGS_COLUMN].append(cut[3])
        return out

    def tokenize_row(
        self, prompt: str, chosen: str, rejected: str, images: list[Any], location: str
    ) -> tuple[Any, Any, Any, int]:
        """One row's token ids within the length limits.

        Args:
            prompt: the rendered prompt, with its image placeholders.
            chosen: the chosen completion's text.
            rejected: the rejected completion's text.
            images: the row's images, loaded.
            location: where the row is, for error messages.

        Returns:
            (prompt ids, chosen ids, rejected ids, truncation flags); ``IMAGE_TRUNCATED`` when a cut would drop
            an image placeholder.

        Raises:
            DataError: the processor cannot process the prompt and images, or a completion holds placeholder tokens.
        """
        try:
            encoded = self.processor(text=[prompt], images=images or None, add_special_tokens=False)
        except (ValueError, TypeError, RuntimeError) as err:
            raise DataError(f"{location}: the processor could not process this row's prompt and images: {err}") from err
        prompt_ids = finalize_prompt(list(encoded["input_ids"][0]), self.special)
        completions = self.tokenizer([chosen, rejected], add_special_tokens=False)["input_ids"]
        chosen_ids, rejected_ids = (finalize_completion(ids, self.special, self.whitespace_ids) for ids in completions)
        for name, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            if any(token in self.placeholders for token in ids):
                raise DataError(f"{where(location, name)}: a completion cannot contain image placeholder tokens")
        cut_prompt, cut_chosen, cut_rejected, flags = truncate_pair(prompt_ids, chosen_ids, rejected_ids, self.limits)
        if sum(t in self.placeholders for t in cut_prompt) != sum(t in self.placeholders for t in prompt_ids):
            flags |= IMAGE_TRUNCATED
        return cut_prompt, cut_chosen, cut_rejected, flags

    def describe(self, flags: int) -> str:
        """Why a row was cut or dropped, in words, for the data report and errors.

        Args:
            flags: the row's truncation flags.
        """
        if flags & UNUSABLE:
            return (
                f"the prompt (with its image tokens) does not fit max_prompt_length={self.limits.max_prompt_length} / "
                f"max_length={self.limits.max_length} without cutting an image or the whole completion"
            )
        return describe_flags(flags, self.limits)
