#!/usr/bin/env python
"""CPU step time of a tiny Mixtral trained with the load-balancing loss, per layout, against TRL.

    python benchmarks/bench_moe.py                      # 5 runs per variant, median
    python benchmarks/bench_moe.py --runs 3 --steps 6 --variants orpo-padded,orpo-sp

Every variant trains the same random-init Mixtral shape (``output_router_logits=True``,
``router_aux_loss_coef`` 0.02) on the same synthetic pairs in the same order: orpo in each layout
(padded, padding-free, shared prompt; fused LM head, the default), orpo's shared prompt without the
term (what the term costs), and TRL's ORPOTrainer where ``trl`` is importable (its defaults, gradient
checkpointing off to match orpo's).  Step time: the wall time of the measured optimizer steps
(data loading, forward, backward, update) after the warm-up steps, per step; each variant runs
``--runs`` times in this process, a fresh model each time, and the table shows the median and the
spread of those runs, with the process CPU time per step (steadier on a shared machine).  The
command, the CPU, the thread count and the load average before and after are printed with it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from typing import Any

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "trl": ("trl", {}),
    "orpo-padded": ("orpo", {"layout": "padded"}),
    "orpo-pf": ("orpo", {"layout": "padding_free"}),
    "orpo-sp": ("orpo", {"layout": "shared_prompt"}),
    "orpo-sp-noaux": ("orpo", {"layout": "shared_prompt", "output_router_logits": False}),
}
COEF = 0.02
WORDS = ["the", "a", "sky", "grass", "blue", "green", "answer", "question", "yes", "no", "good", "bad", "why", "how"]


def make_pairs(count: int, prompt: tuple[int, int], completion: tuple[int, int], seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(bounds: tuple[int, int]) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*bounds)))

    return [
        {"prompt": f"{i}: {text(prompt)}?", "chosen": " " + text(completion), "rejected": " " + text(completion)}
        for i in range(count)
    ]


def make_model(tokenizer: Any, ns: argparse.Namespace) -> Any:
    from orpo.demo.tiny import tiny_moe_lm

    return tiny_moe_lm(
        tokenizer,
        "mixtral",
        hidden_size=ns.hidden,
        num_layers=ns.layers,
        num_local_experts=ns.experts,
        intermediate_size=ns.hidden * 2,
        output_router_logits=True,
        router_aux_loss_coef=COEF,
    )


def _timer() -> Any:
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.wall, self.cpu = [time.perf_counter()], [time.process_time()]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

    return StepTimes()


def run_once(name: str, ns: argparse.Namespace, pairs: list[dict[str, str]], tokenizer: Any) -> dict[str, float]:
    import datasets

    kind, overrides = VARIANTS[name]
    model = make_model(tokenizer, ns)
    timer = _timer()
    common = {
        "output_dir": tempfile.mkdtemp(prefix=f"bench-moe-{name}-"),
        "max_steps": ns.warmup + ns.steps,
        "per_device_train_batch_size": ns.pairs,
        "learning_rate": 1e-4,
        "logging_steps": ns.warmup + ns.steps,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
        "max_length": 512,  # nothing here is longer: neither trainer truncates
        "dataloader_num_workers": 0,
        "use_cpu": True,
    }
    if kind == "orpo":
        from orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(
            **common, max_prompt_length=256, router_aux_loss_coef=COEF, **{"output_router_logits": True, **overrides}
        )
        trainer = ORPOTrainer(
            model=model, args=args, train_dataset=pairs, processing_class=tokenizer, callbacks=[timer]
        )
    else:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        try:
            from trl.experimental.orpo import ORPOConfig as TRLConfig
            from trl.experimental.orpo import ORPOTrainer as TRLTrainer
        except ImportError:  # TRL < 1.0 exported it at the top level
            from trl import ORPOConfig as TRLConfig
            from trl import ORPOTrainer as TRLTrainer
        trainer = TRLTrainer(
            model=model,
            args=TRLConfig(**common, gradient_checkpointing=False),
            train_dataset=datasets.Dataset.from_list(pairs),
            processing_class=tokenizer,
            callbacks=[timer],
        )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # no log lines between the table's
    trainer.train()
    wall, cpu = timer.wall, timer.cpu
    layout = ""
    if kind == "orpo":
        layout = trainer.layout_choice.layout.value
        if trainer.scorer.uses_packing is False or trainer.scorer.uses_shared_prompt is False:
            layout = "padded (fallback)"
    return {
        "step_s": (wall[-1] - wall[ns.warmup]) / ns.steps,
        "cpu_step_s": (cpu[-1] - cpu[ns.warmup]) / ns.steps,
        "layout": layout,  # type: ignore[dict-item]
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (the table shows their median)")
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="steps before the measured ones")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per batch")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    ns = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch
    import transformers

    torch.set_num_threads(ns.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    logging.getLogger("orpo").setLevel(logging.ERROR)
    variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
        if "trl" in variants:
            print("# TRL is not importable: skipping the 'trl' variant", file=sys.stderr)
            variants.remove("trl")

    from orpo.demo.tiny import build_tokenizer

    pairs = make_pairs(ns.pairs * (ns.warmup + ns.steps), (20, 60), (10, 40), seed=0)
    tokenizer = build_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in pairs], vocab_size=600)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"# {command}")
    print(
        f"# device: CPU ({_cpu_name()}, {os.cpu_count()} cores, torch threads {ns.threads}); torch {torch.__version__}, "
        f"transformers {transformers.__version__}, trl {trl_version}"
    )
    print(
        f"# model: Mixtral hidden {ns.hidden}, {ns.layers} layers, {ns.experts} experts top-2, vocab {len(tokenizer)}; "
        f"output_router_logits, router_aux_loss_coef {COEF}; {ns.pairs} pairs/step, {ns.steps} measured steps "
        f"after {ns.warmup}, {ns.runs} runs per variant"
    )
    load_before = os.getloadavg()
    rows = []
    for name in variants:
        runs = [run_once(name, ns, pairs, tokenizer) for _ in range(ns.runs)]
        rows.append((name, runs))
    load_after = os.getloadavg()
    print(f"# load average (1/5/15 min): before {load_before}, after {load_after}")
    base = next((statistics.median(r["step_s"] for r in runs) for name, runs in rows if name == "trl"), None)
    print("| variant | layout | s/step (median) | min-max | CPU s/step (median) | x TRL |")
    print("|---|---|---|---|---|---|")
    for name, runs in rows:
        steps = [r["step_s"] for r in runs]
        median = statistics.median(steps)
        ratio = f"{base / median:.2f}" if base else "n/a"
        cpu = statistics.median(r["cpu_step_s"] for r in runs)
        layout = runs[0]["layout"] or "padded (TRL)"
        print(f"| {name} | {layout} | {median:.4f} | {min(steps):.4f}-{max(steps):.4f} | {cpu:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
