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
    from orpo.generation import generate, load_for_inference

    model, tokenizer = load_for_inference(str(adapter / "adapter"), device="cpu")
    assert [row["completion"] for row in rows] == generate(model, tokenizer, prompts, max_new_tokens=6)


def test_render_prompt_uses_the_chat_template(adapter):
    from transformers import AutoTokenizer

    from orpo.generation import encode_prompt, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(adapter / "base"))
    text = render_prompt(tokenizer, "hi", system="be brief")
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>system\nbe brief" in text
    ids = encode_prompt(tokenizer, text)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id  # the template's BOS, once
    assert render_prompt(tokenizer, "raw text", use_chat_template=False) == "raw text"


def test_chat_reads_turns_from_stdin(adapter):
    import io

    from orpo.generation import chat, load_for_inference

    model, tokenizer = load_for_inference(str(adapter / "base"), device="cpu")
    out = io.StringIO()
    assert (
        chat(model, tokenizer, max_new_tokens=3, temperature=0.0, stdin=io.StringIO("hi\n/reset\nagain\n"), stdout=out)
        == 0
    )
    assert out.getvalue().count("model> ") == 2 and "(history cleared)" in out.getvalue()
