"""`orpo generate` on a full model and a LoRA adapter; `orpo merge` gives base+adapter's logits."""

from __future__ import annotations

import json

import pytest
import torch

from _cli_support import orpo_command, run, save_tiny_model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter with non-zero weights (a fresh one would merge to the base model exactly)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("gen")
    base = save_tiny_model(root / "base")
    model = AutoModelForCausalLM.from_pretrained(str(base))
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(str(root / "adapter"))
    return root


def test_merge_gives_the_same_logits_as_base_plus_adapter(adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(orpo_command("merge", "adapter", "merged"), cwd=adapter)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (adapter / "merged" / "tokenizer.json").is_file()
    ids = torch.tensor([[1, 5, 9, 42, 77, 3, 8]])
    base = AutoModelForCausalLM.from_pretrained(str(adapter / "base")).eval()
    with torch.no_grad():
        plain = base(ids).logits
        combined = PeftModel.from_pretrained(base, str(adapter / "adapter")).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(adapter / "merged")).eval()(ids).logits
    assert not torch.allclose(plain, combined, atol=1e-3)  # the adapter changes the model...
    torch.testing.assert_close(merged, combined, atol=1e-5, rtol=1e-5)  # ...and merging keeps that change


def test_generate_with_an_adapter_matches_in_process(adapter):
    prompts = ["What is the color of the sky?", "hello"]
    result = run(orpo_command("generate", "adapter", *prompts, "--max-new-tokens", "6", "--json"), cwd=adapter)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["prompt"] for row in rows] == prompts
    # the same model in process (base + adapter, greedy, chat template) gives the same completions
    from orpo.models.generation import generate, load_for_inference

    model, tokenizer = load_for_inference(str(adapter / "adapter"), device="cpu")
    assert [row["completion"] for row in rows] == generate(model, tokenizer, prompts, max_new_tokens=6)


def test_render_prompt_uses_the_chat_template(adapter):
    from transformers import AutoTokenizer

    from orpo.models.generation import encode_prompt, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(adapter / "base"))
    text = render_prompt(tokenizer, "hi", system="be brief")
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>system\nbe brief" in text
    ids = encode_prompt(tokenizer, text)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id  # the template's BOS, once
    assert render_prompt(tokenizer, "raw text", use_chat_template=False) == "raw text"


def test_chat_reads_turns_from_stdin(adapter):
    import io

    from orpo.models.generation import chat, load_for_inference

    model, tokenizer = load_for_inference(str(adapter / "base"), device="cpu")
    out = io.StringIO()
    assert (
        chat(model, tokenizer, max_new_tokens=3, temperature=0.0, stdin=io.StringIO("hi\n/reset\nagain\n"), stdout=out)
        == 0
    )
    assert out.getvalue().count("model> ") == 2 and "(history cleared)" in out.getvalue()


def test_chat_answers_help_itself_and_streams_replies(adapter):
    import io

    from orpo.models.generation import chat, generate, load_for_inference

    model, tokenizer = load_for_inference(str(adapter / "base"), device="cpu")
    out = io.StringIO()
    chat(model, tokenizer, max_new_tokens=4, temperature=0.0, stdin=io.StringIO("/help\n/frobnicate\nhi\n"), stdout=out)
    text = out.getvalue()
    assert "  /help   list these commands" in text and "  /reset  clear the conversation" in text
    assert "(unknown command /frobnicate; /help lists the commands)" in text
    assert text.count("model> ") == 1  # neither command went to the model
    reply = generate(model, tokenizer, [[{"role": "user", "content": "hi"}]], max_new_tokens=4)[0]
    assert text.endswith(f"model> {reply}\n")  # streamed text is what generate returns


def test_streamed_text_is_the_returned_completion(adapter):
    import io

    from orpo.models.generation import generate, load_for_inference

    model, tokenizer = load_for_inference(str(adapter / "adapter"), device="cpu")
    prompts = ["What is the color of the sky?", "hello"]
    stream = io.StringIO()
    completions = generate(
        model, tokenizer, prompts, max_new_tokens=6, stream=stream, before_each=lambda p: stream.write(f"[{p}]")
    )
    assert stream.getvalue() == "".join(f"[{p}]{c}\n" for p, c in zip(prompts, completions, strict=True))
    assert completions == generate(model, tokenizer, prompts, max_new_tokens=6)


def test_generation_is_bounded_by_the_context(adapter, caplog):
    from orpo.models.generation import context_length, encode_prompt, generate, load_for_inference, render_prompt

    model, tokenizer = load_for_inference(str(adapter / "base"), device="cpu")
    assert context_length(model) == 1024
    prompt_tokens = len(encode_prompt(tokenizer, render_prompt(tokenizer, "hello")))
    model.config.max_position_embeddings = prompt_tokens + 3
    real, seen = model.generate, {}

    def spy(**kwargs):
        out = real(**kwargs)
        seen.update(budget=kwargs["max_new_tokens"], new=out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    model.generate = spy
    with caplog.at_level("WARNING", logger="orpo.models.generation"):
        generate(model, tokenizer, ["hello"], max_new_tokens=100_000)
    assert caplog.messages == [
        f"max_new_tokens=100000 does not fit the model's context ({prompt_tokens + 3} tokens, {prompt_tokens} of them "
        "the prompt): generating at most 3 tokens"
    ]
    assert seen["budget"] == 3 and seen["new"] <= 3
    model.config.max_position_embeddings = prompt_tokens
    with pytest.raises(ValueError, match=f"the prompt has {prompt_tokens} tokens but the model's context is "):
        generate(model, tokenizer, ["hello"])


def test_generate_cli_streams_under_each_prompt(adapter):
    result = run(orpo_command("generate", "adapter", "hello", "hi there", "--max-new-tokens", "4"), cwd=adapter)
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = result.stdout.split("\n\n")
    assert blocks[0].startswith("### hello\n") and blocks[1].startswith("### hi there\n")


@pytest.mark.parametrize("command", ["merge", "demo"])
def test_merge_and_demo_do_not_overwrite_a_folder_without_asking(adapter, tmp_path, command, monkeypatch, capsys):
    from orpo.cli import main

    target = tmp_path / "full"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    argv = (
        ["merge", str(adapter / "adapter"), str(target)]
        if command == "merge"
        else ["demo", "--output-dir", str(target)]
    )
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(argv) == 2
    assert f"{target} is not empty (1 entries): pass --overwrite to write into it" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda question: "n")
    assert main(argv) == 2
    assert "left as it was" in capsys.readouterr().err
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    if command == "merge":
        monkeypatch.setattr("builtins.input", lambda question: "y")
        assert main(argv) == 0
        assert (target / "model.safetensors").is_file() and (target / "notes.txt").read_text() == "mine"
