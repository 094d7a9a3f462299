"""What the demo prints: the setting, then each measure for the base model, SFT and ORPO, and who won it."""

from __future__ import annotations

from typing import Any

from . import ASSETS, BATCH, BETA, EXAMPLES, LR
from .experiment import MEASURES


def print_header(demo: Any, parameters: int) -> None:
    rows = demo.rows
    hedged = next(row for row in rows["train"] if row["kind"] == "hedged")
    wrong = next(row for row in rows["train"] if row["kind"] == "wrong")
    text = lambda row, key: repr(row[key][0]["content"])  # noqa: E731
    print("orpo demo: what ORPO adds over supervised fine-tuning (SFT), on one tiny model, offline")
    print(
        f"  task   'What is a + b?' (a, b in 0..19, 4 phrasings); {len(demo.prompts)} sums are held out of every "
        f"training file ({ASSETS.relative_to(ASSETS.parents[2])})"
    )
    print(
        f"  model  Llama, 2 layers, hidden 64, {parameters / 1e6:.2f}M parameters, random init; "
        f"{len(demo.tokenizer)}-token byte-level BPE, ChatML"
    )
    print(f"  pairs  {len(rows['train'])} for alignment, {len(rows['heldout'])} held out, half of each kind:")
    print(f"           hedged  {text(hedged, 'chosen')} over {text(hedged, 'rejected')}")
    print(f"           wrong   {text(wrong, 'chosen')} over {text(wrong, 'rejected')} (the chosen answer hedges too)")
    print(
        f"  runs   from the same base model, same pairs, {demo.steps} steps, batch {BATCH}, lr {LR:g}, seed "
        f"{demo.seed}: SFT = beta 0 (NLL of the chosen answers only), ORPO = beta {BETA:g}",
        flush=True,
    )


def _cell(key: str, value: float) -> str:
    return f"{value:+.2f}" if key.startswith("logp") else f"{100 * value:.1f}%"


def print_results(demo: Any, results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The table; returns, per measure with a direction, 'ORPO', 'SFT' or 'tie' (at the printed precision)."""
    print(f"\non {len(demo.prompts)} unseen sums ({demo.samples} samples each at temperature 1)")
    print(f"  {'':<40}{'base':>8}{'SFT':>8}{'ORPO':>8}   better")
    verdicts: dict[str, str] = {}
    for label, key, direction in MEASURES:
        cells = [_cell(key, results[name][key]) for name in ("base", "sft", "orpo")]
        better = ""
        if direction:
            sft, orpo = (float(c.rstrip("%")) for c in cells[1:])
            better = "tie" if sft == orpo else "ORPO" if (orpo - sft) * direction > 0 else "SFT"
            verdicts[key] = better
        print((f"  {label:<40}" + "".join(f"{c:>8}" for c in cells) + f"   {better}").rstrip())
    labels = {key: label for label, key, _ in MEASURES}
    lost = [
        f"{labels[k]} ({_cell(k, results['sft'][k])} vs {_cell(k, results['orpo'][k])})"
        for k, v in verdicts.items()
        if v == "SFT"
    ]
    ties = [labels[k] for k, v in verdicts.items() if v == "tie"]
    won = sum(v == "ORPO" for v in verdicts.values())
    print(f"\nORPO was better on {won} of {len(verdicts)} measures.", end="")
    print(f" SFT was better on: {'; '.join(lost)}." if lost else " SFT was better on none.", end="")
    print(f" Tied: {'; '.join(ties)}." if ties else "")
    print("\n  unseen prompt                 SFT, sampled                        ORPO, sampled")
    for index in range(min(EXAMPLES, len(demo.prompts))):
        sft, orpo = results["sft"]["sampled"][index][0], results["orpo"]["sampled"][index][0]
        print(f"  {demo.prompts[index]:<29} {sft!r:<35} {orpo!r}")
    return verdicts
