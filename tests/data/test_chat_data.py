"""Chat data as users have it: a tools column, chat_template_kwargs, completions that render empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orpo import ORPOConfig
from orpo.data import prepare_preference_dataset
from orpo.data.formats import RENDERS_EMPTY
from orpo.models.sources import CHAT_TEMPLATES

#: Shows tools, tool calls and a thinking switch, like Qwen3's template does.
TOOL_TEMPLATE = (
    "{% if enable_thinking is defined and not enable_thinking %}/no_think\n{% endif %}"
    "{% if tools %}<tools>{{ tools | tojson }}</tools>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}"
    "{% if m.get('tool_calls') %}<call>{{ m['tool_calls'] | tojson }}</call>{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
CALL = [{"type": "function", "function": {"name": "weather", "arguments": {}}}]


def _rows() -> list[dict]:
    prompt = [{"role": "user", "content": "Weather?"}]
    return [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "", "tool_calls": CALL}],
            "rejected": [{"role": "assistant", "content": "No idea."}],
            "tools": json.dumps(TOOLS),
        },
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "Sunny."}],
            "rejected": [{"role": "assistant", "content": "Rain."}],
            "tools": json.dumps(TOOLS),
        },
    ]


@pytest.fixture
def chat_tokenizer(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TOOL_TEMPLATE
    return tok


def test_tools_column_and_chat_template_kwargs_reach_the_template(chat_tokenizer):
    args = ORPOConfig(output_dir="unused", report_to=["none"], chat_template_kwargs='{"enable_thinking": false}')
    assert args.chat_template_kwargs == {"enable_thinking": False}
    dataset, report = prepare_preference_dataset(_rows(), chat_tokenizer, args)
    expected_prompt = (
        f"/no_think\n<tools>{json.dumps(TOOLS)}</tools>\n<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert dataset["prompt"] == [expected_prompt, expected_prompt]
    assert dataset["chosen"][0] == f"<call>{json.dumps(CALL)}</call><|im_end|>\n"
    assert report.formats == {"conversational": 2} and not report.dropped


def test_a_completion_of_tool_calls_the_template_cannot_show_is_counted_and_dropped(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT_TEMPLATES["chatml"]  # renders content only
    dataset, report = prepare_preference_dataset(_rows(), tok, ORPOConfig(output_dir="unused", report_to=["none"]))
    assert report.formats == {RENDERS_EMPTY: 1, "conversational": 1}
    assert report.dropped == {"empty chosen or rejected": 1} and len(dataset) == 1
    assert RENDERS_EMPTY in report.summary()
    with pytest.raises(Exception, match=r"train row 0: empty chosen or rejected"):
        prepare_preference_dataset(
            _rows(), tok, ORPOConfig(output_dir="unused", report_to=["none"], on_empty_completion="error")
        )


def test_chat_template_kwargs_must_be_a_mapping():
    with pytest.raises(ValueError, match=r"ORPOConfig.chat_template_kwargs must be a mapping"):
        ORPOConfig(output_dir="unused", report_to=["none"], chat_template_kwargs="[1]")


def test_data_inspect_resolves_a_chat_template_name(capsys):
    from orpo.cli.inspect import main

    fixture = Path(__file__).parents[1] / "fixtures" / "data" / "conversational.jsonl"
    assert main([str(fixture), "--chat-template", "zephyr", "--example", "0"]) == 0
    out = capsys.readouterr().out
    assert "      <|user|>" in out and "      <|assistant|>" in out  # zephyr's turns, not the word 'zephyr'
    assert "zephyr" not in out.split("example:")[-1]
