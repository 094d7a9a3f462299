#!/usr/bin/env python
"""Median over several runs of bench_orpo.py (their ``--json`` files), as one table.

    python benchmarks/bench_median.py run1.json run2.json run3.json

Per variant: the median tokens/s, peak and added memory, and the ratios to TRL (at its defaults,
and without gradient checkpointing) computed run by run, then their median (so a run that was
slow for every variant does not skew the ratios).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]]) -> str:
    cpu = runs[0]["settings"]["cpu"]
    names = [r["variant"] for r in runs[0]["results"]]
    memory = "train_extra_gib" if cpu else "peak_gib"
    cpu_time = cpu and all("tokens_per_cpu_s" in r for run in runs for r in run["results"] if "error" not in r)
    extra = "tokens/CPU-s | x TRL (CPU time) | x TRL no-GC (CPU time) | " if cpu_time else ""
    head = f"| variant | tokens/s | x TRL | x TRL no-GC | {extra}{'+train GiB' if cpu else 'peak GiB'} | "
    head += "x TRL (memory) | MFU | s/step | layout | runs |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in names:
        rows = []
        for run in runs:
            by_name = {r["variant"]: r for r in run["results"] if "error" not in r}
            if name in by_name:
                rows.append((by_name[name], by_name.get("trl"), by_name.get("trl-nogc"), run["peak_tflops"]))
        if not rows:
            lines.append(f"| {name} | error in every run |")
            continue

        def ratio(key: str, base_index: int, rows: list = rows) -> str:
            values = [r[0][key] / r[base_index][key] for r in rows if r[base_index] is not None]
            return f"{_median(values):.2f}" if values else "n/a"

        speed = _median([r[0]["tokens_per_s"] for r in rows])
        mfu = _median([r[0]["tflops"] / r[3] for r in rows])
        step = _median([r[0]["seconds"] / r[0]["steps"] for r in rows])
        cells = f"| {name} | {speed:,.0f} | {ratio('tokens_per_s', 1)} | {ratio('tokens_per_s', 2)} | "
        if cpu_time:
            cpu_speed = _median([r[0]["tokens_per_cpu_s"] for r in rows])
            cells += f"{cpu_speed:,.0f} | {ratio('tokens_per_cpu_s', 1)} | {ratio('tokens_per_cpu_s', 2)} | "
        cells += f"{_median([r[0][memory] for r in rows]):.2f} | {ratio(memory, 1)} | {100 * mfu:.1f}% | {step:.2f} | "
        lines.append(cells + f"{rows[0][0].get('layout', 'padded')} | {len(rows)} |")
    return "\n".join(lines)


def main() -> None:
    runs = [json.loads(Path(path).read_text()) for path in sys.argv[1:]]
    if not runs:
        raise SystemExit(__doc__)
    print(summarize(runs))


if __name__ == "__main__":
    main()
