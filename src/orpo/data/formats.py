"""Turn one preference row of any supported shape into a (prompt, chosen, rejected) text triple.

Shapes: standard strings; conversational message lists (explicit prompt, or implicit prompt =
the longest common message prefix of chosen and rejected).  Conversations are rendered with
the tokenizer's chat template; the prompt is rendered with the generation prompt so the
completion text is exactly what the model must generate after it.
"""

from __future__ import annotations

from typing import Any

VALID_ROLES = ("system", "user", "assistant", "tool", "developer")

Messages = list[dict[str, Any]]


def is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def detect_format(row: dict[str, Any]) -> str:
    """'standard' | 'conversational' | 'implicit_conversational' | 'implicit_standard'."""
    has_prompt = row.get("prompt") is not None
    conversational = is_conversation(row.get("chosen")) or is_conversation(row.get("prompt"))
    if conversational:
        return "conversational" if has_prompt else "implicit_conversational"
    return "standard" if has_prompt else "implicit_standard"


def _check_messages(messages: Messages, where: str) -> None:
    for turn, message in enumerate(messages):
        role = message.get("role")
        if role not in VALID_ROLES:
            raise ValueError(f"{where}, message {turn}: role {role!r} is not one of {', '.join(VALID_ROLES)}")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ValueError(f"{where}, message {turn}: content must be text, got {type(content).__name__}")


def common_prefix_length(a: list[Any], b: list[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def split_implicit_conversation(chosen: Messages, rejected: Messages, where: str) -> tuple[Messages, Messages, Messages]:
    """Prompt = longest shared message prefix, cut back to end before an assistant turn."""
    n = common_prefix_length(chosen, rejected)
    while n > 0 and chosen[n - 1].get("role") == "assistant":
        n -= 1
    if n == 0:
        raise ValueError(
            f"{where}: chosen and rejected share no prompt messages (the first message differs); "
            "give a 'prompt' column or make both conversations start with the same user turn"
        )
    if n >= len(chosen) or n >= len(rejected):
        raise ValueError(f"{where}: chosen or rejected has no reply after the shared prompt")
    return chosen[:n], chosen[n:], rejected[n:]


def render_conversation(tokenizer: Any, prompt: Messages, completion: Messages, where: str) -> tuple[str, str]:
    """(prompt_text, completion_text) such that prompt_text + completion_text is the full chat."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{where}: conversational data needs a chat template but the tokenizer has none "
            "(pass --chat-template or set tokenizer.chat_template)"
        )
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full_text.startswith(prompt_text):
        # Some templates render the last assistant turn differently from the generation prompt;
        # fall back to the template without the generation prompt if that one is a prefix.
        bare = tokenizer.apply_chat_template(prompt, tokenize=False)
        if not full_text.startswith(bare):
            raise ValueError(
                f"{where}: the chat template does not render the prompt as a prefix of the full conversation, "
                "so the prompt/completion boundary is undefined; use a template that extends the prompt"
            )
        prompt_text = bare
    return prompt_text, full_text[len(prompt_text) :]


def to_text_triple(row: dict[str, Any], tokenizer: Any, where: str) -> tuple[str, str, str]:
    """Normalise one row (with columns already named prompt/chosen/rejected)."""
    prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
    if is_conversation(chosen) or is_conversation(prompt) or is_conversation(rejected):
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if isinstance(value, str):
                value = [{"role": "assistant", "content": value}]
            if not is_conversation(value):
                raise ValueError(f"{where}, column '{name}': expected a list of messages, got {type(value).__name__}")
        chosen_msgs = chosen if is_conversation(chosen) else [{"role": "assistant", "content": chosen}]
        rejected_msgs = rejected if is_conversation(rejected) else [{"role": "assistant", "content": rejected}]
        _check_messages(chosen_msgs, f"{where}, column 'chosen'")
        _check_messages(rejected_msgs, f"{where}, column 'rejected'")
        if prompt is None:
            prompt_msgs, chosen_msgs, rejected_msgs = split_implicit_conversation(chosen_msgs, rejected_msgs, where)
        else:
            prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            _check_messages(prompt_msgs, f"{where}, column 'prompt'")
        prompt_text, chosen_text = render_conversation(tokenizer, prompt_msgs, chosen_msgs, where)
        prompt_text_r, rejected_text = render_conversation(tokenizer, prompt_msgs, rejected_msgs, where)
        if prompt_text_r != prompt_text:  # pragma: no cover - same messages render identically
            raise ValueError(f"{where}: chosen and rejected render different prompts")
        return prompt_text, chosen_text, rejected_text
    if prompt is None:
        n = _common_text_prefix(chosen, rejected)
        if n == 0:
            raise ValueError(f"{where}: no 'prompt' column and chosen/rejected share no text prefix to use as prompt")
        return chosen[:n], chosen[n:], rejected[n:]
    return prompt, chosen, rejected


def _common_text_prefix(a: str, b: str) -> int:
    """Shared prefix of two strings, backed off to a whitespace boundary so no word is split."""
    n = common_prefix_length(list(a), list(b))
    if n in (len(a), len(b)):
        n = max(0, n - 1)
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    return n
