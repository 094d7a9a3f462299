"""``orpo demo``: ORPO end to end, offline, in about a minute on a laptop CPU.

A 2-layer Llama is built from scratch (random weights) with the tokenizer shipped in
``assets/`` and trained with ORPO on the shipped preference pairs (see
:mod:`orpo.demo.build_assets`): answer ``What is a + b?`` as ``a + b = c``, preferred over a
wrong sum or a chatty answer.  Before and after training it measures, on 80 sums never seen
in training, the held-out preference accuracy (chosen more likely than rejected) and what the
model generates, and it writes the training curves.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).with_name("assets")
ANSWER = re.compile(r"^(\d+) \+ (\d+) = (\d+)$")
QUESTION = re.compile(r"(\d+)\D+?(\d+)")

# Full demo / fast demo (tests).
STEPS, FAST_STEPS = 2000, 16
FAST_TRAIN_PAIRS, FAST_HELDOUT_PAIRS = 128, 24
EXAMPLES = 6


def load_rows(name: str) -> list[dict[str, Any]]:
    with (ASSETS / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSETS))


def build_model(tokenizer: Any, seed: int = 0) -> Any:
    """A small Llama, random init: 2 layers, hidden size 64 (~0.1M parameters)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pair_accuracy(trainer: Any, dataset: Any) -> list[bool]:
    """Per held-out pair: is the chosen answer's average log-prob above the rejected one's?"""
    import torch

    model = trainer.model
    was_training = model.training
    model.eval()
    wins: list[bool] = []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader(dataset):
            batch = trainer._prepare_inputs(batch)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            mask = labels != -100
            logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            avg = (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            pairs = avg.shape[0] // 2
            wins.extend((avg[:pairs] > avg[pairs:]).tolist())
    model.train(was_training)
    return wins


def check_answer(prompt: str, text: str) -> tuple[bool, bool]:
    """(strict format ``a + b = c`` with the prompt's operands, and the sum correct)."""
    numbers = QUESTION.search(prompt)
    match = ANSWER.match(text.strip())
    if not numbers or not match:
        return False, False
    a, b = int(numbers.group(1)), int(numbers.group(2))
    fmt = (int(match.group(1)), int(match.group(2))) == (a, b)
    return fmt, fmt and int(match.group(3)) == a + b


def _percent(values: list[bool]) -> str:
    return f"{100 * sum(values) / max(len(values), 1):.1f}%"


def _accuracy_line(wins: list[bool], kinds: list[str]) -> str:
    parts = []
    for kind, label in (("wrong", "vs wrong sums"), ("chatty", "vs chatty answers")):
        sub = [w for w, k in zip(wins, kinds, strict=False) if k == kind]
        if sub:
            parts.append(f"{label} {_percent(sub)}")
    return f"{_percent(wins)} ({', '.join(parts)})" if len(wins) == len(kinds) else _percent(wins)


def _generations(trainer: Any, tokenizer: Any, prompts: list[str]) -> list[str]:
    from ..generation import generate

    model = trainer.model
    was_training = model.training
    model.eval()
    out = generate(model, tokenizer, prompts, max_new_tokens=14, skip_special_tokens=False)
    model.train(was_training)
    return out


def _score(prompts: list[str], outputs: list[str]) -> tuple[list[bool], list[bool]]:
    checks = [check_answer(p, o) for p, o in zip(prompts, outputs, strict=True)]
    return [c[0] for c in checks], [c[1] for c in checks]


def _show(text: str, width: int = 34) -> str:
    if not text:
        return "(nothing: stops at once)"
    text = repr(text)
    return text if len(text) <= width else text[: width - 4] + "...'"


def run_demo(
    output_dir: str = "orpo-demo", fast: bool = False, steps: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Train the demo model; print what happened; return the numbers (for tests)."""
    import torch

    start = time.time()
    # One thread: a model this small gains nothing from more, and a single thread cannot stall
    # at OpenMP barriers when other processes share the cores (that can slow training 10x).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(output_dir, fast, steps, seed, start)
    finally:
        torch.set_num_threads(threads)


def _run(output_dir: str, fast: bool, steps: int | None, seed: int, start: float) -> dict[str, Any]:
    from ..arguments import ModelArguments
    from ..config import ORPOConfig
    from ..run import build_trainer, finish_training

    train_rows, heldout_rows = load_rows("train.jsonl"), load_rows("heldout.jsonl")
    if fast:
        train_rows, heldout_rows = train_rows[:FAST_TRAIN_PAIRS], heldout_rows[:FAST_HELDOUT_PAIRS]
    steps = steps or (FAST_STEPS if fast else STEPS)
    kinds = [row["kind"] for row in heldout_rows]
    strip = lambda rows: [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]  # noqa: E731
    # One generation prompt per held-out sum (the pairs list each sum twice).
    seen: set[str] = set()
    prompts: list[str] = []
    for row in heldout_rows:
        a, b = QUESTION.search(row["prompt"][0]["content"]).groups()  # type: ignore[union-attr]
        if (a, b) not in seen:
            seen.add((a, b))  # type: ignore[arg-type]
            prompts.append(row["prompt"][0]["content"])

    tokenizer = load_tokenizer()
    model = build_model(tokenizer, seed)
    parameters = sum(p.numel() for p in model.parameters())
    example = heldout_rows[0]
    print("orpo demo: teach a tiny model, from scratch, to answer 'What is a + b?' as 'a + b = c'")
    print(
        f"  data   {len(train_rows)} training pairs; {len(heldout_rows)} held-out pairs on {len(prompts)} sums never "
        f"seen in training (shipped in {ASSETS.relative_to(ASSETS.parents[2])})"
    )
    same = [row for row in heldout_rows if row["chosen"] == example["chosen"]]
    rejected = {row["kind"]: row["rejected"][0]["content"] for row in same}
    print(f"  pairs  prompt {example['prompt'][0]['content']!r}: chosen {example['chosen'][0]['content']!r}")
    print(
        f"         rejected: a wrong sum ({rejected.get('wrong', '?')!r}) or a chatty answer ({rejected.get('chatty', '?')!r})"
    )
    print(
        f"  model  Llama, 2 layers, hidden 64, {parameters / 1e6:.2f}M parameters, random init; "
        f"shipped byte-level BPE tokenizer ({len(tokenizer)} tokens, ChatML template)"
    )
    eval_every = steps if fast else max(steps // 4, 1)
    config = ORPOConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=80,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        beta=0.5,
        max_length=64,
        max_prompt_length=40,
        logging_steps=max(steps // 20, 1),
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="no",
        report_to="none",
        seed=seed,
        dataloader_num_workers=0,
    )
    trainer = build_trainer(
        ModelArguments(),
        None,
        config,
        model=model,
        tokenizer=tokenizer,
        train_dataset=strip(train_rows),
        eval_dataset=strip(heldout_rows),
        console=True,
    )
    heldout = trainer.eval_dataset
    if len(heldout) != len(kinds):  # pragma: no cover - the shipped data has no dropped rows
        kinds = []

    def measure(when: str) -> dict[str, Any]:
        """Print held-out accuracy and generation quality, and return them."""
        print(f"\n{when} training")
        accuracy = pair_accuracy(trainer, heldout)
        generations = _generations(trainer, tokenizer, prompts)
        strict, correct = _score(prompts, generations)
        print(f"  held-out preference accuracy   {_accuracy_line(accuracy, kinds)}")
        print(
            f"  generations on {len(prompts)} unseen sums  strict format {_percent(strict)}, correct {_percent(correct)}"
        )
        return {"accuracy": accuracy, "generations": generations, "format": strict, "correct": correct}

    before = measure("before")
    print()

    result = finish_training(trainer, console=True)

    after = measure("after")
    print("\n  unseen prompt                before training                     after training")
    rows = zip(prompts, before["generations"], after["generations"], after["correct"], strict=True)
    for prompt, gen_before, gen_after, ok in list(rows)[:EXAMPLES]:
        mark = "ok" if ok else "wrong"
        print(f"  {prompt:<28} {_show(gen_before):<35} {_show(gen_after)}  ({mark})")
    elapsed = time.time() - start
    print(f"\ndone in {elapsed:.0f} s. curves: {result.plot_path}  model: {result.output_dir}")
    print(f"try it: orpo generate {result.output_dir} 'What is 7 + 15?'")
    return {
        **{
            f"{name}_{when}": sum(values[name]) / max(len(values[name]), 1)
            for when, values in (("before", before), ("after", after))
            for name in ("accuracy", "format", "correct")
        },
        "plot": result.plot_path,
        "output_dir": result.output_dir,
        "seconds": elapsed,
        "health": [finding.code for finding in result.health],
        "final_loss": next((log["loss"] for log in reversed(result.log_history) if "loss" in log), math.nan),
    }
