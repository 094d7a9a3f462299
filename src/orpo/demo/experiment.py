"""The demo's controlled comparison: one base model, then SFT and ORPO with everything else equal.

It returns :mod:`orpo.demo.records` objects and prints nothing but the library's own data reports;
:func:`orpo.demo.run_demo` hands the records to :mod:`orpo.demo.report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orpo.training.evaluation import eval_config, evaluate, prepare_pairs, sample_completions, score_pairs

from .build_assets import KINDS
from .records import Outcome, Run, Setup
from .setting import (
    BASE_LR,
    BASE_STEPS,
    BATCH,
    BETA,
    FAST_BASE_STEPS,
    FAST_ROWS,
    FAST_SAMPLES,
    FAST_STEPS,
    LR,
    MAX_LENGTH,
    MAX_NEW_TOKENS,
    MAX_PROMPT_LENGTH,
    SAMPLES,
    STEPS,
    build_model,
    load_rows,
    load_tokenizer,
)
from .task import is_correct, is_hedged, operands, rate

#: The two alignments of the base model: (name, beta).  beta=0 leaves the NLL of the chosen answers only.
ALIGNMENTS = (("sft", 0.0), ("orpo", BETA))


class Demo:
    """Data, tokenizer and settings shared by the three trainings and their measurements."""

    def __init__(self, out: Path, fast: bool, steps: int | None, seed: int, threads: int = 1) -> None:
        self.out, self.seed, self.fast, self.threads = out, seed, fast, threads
        self.base_steps = FAST_BASE_STEPS if fast else BASE_STEPS
        self.steps = steps or (FAST_STEPS if fast else STEPS)
        self.samples = FAST_SAMPLES if fast else SAMPLES
        self.tokenizer = load_tokenizer()
        rows = {name: load_rows(f"{name}.jsonl") for name in ("base", "train", "heldout")}
        if fast:
            rows = {name: values[:FAST_ROWS] for name, values in rows.items()}
        self.rows = rows
        # One generation prompt per held-out sum (each sum has a pair of each kind).
        first: dict[tuple[int, int], int] = {}
        for index, row in enumerate(rows["heldout"]):
            first.setdefault(operands(row["prompt"][0]["content"]), index)
        self.prompt_rows = list(first.values())
        self.prompts = [rows["heldout"][i]["prompt"][0]["content"] for i in self.prompt_rows]
        self.base = build_model(self.tokenizer, seed)
        self.pairs: dict[str, Any] = {}
        self.kinds: list[str] = []
        self.eval_sets: dict[str, Any] = {}

    @property
    def setup(self) -> Setup:
        text = lambda row, key: str(row[key][0]["content"])  # noqa: E731
        hedged = next(row for row in self.rows["train"] if row["kind"] == "hedged")
        wrong = next(row for row in self.rows["train"] if row["kind"] == "wrong")
        return Setup(
            prompts=len(self.prompts),
            base_rows=len(self.rows["base"]),
            train_rows=len(self.rows["train"]),
            heldout_rows=len(self.rows["heldout"]),
            hedged_example=(text(hedged, "chosen"), text(hedged, "rejected")),
            wrong_example=(text(wrong, "chosen"), text(wrong, "rejected")),
            parameters=sum(p.numel() for p in self.base.parameters()),
            vocabulary=len(self.tokenizer),
            base_steps=self.base_steps,
            steps=self.steps,
            samples=self.samples,
            seed=self.seed,
            threads=self.threads,
            fast=self.fast,
        )

    def prepare(self) -> None:
        """Tokenize the three files once, with the limits the trainings use (each prints its data report)."""

        config = eval_config(max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH)
        self.pairs = {name: prepare_pairs(rows, self.tokenizer, config, name)[0] for name, rows in self.rows.items()}
        heldout = self.pairs["heldout"]
        assert len(heldout) == len(self.rows["heldout"]), "the shipped held-out pairs are all kept"
        self.kinds = list(heldout["kind"])
        self.eval_sets = {kind: heldout.select([i for i, k in enumerate(self.kinds) if k == kind]) for kind in KINDS}

    # ---- training -------------------------------------------------------------------------------
    def config(self, name: str, steps: int, beta: float, lr: float, evaluate: bool) -> Any:
        from orpo.config.orpo_config import ORPOConfig

        every = max(steps // 10, 1)
        return ORPOConfig(
            output_dir=str(self.out / name),
            max_steps=steps,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=len(self.pairs["heldout"]),
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.0,
            beta=beta,
            logging_steps=every,
            eval_strategy="steps" if evaluate else "no",
            eval_steps=every,
            save_strategy="no",
            report_to="none",
            seed=self.seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            max_length=MAX_LENGTH,
            max_prompt_length=MAX_PROMPT_LENGTH,
        )

    def train(self, name: str, model: Any, data: str, steps: int, beta: float, lr: float) -> Run:
        """Train ``model`` in place and save it; the alignments also log held-out log-prob curves."""
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from orpo.training.trainer import ORPOTrainer

        evaluate = name != "base"
        trainer = ORPOTrainer(
            model=model,
            args=self.config(name, steps, beta, lr, evaluate),
            train_dataset=self.pairs[data],
            eval_dataset=self.eval_sets if evaluate else None,
            processing_class=self.tokenizer,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        history = [{"step": 0, **trainer.evaluate()}] if evaluate else []  # where both runs start: the base model
        start = time.time()
        trainer.train()
        seconds = time.time() - start
        trainer.save_model(str(self.out / name))
        history += trainer.state.log_history
        losses = [log["loss"] for log in history if "loss" in log]
        curves = {
            kind: [
                (int(log["step"]), log[f"eval_{kind}_logps/chosen"], log[f"eval_{kind}_logps/rejected"])
                for log in history
                if f"eval_{kind}_logps/chosen" in log
            ]
            for kind in KINDS
        }
        rows = len(self.pairs[data])
        return Run(name, beta, steps, lr, rows, seconds, losses[0], losses[-1], curves)

    # ---- measuring ------------------------------------------------------------------------------
    def measure(self, model: Any) -> tuple[dict[str, float], list[list[str]]]:
        """The measures of one model on the held-out sums (``claims.MEASURES``), and its sampled answers."""

        heldout = self.pairs["heldout"]
        groups = evaluate(score_pairs(model, heldout, self.tokenizer.pad_token_id, len(heldout)), self.kinds)["groups"]
        ids = [heldout[i]["prompt_input_ids"] for i in self.prompt_rows]
        greedy = [s[0] for s in sample_completions(model, self.tokenizer, ids, 1, 0.0, MAX_NEW_TOKENS)]
        sampled = sample_completions(model, self.tokenizer, ids, self.samples, 1.0, MAX_NEW_TOKENS, self.seed)
        flat = [(prompt, text) for prompt, texts in zip(self.prompts, sampled, strict=True) for text in texts]
        hedged, wrong = groups["hedged"], groups["wrong"]
        measures = {
            "accuracy_hedged": hedged["accuracy"],
            "accuracy_wrong": wrong["accuracy"],
            "hedged_greedy": rate([is_hedged(text) for text in greedy]),
            "hedged_sampled": rate([is_hedged(text) for _, text in flat]),
            "correct_greedy": rate([is_correct(p, t) for p, t in zip(self.prompts, greedy, strict=True)]),
            "correct_sampled": rate([is_correct(p, t) for p, t in flat]),
            "logp_plain": hedged["chosen_logp"],
            "logp_hedged": hedged["rejected_logp"],
            "logp_wrong": wrong["rejected_logp"],
            "margin_hedged": hedged["margin"],
            "margin_wrong": wrong["margin"],
        }
        return {key: float(value) for key, value in measures.items()}, [list(texts) for texts in sampled]

    # ---- the whole experiment -------------------------------------------------------------------
    def run(self, progress: Callable[[Run], None] = lambda run: None) -> Outcome:
        """Base model, then SFT and ORPO from its weights; ``progress`` gets each run as it finishes."""
        self.prepare()
        runs = {"base": self.train("base", self.base, "base", self.base_steps, 0.0, BASE_LR)}
        progress(runs["base"])
        measures, sampled = {}, {}
        measures["base"], sampled["base"] = self.measure(self.base)
        state = {key: value.clone() for key, value in self.base.state_dict().items()}
        for name, beta in ALIGNMENTS:
            model = build_model(self.tokenizer, self.seed)
            model.load_state_dict(state)
            runs[name] = self.train(name, model, "train", self.steps, beta, LR)
            measures[name], sampled[name] = self.measure(model)
            progress(runs[name])
        return Outcome(measures, self.prompts, sampled, runs)
