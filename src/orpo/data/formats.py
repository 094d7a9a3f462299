"""Turn one preference row of any supported shape into a (prompt, chosen, rejected) text triple.

Shapes (columns already named prompt/chosen/rejected):

- ``standard``: prompt, chosen and rejected are strings; used verbatim.
- ``implicit_standard``: no prompt; chosen and rejected are strings sharing a text prefix,
  which becomes the prompt (cut at a whitespace boundary).
- ``conversational``: chosen and rejected (and the prompt) are lists of
  ``{"role", "content"}`` messages (a string prompt is a user turn, a string completion an
  assistant turn).  Chosen and rejected may also repeat the prompt (e.g. UltraFeedback: a
  prompt string and full conversations); then the prompt is their shared prefix and must
  agree with the prompt column.
- ``implicit_conversational``: no prompt; chosen and rejected are full conversations; the
  prompt is their longest common message prefix, ending at a user/system turn.

Conversations are rendered with the tokenizer's chat template: the prompt with the generation
prompt, and the completion is exactly what follows it in the full conversation.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import DataError, short

#: Part of the normaliser's ``datasets`` cache fingerprint: bump it whenever the texts produced
#: here change, so a cache written by an older orpo is not reused.
FORMAT_REVISION = 2

VALID_ROLES = ("system", "user", "assistant", "tool", "developer")
#: Roles a prompt may end with: the completion starts right after one of them.
PROMPT_END_ROLES = ("system", "user", "developer", "tool")
FORMATS = ("standard", "implicit_standard", "conversational", "implicit_conversational")

Messages = list[dict[str, Any]]

_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


def maybe_decode_messages(value: Any) -> Any:
    """A JSON-encoded message list (as stored in CSV cells) -> the list; anything else unchanged.

    Args:
        value: a cell's value; only a string that looks like ``[{"role": ...}]`` is decoded.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[{") and text.endswith("}]") and '"role"' in text:
            try:
                decoded = json.loads(text)
            except ValueError:
                return value
            if isinstance(decoded, list) and decoded and all(isinstance(m, dict) and "role" in m for m in decoded):
                return decoded
    return value


def is_conversation(value: Any) -> bool:
    """Whether ``value`` is a message list: a list of dicts (roles and contents are checked elsewhere).

    Args:
        value: a text column's value.
    """
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def detect_format(row: dict[str, Any]) -> str:
    """One of :data:`FORMATS`.

    Args:
        row: the row's ``prompt`` (absent or None: an implicit prompt), ``chosen`` and ``rejected``.
    """
    prompt, chosen, rejected = (maybe_decode_messages(row.get(name)) for name in ("prompt", "chosen", "rejected"))
    conversational = any(is_conversation(value) for value in (prompt, chosen, rejected))
    has_prompt = prompt is not None
    if conversational:
        return "conversational" if has_prompt else "implicit_conversational"
    return "standard" if has_prompt else "implicit_standard"


def check_text(value: Any, where: str) -> None:
    """A text column's value: a string or a message list (null, numbers, dicts are errors).

    Args:
        value: the value.
        where: the row's location and column, for the message.

    Raises:
        DataError: anything but a string or a list of dicts.
    """
    if value is None:
        raise DataError(f"{where}: value is missing or null, expected text")
    if isinstance(value, str) or is_conversation(value):
        return
    if isinstance(value, list):
        bad = next(item for item in value if not isinstance(item, dict))
        raise DataError(
            f"{where}: expected text or a list of {{'role', 'content'}} messages, got a list holding {short(bad)}"
        )
    raise DataError(f"{where}: expected text or a list of messages, got {type(value).__name__} {short(value)}")


def clean_messages(messages: Messages, where: str) -> Messages:
    """Validate roles and contents; drop keys that Arrow filled with null (e.g. absent tool_calls).

    Args:
        messages: the message list.
        where: the row's location and column, for the message.

    Raises:
        DataError: an empty list, a message without a role or with an unknown one, or without content (and
            without tool calls), or content that is not text or a list of parts.
    """
    if not messages:
        raise DataError(f"{where}: the message list is empty")
    out = []
    for turn, message in enumerate(messages):
        here = f"{where}, message {turn}"
        if "role" not in message or message.get("role") is None:
            keys = ", ".join(sorted(k for k, v in message.items() if v is not None)) or "none"
            hint = ""
            if "from" in message and "value" in message:
                hint = " (this looks like ShareGPT's from/value format: rename the keys to role/content)"
            raise DataError(f"{here}: no 'role' (keys: {keys}){hint}")
        role = message["role"]
        if role not in VALID_ROLES:
            hint = f"; did you mean '{_SHAREGPT_ROLES[role]}'?" if role in _SHAREGPT_ROLES else ""
            raise DataError(f"{here}: role {short(role)} is not one of {', '.join(VALID_ROLES)}{hint}")
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            raise DataError(f"{here}: 'content' is missing or null")
        if content is not None and not isinstance(content, str | list):
            raise DataError(
                f"{here}: 'content' must be text (or a list of content parts), got {type(content).__name__} {short(content)}"
            )
        out.append({key: value for key, value in message.items() if value is not None})
    return out


def as_messages(value: Any, default_role: str, where: str) -> Messages:
    """A string is one message of ``default_role``; a list is validated.

    Args:
        value: a string or a message list.
        default_role: the role of a string (``"user"`` for a prompt, ``"assistant"`` for a completion).
        where: the row's location and column, for errors.
    """
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    return clean_messages(value, where)


def common_prefix_length(a: list[Any], b: list[Any]) -> int:
    """How many leading items ``a`` and ``b`` share.

    Args:
        a: a list.
        b: another list.
    """
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _describe(message: dict[str, Any] | None) -> str:
    if message is None:
        return "(none)"
    return f"{message.get('role')}: {short(message.get('content'), 40)}"


def _shared_prompt_length(chosen: Messages, rejected: Messages) -> int:
    """Longest common prefix, cut back to end at a user/system turn."""
    n = common_prefix_length(chosen, rejected)
    while n > 0 and chosen[n - 1].get("role") not in PROMPT_END_ROLES:
        n -= 1
    return n


def _check_completions(chosen: Messages, rejected: Messages, n: int, where: str) -> None:
    """After a prompt of ``n`` messages, both completions must exist and start with the assistant."""
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if n >= len(messages):
            raise DataError(f"{where}, column '{name}': no assistant reply after the prompt")
    first_c, first_r = chosen[n], rejected[n]
    if first_c.get("role") != "assistant" or first_r.get("role") != "assistant":
        raise DataError(
            f"{where}: chosen and rejected do not share the prompt: message {n} differs "
            f"(chosen {_describe(first_c)}; rejected {_describe(first_r)}); both must be answers to the same "
            "conversation"
        )


def split_implicit_conversation(
    chosen: Messages, rejected: Messages, where: str
) -> tuple[Messages, Messages, Messages]:
    """Prompt = longest shared message prefix ending at a user/system turn.

    (Also a developer or tool turn: :data:`PROMPT_END_ROLES`.)

    Args:
        chosen: the chosen conversation, prompt included.
        rejected: the rejected conversation, prompt included.
        where: the row's location, for errors.

    Returns:
        (prompt messages, chosen completion messages, rejected completion messages).

    Raises:
        DataError: no shared prompt, or a completion that is missing or does not start with the assistant.
    """
    n = _shared_prompt_length(chosen, rejected)
    if n == 0:
        first = chosen[0].get("role") if chosen else None
        if first == "assistant" and rejected and rejected[0].get("role") == "assistant":
            raise DataError(
                f"{where}: no prompt: chosen and rejected hold only assistant turns and there is no 'prompt' "
                "column (give one, or include the user turn in both conversations)"
            )
        raise DataError(
            f"{where}: chosen and rejected do not share the prompt: message 0 differs (chosen {_describe(chosen[0])}; "
            f"rejected {_describe(rejected[0] if rejected else None)}); give a 'prompt' column or make both "
            "conversations start with the same turns"
        )
    _check_completions(chosen, rejected, n, where)
    return chosen[:n], chosen[n:], rejected[n:]


def split_conversation(prompt: Any, chosen: Any, rejected: Any, where: str) -> tuple[Messages, Messages, Messages]:
    """(prompt messages, chosen completion messages, rejected completion messages).

    Args:
        prompt: the prompt (a string is a user turn, or messages); None: implicit, the shared prefix of the
            conversations.
        chosen: the chosen answer (a string is an assistant turn), or the whole conversation.
        rejected: the rejected answer, or the whole conversation.
        where: the row's location, for errors.

    Raises:
        DataError: invalid messages, completions that do not answer the same prompt, or a prompt column that
            does not match the prompt the conversations repeat.
    """
    chosen_msgs = as_messages(chosen, "assistant", f"{where}, column 'chosen'")
    rejected_msgs = as_messages(rejected, "assistant", f"{where}, column 'rejected'")
    if prompt is None:
        return split_implicit_conversation(chosen_msgs, rejected_msgs, where)
    prompt_msgs = as_messages(prompt, "user", f"{where}, column 'prompt'")
    n = _shared_prompt_length(chosen_msgs, rejected_msgs)
    if n == 0:
        # Chosen/rejected hold only the answers (TRL's explicit-prompt format).
        _check_completions(chosen_msgs, rejected_msgs, 0, where)
        return prompt_msgs, chosen_msgs, rejected_msgs
    # Chosen/rejected repeat the prompt (UltraFeedback-style): it must agree with the prompt column.
    shared = chosen_msgs[:n]
    last_user = next((m.get("content") for m in reversed(shared) if m.get("role") == "user"), None)
    consistent = shared[-len(prompt_msgs) :] == prompt_msgs or (
        isinstance(prompt, str) and isinstance(last_user, str) and last_user.strip() == prompt.strip()
    )
    if not consistent:
        raise DataError(
            f"{where}, column 'prompt': does not match the prompt messages that chosen and rejected start with "
            f"(prompt {short(prompt, 50)}; conversation's last user turn {short(last_user, 50)})"
        )
    _check_completions(chosen_msgs, rejected_msgs, n, where)
    return shared, chosen_msgs[n:], rejected_msgs[n:]


def _apply_template(tokenizer: Any, messages: Messages, where: str, **kwargs: Any) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as err:  # jinja errors ("System role not supported", ...)
        raise DataError(
            f"{where}: the chat template failed on this conversation: {type(err).__name__}: {err}"
        ) from None


def render_conversation(
    tokenizer: Any, prompt: Messages, completion: Messages, where: str, template_kwargs: dict[str, Any] | None = None
) -> tuple[str, str]:
    """(prompt_text, completion_text) such that prompt_text + completion_text is the full chat.

    ``template_kwargs`` go to ``apply_chat_template`` (the row's ``tools``, ``chat_template_kwargs``).

    Args:
        tokenizer: a tokenizer (or processor) with a chat template.
        prompt: the prompt messages, rendered with the generation prompt.
        completion: the completion messages.
        where: the row's location, for errors.
        template_kwargs: extra keyword arguments of ``apply_chat_template``.

    Raises:
        DataError: no chat template, the template fails, or it does not render the prompt as a prefix of the
            conversation.
    """
    kwargs = template_kwargs or {}
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            f"{where}: conversational data needs a chat template but the tokenizer has none "
            "(pass --chat-template or set tokenizer.chat_template)"
        )
    prompt_text = _apply_template(tokenizer, prompt, where, add_generation_prompt=True, **kwargs)
    full_text = _apply_template(tokenizer, prompt + completion, where, **kwargs)
    if not full_text.startswith(prompt_text):
        # Some templates render the last assistant turn differently from the generation prompt;
        # fall back to the template without the generation prompt if that one is a prefix.
        bare = _apply_template(tokenizer, prompt, where, **kwargs)
        if not full_text.startswith(bare):
            raise DataError(
                f"{where}: the chat template does not render the prompt as a prefix of the full conversation, "
                "so the prompt/completion boundary is undefined; use a template that extends the prompt"
            )
        prompt_text = bare
    return prompt_text, full_text[len(prompt_text) :]


def _blank(messages: Messages) -> bool:
    """True if no message of a completion has any text (or tool call)."""
    for message in messages:
        if message.get("tool_calls"):
            return False
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return False
        if isinstance(content, list) and any(
            not isinstance(part, dict) or part.get("type") != "text" or str(part.get("text") or "").strip()
            for part in content
        ):
            return False
    return True


def _renders_empty(
    tokenizer: Any, prompt: Messages, completion: Messages, rendered: str, where: str, kwargs: dict[str, Any]
) -> bool:
    """A completion with tool calls that the template shows as if it had no content (e.g. a template that
    renders only ``content``): it would train as a bare end of turn."""
    if not any(message.get("tool_calls") for message in completion):
        return False
    hollow = [{"role": message.get("role", "assistant"), "content": ""} for message in completion]
    return render_conversation(tokenizer, prompt, hollow, where, kwargs)[1] == rendered


def _tools(value: Any, where: str) -> list[Any] | None:
    """A row's tool definitions: a list of JSON schemas, or a JSON string of one (Arrow keeps nested schemas
    most faithfully as text)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}, column 'tools': not valid JSON ({err})") from None
    if not isinstance(value, list):
        raise DataError(f"{where}, column 'tools': expected a list of tool schemas, got {short(value)}")
    return value


#: The format label of conversations whose completion renders empty (counted in the data report).
RENDERS_EMPTY = "conversational, completion renders empty (tool_calls the chat template does not show)"


def normalize_row(
    row: dict[str, Any], tokenizer: Any, where: str, columns: Any = None, template_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Any supported row -> {prompt, chosen, rejected (texts), format, empty, empty_prompt}.

    ``empty`` is True when the chosen or rejected completion has no content, ``empty_prompt`` when
    the prompt has none (both judged on the content, not on the rendered text, which holds
    template tokens even for an empty turn).
    Args:
        row: the row's ``prompt`` (absent or None: implicit), ``chosen``, ``rejected`` and ``tools`` values.
        tokenizer: renders conversations through its chat template (unused for text rows).
        where: the row's location, for errors.
        columns: the dataset's columns, listed when there is no prompt to be found.
        template_kwargs: extra keyword arguments of the chat template (``chat_template_kwargs``).

    Raises:
        DataError: a value that is not text or messages, a conversation that cannot be split or rendered, or
            no prompt to be found.
    """
    prompt, chosen, rejected = (maybe_decode_messages(row.get(name)) for name in ("prompt", "chosen", "rejected"))
    check_text(chosen, f"{where}, column 'chosen'")
    check_text(rejected, f"{where}, column 'rejected'")
    if prompt is not None:
        check_text(prompt, f"{where}, column 'prompt'")
    if any(is_conversation(value) for value in (prompt, chosen, rejected)):
        kwargs = dict(template_kwargs or {})
        tools = _tools(row.get("tools"), where)
        if tools:
            kwargs["tools"] = tools
        prompt_msgs, chosen_msgs, rejected_msgs = split_conversation(prompt, chosen, rejected, where)
        prompt_text, chosen_text = render_conversation(tokenizer, prompt_msgs, chosen_msgs, where, kwargs)
        prompt_text_r, rejected_text = render_conversation(tokenizer, prompt_msgs, rejected_msgs, where, kwargs)
        if prompt_text_r != prompt_text:  # pragma: no cover - same messages render identically
            raise DataError(f"{where}: chosen and rejected render different prompts")
        fmt = "conversational" if prompt is not None else "implicit_conversational"
        hollow = _renders_empty(tokenizer, prompt_msgs, chosen_msgs, chosen_text, where, kwargs) or _renders_empty(
            tokenizer, prompt_msgs, rejected_msgs, rejected_text, where, kwargs
        )
        return {
            "prompt": prompt_text,
            "chosen": chosen_text,
            "rejected": rejected_text,
            "format": RENDERS_EMPTY if hollow else fmt,
            "empty": hollow or _blank(chosen_msgs) or _blank(rejected_msgs),
            "empty_prompt": _blank(prompt_msgs),
        }
    if prompt is None:
        n = _common_text_prefix(chosen, rejected)
        if n == 0:
            available = f"; available columns: {', '.join(columns)}" if columns else ""
            raise DataError(
                f"{where}: there is no prompt: no 'prompt' column, and chosen/rejected share no text prefix to use "
                f"as the prompt{available} (map your prompt column with prompt_text_column / --prompt-text-column)"
            )
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        fmt = "implicit_standard"
    else:
        fmt = "standard"
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "format": fmt,
        "empty": not chosen.strip() or not rejected.strip(),
        "empty_prompt": not prompt.strip(),
    }


def to_text_triple(row: dict[str, Any], tokenizer: Any, where: str) -> tuple[str, str, str]:
    """Normalise one row (with columns already named prompt/chosen/rejected).

    Args:
        row: the row.
        tokenizer: renders conversations through its chat template.
        where: the row's location, for errors.

    Returns:
        (prompt, chosen, rejected) texts (:func:`normalize_row`).
    """
    out = normalize_row(row, tokenizer, where)
    return out["prompt"], out["chosen"], out["rejected"]


def _common_text_prefix(a: str, b: str) -> int:
    """Shared prefix of two strings, backed off to a whitespace boundary so no word is split."""
    n = common_prefix_length(list(a), list(b))
    if n in (len(a), len(b)):
        n = max(0, n - 1)
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    return n
