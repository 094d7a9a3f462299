"""``orpo demo``: what ORPO adds over supervised fine-tuning, measured on one tiny model, offline.

A 2-layer Llama is built from scratch and first taught a habit: it answers every sum with a hedge
(``6 + 17 = 23, I think.``).  From that one base model, two runs align it with the same preference
pairs, steps, learning rate and seed: SFT (``beta=0``, the NLL of the chosen answers only) and ORPO.
Half of the chosen answers still hedge (the better of two hedged answers is still hedged, see
:mod:`orpo.demo.build_assets`), so SFT learns to imitate that; ORPO also sees that every rejected
answer hedges.  On 80 sums no training file has, :mod:`orpo.training.evaluation` scores preference accuracy
and log-probs, and the models' generations are checked for the hedge and for the right sum.

The demo states only the comparisons in :data:`orpo.demo.claims.CLAIMS`, each checked on the run
with its margin printed; the rest of the numbers are information (they move with seed and machine).
Modules: :mod:`~orpo.demo.setting` (constants), :mod:`~orpo.demo.experiment` (training and measuring),
:mod:`~orpo.demo.claims` (the checks), :mod:`~orpo.demo.report` (printing); only this one ties them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .setting import ASSETS, THREADS, build_model, load_rows, load_tokenizer

__all__ = ["ASSETS", "build_model", "load_rows", "load_tokenizer", "run_demo"]


def run_demo(
    output_dir: str = "orpo-demo", fast: bool = False, steps: int | None = None, seed: int = 0, threads: int = THREADS
) -> dict[str, Any]:
    """Build the base model, align it with SFT and with ORPO, print the measures and the checked claims.

    Returns the measures per model, the claims (``passed`` and ``margin`` each), the curves and paths.
    ``threads`` is for ``benchmarks/demo_spread.py``, which measures how the claims move with it.
    """
    import time

    import torch

    start = time.time()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        from . import report
        from .claims import check_claims
        from .experiment import Demo
        from .plot import plot_logps
        from .setting import BETA

        out = Path(output_dir)
        demo = Demo(out, fast, steps, seed, threads)
        setup = demo.setup
        report.print_header(setup)
        outcome = demo.run(report.print_run)
        checks = check_claims(outcome.measures)
        curves = {name: run.curves for name, run in outcome.runs.items() if name != "base"}
        plot = plot_logps({"SFT (beta=0)": curves["sft"], f"ORPO (beta={BETA:g})": curves["orpo"]}, out / "logps.png")
        report.print_measures(setup, outcome)
        report.print_claims(checks, setup)
        report.print_examples(outcome)
        seconds = time.time() - start
        print(f"\ncurves  {plot} (held-out log-probs of chosen and rejected answers over training)")
        print(f"models  {out / 'base'}, {out / 'sft'}, {out / 'orpo'}")
        heldout = ASSETS / "heldout.jsonl"
        shown = heldout.relative_to(Path.cwd()) if heldout.is_relative_to(Path.cwd()) else heldout
        print(f"try     orpo eval {out / 'orpo'} {shown} --compare {out / 'sft'} --by kind --samples 3")
        print(f"done in {seconds:.0f} s")
    finally:
        torch.set_num_threads(previous)
    claims = [
        {
            "claim": c.claim.text,
            "key": c.claim.key,
            "sft": c.sft,
            "orpo": c.orpo,
            "margin": c.margin,
            "required": c.claim.required,
            "passed": c.passed,
        }
        for c in checks
    ]
    return {
        **outcome.measures,
        "claims": claims,
        "checked": not fast,
        "curves": curves,
        "plot": plot,
        "output_dir": str(out),
        "seconds": seconds,
        "seed": seed,
        "threads": threads,
    }
