"""Model and tokenizer consistency, checked when they are loaded: every token id the tokenizer can produce
must have a row in the model's input embeddings.

A tokenizer with more tokens than the model has embedding rows (tokens added after the model was saved, or
the tokenizer of another model) is not noticed by transformers: the data is prepared, then the first
forward pass stops with torch's "index out of range in self".  :func:`fit_embeddings` refuses it at load,
with both sizes and the remedy, or resizes the embeddings when asked (``resize_embeddings``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from orpo.config.usage import UsageError

logger = logging.getLogger(__name__)

#: New embedding rows are added up to a multiple of this (tensor-core friendly sizes, as peers do).
RESIZE_MULTIPLE = 64
#: Special-token spellings in chat templates: <|im_start|>, <start_of_turn>, [INST]...
_TEMPLATE_TOKEN = re.compile(r"<\|[^|<>\s]+\|>|<[A-Za-z_][\w]*>|\[/?[A-Z_]+\]")
REMEDY = (
    "resize the embeddings (orpo train --resize-embeddings, YAML resize_embeddings: true; "
    "Python: model.resize_token_embeddings(len(tokenizer))) or use the model's own tokenizer"
)


def _template_texts(tokenizer: Any) -> list[str]:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates
        return [str(text) for text in template.values()]
    return [template] if isinstance(template, str) else []


def token_id_range(tokenizer: Any) -> tuple[int, int]:
    """(tokens, highest id + 1) of what ``tokenizer`` can produce: its vocabulary with the added and special
    tokens (``len(tokenizer)``), and the ids the chat template's special tokens map to.

    Args:
        tokenizer: a tokenizer, or a processor (its text tokenizer is read).
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's text tokenizer
    count = len(tok)
    ids = [count - 1]
    vocab = tok.get_vocab()
    ids.extend(vocab.values())
    ids.extend(getattr(tok, "all_special_ids", []) or [])
    unknown = getattr(tok, "unk_token_id", None)
    for text in _template_texts(tok):
        for token in set(_TEMPLATE_TOKEN.findall(text)):
            if token in vocab:
                continue
            token_id = tok.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != unknown:
                ids.append(token_id)
    return count, max(ids) + 1


def embedding_rows(model: Any) -> int | None:
    """Rows of the model's input embeddings (None where the model does not say).

    Args:
        model: a model with ``get_input_embeddings``.
    """
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is None:
        weight = getattr(embeddings, "weight", None)
        rows = weight.shape[0] if weight is not None and weight.dim() == 2 else None
    return int(rows) if rows else None


def mismatch(
    name: str, tokenizer: Any, rows: int, what: str = "the model's input embeddings have {rows} rows"
) -> str | None:
    """The message when ``tokenizer`` produces ids beyond ``rows`` embedding rows, else None (``what``: how the
    message says the model's size).

    Args:
        name: the model's name, at the start of the message.
        tokenizer: a tokenizer or processor.
        rows: the embedding rows (or vocabulary size) to fit into.
        what: how the message says the model's size; ``{rows}`` is filled in.
    """
    count, needed = token_id_range(tokenizer)
    if needed <= rows:
        return None
    return (
        f"{name}: the tokenizer has {count} tokens (ids up to {needed - 1}, added and special tokens included) "
        f"but {what.format(rows=rows)}: ids from {rows} on would fail at the first step (index out of range); {REMEDY}"
    )


def fit_embeddings(model: Any, tokenizer: Any, *, resize: bool = False, name: str | None = None) -> None:
    """Refuse a tokenizer whose ids exceed the model's input embeddings (a :class:`UsageError` with both sizes
    and the remedy), or with ``resize`` grow the embeddings to it, to a multiple of :data:`RESIZE_MULTIPLE`
    (embeddings that are large enough are left as they are).

    Args:
        model: the model; resized in place.
        tokenizer: its tokenizer or processor.
        resize: grow the embeddings instead of refusing.
        name: the model's name for the message; None: its config's ``_name_or_path``.

    Raises:
        UsageError: the tokenizer does not fit and ``resize`` is off.
    """
    rows = embedding_rows(model)
    if rows is None:
        return
    config = getattr(model, "config", None)
    label = name or str(getattr(config, "_name_or_path", "") or "the model")
    message = mismatch(label, tokenizer, rows)
    if message is None:
        return
    if not resize:
        raise UsageError(message)
    count, needed = token_id_range(tokenizer)
    model.resize_token_embeddings(needed, pad_to_multiple_of=RESIZE_MULTIPLE)
    logger.info(
        "resized the input embeddings from %d to %d rows for the tokenizer's %d tokens (resize_embeddings)",
        rows,
        embedding_rows(model) or needed,
        count,
    )


def config_vocab_size(config: Any) -> int | None:
    """``vocab_size`` of a model config (its text model's for a vision-language model), without the weights.

    Args:
        config: a model config; None gives None.

    Returns:
        The vocabulary size, or None where the config has no positive one.
    """
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None
