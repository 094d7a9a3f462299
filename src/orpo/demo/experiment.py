"""The demo's controlled comparison: one base model, then SFT and ORPO with everything else equal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import (
    ASSETS,
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
    MAX_PROMPT_LENGTH,
    SAMPLES,
    STEPS,
    build_model,
    load_rows,
    load_tokenizer,
)
from .build_assets import KINDS
from .task import is_correct, is_hedged, operands, rate

MAX_NEW_TOKENS = 24  # the longest answer, '19 + 19 = 38, but I am not sure.', is 19 tokens with its EOS

#: (label, key, +1 if higher is better / -1 if lower is better / 0 for information only)
MEASURES = (
    ("preference accuracy, hedged pairs", "accuracy_hedged", 1),
    ("preference accuracy, wrong pairs", "accuracy_wrong", 1),
    ("hedged generations, greedy", "hedged_greedy", -1),
    ("hedged generations, sampled", "hedged_sampled", -1),
    ("correct sums, greedy", "correct_greedy", 1),
    ("correct sums, sampled", "correct_sampled", 1),
    ("logp/token, plain answers (chosen)", "logp_plain", 0),
    ("logp/token, hedged answers (rejected)", "logp_hedged", 0),
    ("logp/token, wrong sums (rejected)", "logp_wrong", 0),
)


class Demo:
    """Data, tokenizer and settings shared by the three trainings and four measurements."""

    def __init__(self, out: Path, fast: bool, steps: int | None, seed: int) -> None:
        self.start = time.time()
        self.out, self.seed = out, seed
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
        self.pairs: dict[str, Any] = {}
        self.kinds: list[str] = []
        self.eval_sets: dict[str, Any] = {}

    def prepare(self) -> None:
        """Tokenize the three files once, with the limits the trainings use (each prints its data report)."""
        from orpo.training.evaluation import eval_config, prepare_pairs

        config = eval_config(max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH)
        self.pairs = {name: prepare_pairs(rows, self.tokenizer, config, name)[0] for name, rows in self.rows.items()}
        heldout = self.pairs["heldout"]
        assert len(heldout) == len(self.rows["heldout"]), "the shipped held-out pairs are all kept"
        self.kinds = list(heldout["kind"])
        self.eval_sets = {kind: heldout.select([i for i, k in enumerate(self.kinds) if k == kind]) for kind in KINDS}

    # ---- training -------------------------------------------------------------------------------
    def config(self, name: str, steps: int, beta: float, lr: float, evaluate: bool) -> Any:
        from .. import ORPOConfig

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

    def train(self, name: str, model: Any, data: str, steps: int, beta: float, lr: float) -> dict[str, Any]:
        """Train ``model`` in place; returns seconds, first and last loss, and held-out log-prob curves."""
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from .. import ORPOTrainer

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
                (log["step"], log[f"eval_{kind}_logps/chosen"], log[f"eval_{kind}_logps/rejected"])
                for log in history
                if f"eval_{kind}_logps/chosen" in log
            ]
            for kind in KINDS
        }
        return {"seconds": seconds, "first_loss": losses[0], "last_loss": losses[-1], "curves": curves}

    # ---- measuring ------------------------------------------------------------------------------
    def measure(self, model: Any) -> dict[str, Any]:
        """The ``MEASURES`` of one model on the held-out sums, with its generations."""
        from orpo.training.evaluation import evaluate, sample_completions, score_pairs

        heldout = self.pairs["heldout"]
        groups = evaluate(score_pairs(model, heldout, self.tokenizer.pad_token_id, len(heldout)), self.kinds)["groups"]
        ids = [heldout[i]["prompt_input_ids"] for i in self.prompt_rows]
        greedy = [s[0] for s in sample_completions(model, self.tokenizer, ids, 1, 0.0, MAX_NEW_TOKENS)]
        sampled = sample_completions(model, self.tokenizer, ids, self.samples, 1.0, MAX_NEW_TOKENS, self.seed)
        flat = [(prompt, text) for prompt, texts in zip(self.prompts, sampled, strict=True) for text in texts]
        return {
            "accuracy_hedged": groups["hedged"]["accuracy"],
            "accuracy_wrong": groups["wrong"]["accuracy"],
            "hedged_greedy": rate([is_hedged(text) for text in greedy]),
            "hedged_sampled": rate([is_hedged(text) for _, text in flat]),
            "correct_greedy": rate([is_correct(p, t) for p, t in zip(self.prompts, greedy, strict=True)]),
            "correct_sampled": rate([is_correct(p, t) for p, t in flat]),
            "logp_plain": groups["hedged"]["chosen_logp"],
            "logp_hedged": groups["hedged"]["rejected_logp"],
            "logp_wrong": groups["wrong"]["rejected_logp"],
            "greedy": greedy,
            "sampled": sampled,
        }

    # ---- the whole demo -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from .plot import plot_logps
        from .report import print_header, print_results

        base = build_model(self.tokenizer, self.seed)
        print_header(self, sum(p.numel() for p in base.parameters()))
        self.prepare()
        base_run = self.train("base", base, "base", self.base_steps, 0.0, BASE_LR)
        print(
            f"1. base model: SFT on {len(self.pairs['base'])} answers that all hedge, {self.base_steps} steps, "
            f"lr {BASE_LR:g}: loss {base_run['first_loss']:.2f} -> {base_run['last_loss']:.2f} "
            f"in {base_run['seconds']:.0f} s",
            flush=True,
        )
        results = {"base": self.measure(base)}
        state = {key: value.clone() for key, value in base.state_dict().items()}
        runs = {}
        for name, beta in (("sft", 0.0), ("orpo", BETA)):
            model = build_model(self.tokenizer, self.seed)
            model.load_state_dict(state)
            runs[name] = self.train(name, model, "train", self.steps, beta, LR)
            results[name] = self.measure(model)
            print(
                f"   {name.upper():<4} (beta={beta:g}): {self.steps} steps, loss {runs[name]['first_loss']:.2f} -> "
                f"{runs[name]['last_loss']:.2f} in {runs[name]['seconds']:.0f} s",
                flush=True,
            )
        plot = plot_logps(
            {"SFT (beta=0)": runs["sft"]["curves"], f"ORPO (beta={BETA:g})": runs["orpo"]["curves"]},
            self.out / "logps.png",
        )
        verdicts = print_results(self, results)
        seconds = time.time() - self.start
        print(f"\ncurves  {plot} (held-out log-probs of chosen and rejected answers over training)")
        print(f"models  {self.out / 'base'}, {self.out / 'sft'}, {self.out / 'orpo'}")
        heldout = ASSETS / "heldout.jsonl"
        shown = heldout.relative_to(Path.cwd()) if heldout.is_relative_to(Path.cwd()) else heldout
        print(f"try     orpo eval {self.out / 'orpo'} {shown} --compare {self.out / 'sft'} --by kind --samples 3")
        print(f"done in {seconds:.0f} s")
        numbers = {
            name: {key: value for key, value in measured.items() if key not in ("greedy", "sampled")}
            for name, measured in results.items()
        }
        return {
            **numbers,
            "verdicts": verdicts,
            "curves": {name: run["curves"] for name, run in runs.items()},
            "plot": plot,
            "output_dir": str(self.out),
            "seconds": seconds,
        }
