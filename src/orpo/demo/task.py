"""What the demo checks in a generation: the right sum for the prompt's numbers, and the hedge habit."""

from __future__ import annotations

import re

QUESTION = re.compile(r"(\d+)\D+?(\d+)")
SUM = re.compile(r"^(\d+) \+ (\d+) = (\d+)")
#: The words of every hedge in build_assets.HEDGES ("I think", "but I am not sure", ...).
HEDGE = re.compile(r"\b(think|sure|more or less|probably|guess)\b")


def operands(prompt: str) -> tuple[int, int]:
    match = QUESTION.search(prompt)
    if match is None:
        raise ValueError(f"no sum in the demo prompt {prompt!r}")
    return int(match.group(1)), int(match.group(2))


def is_correct(prompt: str, text: str) -> bool:
    """Does ``text`` start with ``a + b = c`` for the prompt's a and b, with c = a + b (hedged or not)?"""
    a, b = operands(prompt)
    match = SUM.match(text.strip())
    return match is not None and (int(match.group(1)), int(match.group(2)), int(match.group(3))) == (a, b, a + b)


def is_hedged(text: str) -> bool:
    """Does ``text`` show the base model's habit (any of the hedges)?"""
    return HEDGE.search(text) is not None


def rate(flags: list[bool]) -> float:
    return sum(flags) / max(len(flags), 1)
