"""What the demo prints: the setting, each run, the measures as information, and the checked claims.

Every function takes :mod:`orpo.demo.records` / :mod:`orpo.demo.claims` objects, so this module never
imports the experiment (nor the experiment this one).
"""

from __future__ import annotations

from collections.abc import Sequence

from .claims import MEASURES, Check
from .records import Outcome, Run, Setup
from .setting import ASSETS, BATCH, BETA, EXAMPLES, LR, STEPS


def print_header(setup: Setup) -> None:
    print("orpo demo: what ORPO adds over supervised fine-tuning (SFT), on one tiny model, offline")
    print(
        f"  task   'What is a + b?' (a, b in 0..19, 4 phrasings); {setup.prompts} sums are held out of every "
        f"training file ({ASSETS.relative_to(ASSETS.parents[2])})"
    )
    print(
        f"  model  Llama, 2 layers, hidden 64, {setup.parameters / 1e6:.2f}M parameters, random init; "
        f"{setup.vocabulary}-token byte-level BPE, ChatML"
    )
    print(f"  pairs  {setup.train_rows} for alignment, {setup.heldout_rows} held out, half of each kind:")
    print(f"           hedged  {setup.hedged_example[0]!r} over {setup.hedged_example[1]!r}")
    print(
        f"           wrong   {setup.wrong_example[0]!r} over {setup.wrong_example[1]!r} (the chosen answer hedges too)"
    )
    print(
        f"  runs   from the same base model, same pairs, {setup.steps} steps, batch {BATCH}, lr {LR:g}, seed "
        f"{setup.seed}, {setup.threads} thread{'s' * (setup.threads != 1)}: SFT = beta 0 (NLL of the chosen "
        f"answers only), ORPO = beta {BETA:g}",
        flush=True,
    )


def print_run(run: Run) -> None:
    loss = f"loss {run.first_loss:.2f} -> {run.last_loss:.2f} in {run.seconds:.0f} s"
    if run.name == "base":
        print(f"1. base model: SFT on {run.rows} answers that all hedge, {run.steps} steps, lr {run.lr:g}: {loss}")
    else:
        print(f"   {run.name.upper():<4} (beta={run.beta:g}): {run.steps} steps, {loss}", flush=True)


def _cell(value: float, percent: bool) -> str:
    return f"{100 * value:.1f}%" if percent else f"{value:+.2f}"


def print_measures(setup: Setup, outcome: Outcome) -> None:
    """The information table: one run's numbers, which move with the seed and the machine."""
    print(
        f"\nmeasured on {setup.prompts} unseen sums ({setup.samples} samples each at temperature 1); "
        "information only: one run's numbers move with seed and machine"
    )
    print(f"  {'':<40}{'base':>8}{'SFT':>8}{'ORPO':>8}")
    for label, key, percent in MEASURES:
        cells = "".join(f"{_cell(outcome.measures[name][key], percent):>8}" for name in ("base", "sft", "orpo"))
        print(f"  {label:<40}{cells}")


def print_claims(checks: Sequence[Check], setup: Setup) -> None:
    """One PASS/FAIL line per claim, with its margin, then a one-line summary."""
    checked = not setup.fast
    if checked:
        note = "" if setup.steps == STEPS else f"; the margins were set for {STEPS} steps, not {setup.steps}"
        print(f"\nclaims (each held over 5 seeds x 1/2/4 threads, see src/orpo/demo/MEASURED.md{note})")
    else:
        print("\nclaims: not checked with --fast (too few steps for them to hold); the margins, for information")
    for check in checks:
        print(f"  {check.line(checked)}")
    if checked:
        failed = [check for check in checks if not check.passed]
        print(
            f"  all {len(checks)} claims hold"
            if not failed
            else f"  {len(failed)} of {len(checks)} claims FAILED on this run: please report it with this output"
        )


def print_examples(outcome: Outcome) -> None:
    print("\n  unseen prompt                 SFT, sampled                        ORPO, sampled")
    for index in range(min(EXAMPLES, len(outcome.prompts))):
        sft, orpo = outcome.sampled["sft"][index][0], outcome.sampled["orpo"][index][0]
        print(f"  {outcome.prompts[index]:<29} {sft!r:<35} {orpo!r}")
