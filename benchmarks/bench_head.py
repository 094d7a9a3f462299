#!/usr/bin/env python
"""Step time of the fused LM head alone: forward + backward of ``linear_selective_log_softmax``.

    python benchmarks/bench_head.py --cpu                       # CPU bench shape: V 32000, H 256
    python benchmarks/bench_head.py                             # GPU: Qwen2-0.5B head, bf16
    python benchmarks/bench_head.py --impl /tmp/fused_old.py    # another version of orpo/fused.py

Times the median of ``--repeats`` runs (after one warm-up) of forward + backward over ``--tokens``
scored rows, for each ``--chunk-rows`` (``auto``: the module's own choice), and prints one table.
On a shared CPU the process CPU time (``--threads 1``) is steadier than the wall time.
The weight-gradient matmul is what moved between versions, so the FLOP basis is the head's
``6 * tokens * vocab * hidden`` (forward, input and weight gradients) plus the backward's
recomputation of the logits, ``2 * tokens * vocab * hidden``: 8 N V H per step.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from typing import Any

import torch


def load(path: str | None) -> Any:
    if path is None:
        from orpo.scoring import fused

        return fused
    spec = importlib.util.spec_from_file_location("fused_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(fused: Any, hidden, weight, index, chunk_rows: int | None, autocast: torch.dtype | None) -> None:
    hidden.grad = weight.grad = None
    with torch.autocast(hidden.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        logps, _ = fused.linear_selective_log_softmax(hidden, weight, index, chunk_rows=chunk_rows)
    logps.sum().backward()


def measure(fused: Any, args: argparse.Namespace, chunk_rows: int | None) -> tuple[float, float, float]:
    device = torch.device("cpu" if args.cpu else "cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "amp": torch.float32}[args.precision]
    hidden = (torch.randn(args.tokens, args.hidden, generator=gen) * 0.5).to(device, dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.02).to(device, dtype).requires_grad_()
    index = torch.randint(0, args.vocab, (args.tokens,), generator=gen).to(device)
    autocast = torch.bfloat16 if args.precision == "amp" else None
    step(fused, hidden, weight, index, chunk_rows, autocast)
    times, cpu_times = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.repeats):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        step(fused, hidden, weight, index, chunk_rows, autocast)
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), statistics.median(cpu_times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--impl", default=None, help="path of a fused.py to time instead of orpo.scoring.fused")
    parser.add_argument("--tokens", type=int, default=None, help="scored rows (default: CPU 1536, GPU 16384)")
    parser.add_argument("--hidden", type=int, default=None, help="default: CPU 256, GPU 896")
    parser.add_argument("--vocab", type=int, default=None, help="default: CPU 32000, GPU 151936")
    parser.add_argument("--precision", choices=["fp32", "bf16", "amp"], default=None, help="CPU fp32, GPU bf16")
    parser.add_argument("--chunk-rows", default="auto", help="comma-separated ints or 'auto'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    args.tokens = args.tokens or (1536 if args.cpu else 16384)
    args.hidden = args.hidden or (256 if args.cpu else 896)
    args.vocab = args.vocab or (32000 if args.cpu else 151936)
    args.precision = args.precision or ("fp32" if args.cpu else "bf16")
    if args.threads:
        torch.set_num_threads(args.threads)
    fused = load(args.impl)
    flops = 8.0 * args.tokens * args.vocab * args.hidden
    print(f"# impl: {args.impl or 'orpo.scoring.fused'}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(f"# N {args.tokens}, H {args.hidden}, V {args.vocab}, {args.precision}, median of {args.repeats}")
    print("| chunk rows | s/step | process CPU s/step | TFLOP/s (8NVH, wall) | peak GiB |")
    print("|---|---|---|---|---|")
    for rows in args.chunk_rows.split(","):
        chunk_rows = None if rows == "auto" else int(rows)
        seconds, cpu_seconds, peak = measure(fused, args, chunk_rows)
        print(f"| {rows} | {seconds:.4f} | {cpu_seconds:.4f} | {flops / seconds / 1e12:.3f} | {peak:.2f} |", flush=True)


if __name__ == "__main__":
    main()
