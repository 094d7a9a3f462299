"""How far the demo's claims and measures move over seeds and torch thread counts.

``orpo demo`` states a comparison only if it holds on any machine; a different CPU or thread count
changes the order of float sums, which is what running one seed under several thread counts
imitates here.  Each grid point is one full demo in its own process (``OMP_NUM_THREADS`` and
``torch.set_num_threads`` both set), so nothing leaks from one run into the next::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/demo_spread.py --seeds 0 1 2 3 4 --threads 1 2 4

It prints a Markdown table (the one in ``src/orpo/demo/MEASURED.md``): for each claim the smallest
and largest margin over the grid next to the margin the demo requires, then the same spread of
ORPO - SFT for every information measure, then whether a seed gave identical numbers across threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ONE_RUN = """
import json, sys
from orpo.demo import run_demo
result = run_demo(output_dir=sys.argv[1], seed=int(sys.argv[2]), threads=int(sys.argv[3]))
json.dump({k: v for k, v in result.items() if k != "curves"}, open(sys.argv[4], "w"))
"""


def run_one(work: Path, seed: int, threads: int) -> dict[str, Any]:
    """One demo run in a fresh process; its stdout goes to ``work/s{seed}t{threads}.log``."""
    name = f"s{seed}t{threads}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [sys.executable, "-c", ONE_RUN, str(work / name), str(seed), str(threads), str(work / f"{name}.json")]
    with (work / f"{name}.log").open("w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    result: dict[str, Any] = json.loads((work / f"{name}.json").read_text())
    print(f"  seed {seed}, {threads} thread(s): {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    return result


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown spread tables of a list of :func:`run_one` results."""
    from orpo.demo.claims import CLAIMS, MEASURES, check_claims

    checks = [check_claims(r) for r in results]  # from the measures, so retuned margins need no new runs

    seeds = sorted({r["seed"] for r in results})
    threads = sorted({r["threads"] for r in results})
    percent = {key: shown for _, key, shown in MEASURES}
    unit = lambda key, v: f"{100 * v:+.1f} pts" if percent[key] else f"{v:+.3f}"  # noqa: E731  (differences)
    value = lambda key, v: f"{100 * v:.1f}%" if percent[key] else f"{v:+.3f}"  # noqa: E731
    lines = [
        f"{len(results)} runs: seeds {', '.join(map(str, seeds))} x threads {', '.join(map(str, threads))}.",
        "",
        "| claim (margin: ORPO - SFT in the claim's direction) | min margin | max margin | required | passed |",
        "|---|---:|---:|---:|---:|",
    ]
    for index, claim in enumerate(CLAIMS):
        margins = [run[index].margin for run in checks]
        passed = sum(run[index].passed for run in checks)
        lines.append(
            f"| {claim.text} | {unit(claim.key, min(margins))} | {unit(claim.key, max(margins))} "
            f"| {unit(claim.key, claim.required)} | {passed}/{len(results)} |"
        )
    lines += [
        "",
        "| measure (information) | SFT min..max | ORPO min..max | ORPO - SFT min..max |",
        "|---|---:|---:|---:|",
    ]
    for label, key, _ in MEASURES:
        sft, orpo = [r["sft"][key] for r in results], [r["orpo"][key] for r in results]
        diff = [o - s for s, o in zip(sft, orpo, strict=True)]
        spans = [f"{value(key, min(values))}..{value(key, max(values))}" for values in (sft, orpo)]
        spans.append(f"{unit(key, min(diff))}..{unit(key, max(diff))}")
        lines.append(f"| {label} | {' | '.join(spans)} |")
    same = []
    for seed in seeds:
        runs = [r for r in results if r["seed"] == seed]
        numbers = {json.dumps({m: r[m] for m in ("base", "sft", "orpo")}, sort_keys=True) for r in runs}
        same.append(f"seed {seed}: {'identical' if len(numbers) == 1 else f'{len(numbers)} different'}")
    seconds = [r["seconds"] for r in results]
    lines += [
        "",
        f"Same seed across thread counts ({', '.join(map(str, threads))}): {'; '.join(same)}.",
        f"Seconds per run: {min(seconds):.0f}..{max(seconds):.0f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, default=1, help="Runs at once (keep jobs x threads <= cores).")
    parser.add_argument("--work", type=Path, help="Where runs write models, logs and JSON (default: a temp dir).")
    parser.add_argument("--json", type=Path, help="Also write every run's result here.")
    parser.add_argument("--tabulate", type=Path, help="Only print the tables of a --json file of earlier runs.")
    args = parser.parse_args()
    if args.tabulate:
        print(table(json.loads(args.tabulate.read_text())))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="demo-spread-"))
    work.mkdir(parents=True, exist_ok=True)
    grid = [(seed, threads) for threads in args.threads for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda point: run_one(work, *point), grid))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
