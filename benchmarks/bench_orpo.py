#!/usr/bin/env python
"""Throughput, peak memory and MFU of orpo's ORPOTrainer against TRL's, on the same data and model.

One command runs every variant (TRL's ORPOTrainer and orpo's trainer with several settings) on the
same synthetic preference pairs, the same random-init model shape and the same batches in the
same order, then prints a table with the ratios to TRL.  Each variant runs in a fresh
subprocess so that peak memory is its own (``--in-process`` runs them in this process).

    python benchmarks/bench_orpo.py                 # GPU: Qwen2-0.5B shape, bf16, 8 pairs/batch
    python benchmarks/bench_orpo.py --cpu           # tiny model on CPU, a couple of minutes
    python benchmarks/bench_orpo.py --cpu --lengths ultrafeedback   # realistic lengths (bench_data.py)

What is measured (also printed with the results):

* tokens/s: tokens of the sequences a padding-free trainer processes, i.e. per pair
  ``(prompt + chosen) + (prompt + rejected)`` with no padding, as tokenized by orpo, divided by
  the wall time of the measured steps (data loading, forward, backward and optimizer step; the
  warm-up steps are excluded).  The same token count is used for every variant, so the ratio of
  two variants' tokens/s is the inverse ratio of their step times.  On CPU the process CPU time of
  the same steps is recorded too (``tokens_per_cpu_s``): on a shared machine, where wall time
  depends on what else runs, it is the steadier basis (use ``--threads 1``, so no thread spins).
* peak memory: GPU: ``torch.cuda.max_memory_allocated`` over the training run (weights, gradients,
  optimizer states and activations), reset when training starts.  CPU: the process's peak
  resident set size (VmHWM) during training, reset when training starts through
  ``/proc/self/clear_refs``; weights, optimizer states and everything else resident count too, the
  Python interpreter and libraries (~0.5 GB) included, so compare the ``+train`` column (peak minus
  the resident size at the start of training) between variants.
* MFU: model FLOPs per second over the peak rate.  Model FLOPs of a step are those of the
  canonical computation on the unpadded sequences: ``6 * N * tokens`` for the matmul weights
  (N = non-embedding parameters + the LM head, counted even when tied) plus ``6 * layers *
  heads * head_dim * s^2`` per sequence of length s for causal attention.  Work a trainer skips
  (padding, the LM head on unscored tokens) is still counted, work it adds (padding) is not, so
  MFU compares like with like (a shared prompt is counted twice, as the padded computation does
  it).  Peak: the chip's dense bf16 rate (H100/H200 SXM: 989 TFLOP/s; ``--peak-tflops`` to
  override); on CPU the fp32 matmul rate measured at start.
* x TRL: against ``trl`` (TRL's ORPOTrainer at its defaults: gradient checkpointing on) and
  ``trl-nogc`` (the same without it), whichever of the two ran.

``orpo`` runs the default layout (auto: the one the trainer logs); ``orpo-padded``, ``orpo-pf``
and ``orpo-sp`` force padded, padding-free and shared-prompt batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: name -> (trainer, overrides of orpo's ORPOConfig).  "trl" is TRL's ORPOTrainer.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "trl": ("trl", {"_gc": True}),  # TRL's defaults: gradient checkpointing on
    "trl-nogc": ("trl", {"_gc": False}),
    "orpo": ("orpo", {}),  # defaults: fused LM head, layout auto
    "orpo-padded": ("orpo", {"layout": "padded"}),
    "orpo-pf": ("orpo", {"layout": "padding_free"}),
    "orpo-pf-trlnll": ("orpo", {"layout": "padding_free", "nll_scope": "prompt_and_completion"}),  # TRL's loss
    "orpo-sp": ("orpo", {"layout": "shared_prompt"}),  # prompt run once per pair
    "orpo-pf-flex": ("orpo", {"layout": "padding_free", "_attn": "flex_attention"}),  # GPU: a BlockMask
    "orpo-sp-flex": ("orpo", {"layout": "shared_prompt", "_attn": "flex_attention"}),
    "orpo-sp-gc": ("orpo", {"layout": "shared_prompt", "_gc": True}),
    "orpo-sp-flex-gc": ("orpo", {"layout": "shared_prompt", "_attn": "flex_attention", "_gc": True}),
    "orpo-plain": ("orpo", {"fused_lm_head": False}),  # full logits, as TRL
    "orpo-grouped": ("orpo", {"train_sampling_strategy": "group_by_length"}),
}
DEFAULT_VARIANTS = "trl,trl-nogc,orpo,orpo-padded,orpo-pf,orpo-sp"

#: Dense bf16 tensor-core peak (TFLOP/s) by device-name fragment.
PEAK_TFLOPS = {"H200": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0}


@dataclass
class Shape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = True


GPU_SHAPE = Shape(151936, 896, 4864, 24, 14, 2)  # Qwen2-0.5B
CPU_SHAPE = Shape(32000, 256, 1024, 4, 4, 2)


@dataclass
class Settings:
    cpu: bool
    variants: list[str]
    pairs: int
    steps: int
    warmup: int
    lengths: str
    prompt_words: tuple[int, int]
    completion_words: tuple[int, int]
    max_length: int
    max_prompt_length: int
    precision: str
    attn: str
    gradient_checkpointing: bool
    liger: bool
    compile: bool
    seed: int
    threads: int
    peak_tflops: float | None
    shape: Shape = field(default_factory=lambda: GPU_SHAPE)


# ---- synthetic data (bench_data.py) ----------------------------------------------------------


def make_pairs(settings: Settings) -> list[dict[str, str]]:
    from bench_data import make_pairs as draw

    total = settings.pairs * (settings.steps + settings.warmup)
    return draw(
        total, settings.seed, settings.lengths, settings.prompt_words, settings.completion_words, settings.max_length
    )


def make_tokenizer(pairs: list[dict[str, str]]):
    from orpo.demo.tiny import build_tokenizer

    corpus = [row[key] for row in pairs[:512] for key in ("prompt", "chosen", "rejected")]
    return build_tokenizer(corpus, vocab_size=8192)


def make_model(settings: Settings, tokenizer, attn: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    shape = settings.shape
    config = Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        tie_word_embeddings=shape.tie_word_embeddings,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(settings.seed)
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn or settings.attn)


# ---- measurement ---------------------------------------------------------------------------


def _rss_kib() -> tuple[int, int]:
    """(current, peak) resident set size of this process in KiB, from /proc/self/status."""
    status = Path("/proc/self/status").read_text()
    return (int(re.search(r"VmRSS:\s+(\d+)", status).group(1)), int(re.search(r"VmHWM:\s+(\d+)", status).group(1)))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def model_flops(model, sequence_lengths: list[int]) -> float:
    """Canonical training FLOPs (forward + backward) of the unpadded sequences; see the module doc."""
    config = model.config
    embedding = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters()) - embedding.numel()
    params += config.vocab_size * config.hidden_size  # the LM head, tied or not
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn_width = config.num_attention_heads * head_dim
    tokens = sum(sequence_lengths)
    return 6.0 * params * tokens + 6.0 * config.num_hidden_layers * attn_width * sum(s * s for s in sequence_lengths)


def measured_cpu_peak_tflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start))
    return best / 1e12


def peak_tflops(settings: Settings) -> tuple[float, str]:
    if settings.peak_tflops:
        return settings.peak_tflops, "given"
    if settings.cpu:
        return measured_cpu_peak_tflops(settings.threads), f"measured fp32 matmul, {settings.threads} threads"
    import torch

    name = torch.cuda.get_device_name()
    for fragment, value in PEAK_TFLOPS.items():
        if fragment in name:
            return value, f"{name} dense bf16 spec"
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")


def _timer_callback(settings: Settings):
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.step_ends: list[float] = []
            self.cpu_ends: list[float] = []  # process CPU time (all threads): steadier on a shared CPU
            self.rss_start = 0
            self.rss_reset = False

        def _sync(self) -> None:
            if torch.cuda.is_available() and not settings.cpu:
                torch.cuda.synchronize()

        def on_train_begin(self, args, state, control, **kwargs):
            self._sync()
            if settings.cpu:
                self.rss_start = _rss_kib()[0]
                self.rss_reset = _reset_peak_rss()
            else:
                torch.cuda.reset_peak_memory_stats()
            self.step_ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            self.step_ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

    return StepTimer()


def _training_args(settings: Settings, output_dir: str, gradient_checkpointing: bool) -> dict[str, Any]:
    args: dict[str, Any] = {
        "output_dir": output_dir,
        "per_device_train_batch_size": settings.pairs,
        "gradient_accumulation_steps": 1,
        "max_steps": settings.steps + settings.warmup,
        "learning_rate": 1e-6,
        "lr_scheduler_type": "constant",
        "logging_steps": 10_000,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": settings.seed,
        "train_sampling_strategy": "sequential",
        "dataloader_num_workers": 0,
        "gradient_checkpointing": gradient_checkpointing,
        "bf16": settings.precision in ("bf16", "amp"),
        "use_cpu": settings.cpu,
        "max_length": settings.max_length,
        "use_liger_kernel": settings.liger,
        "torch_compile": settings.compile,
    }
    if gradient_checkpointing:
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return args


def run_variant(settings: Settings, name: str) -> dict[str, Any]:
    """Build the trainer of one variant, train warmup + steps batches, return the measurements."""
    import datasets
    import torch

    torch.set_num_threads(settings.threads)
    kind, overrides = VARIANTS[name]
    overrides = dict(overrides)
    attn = overrides.pop("_attn", None)
    gradient_checkpointing = overrides.pop("_gc", settings.gradient_checkpointing)
    pairs = make_pairs(settings)
    tokenizer = make_tokenizer(pairs)
    model = make_model(settings, tokenizer, attn)
    timer = _timer_callback(settings)
    output_dir = tempfile.mkdtemp(prefix=f"bench-{name}-")
    args = _training_args(settings, output_dir, gradient_checkpointing)

    # Token counts (orpo's tokenization) of the measured batches, the same for every variant.
    from orpo import ORPOConfig, ORPOTrainer

    # on_too_long="error": a truncated pair would make the two trainers see different tokens.
    orpo_args = ORPOConfig(
        **{**args, "max_prompt_length": settings.max_prompt_length, "on_too_long": "error", **overrides}
    )
    if kind == "orpo":
        trainer = ORPOTrainer(
            model=model, args=orpo_args, train_dataset=pairs, processing_class=tokenizer, callbacks=[timer]
        )
        prepared = trainer.train_dataset
    else:
        from orpo.data import prepare_preference_dataset

        prepared, _ = prepare_preference_dataset(pairs, tokenizer, orpo_args)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        try:
            from trl.experimental.orpo import ORPOConfig as TRLConfig
            from trl.experimental.orpo import ORPOTrainer as TRLTrainer
        except ImportError:  # TRL < 1.0 exported it at the top level
            from trl import ORPOConfig as TRLConfig
            from trl import ORPOTrainer as TRLTrainer
        trainer = TRLTrainer(
            model=model,
            args=TRLConfig(**args),
            train_dataset=datasets.Dataset.from_list(pairs),
            processing_class=tokenizer,
            callbacks=[timer],
        )
    if len(prepared) != len(pairs):
        raise SystemExit(f"{len(pairs) - len(prepared)} of the synthetic pairs were dropped (duplicates?)")
    lengths = [
        (len(p) + len(c), len(p) + len(r))
        for p, c, r in zip(
            prepared["prompt_input_ids"], prepared["chosen_input_ids"], prepared["rejected_input_ids"], strict=True
        )
    ]
    measured = lengths[settings.warmup * settings.pairs :]
    sequence_lengths = [s for pair in measured for s in pair]

    result: dict[str, Any] = {
        "variant": name,
        "trainer": kind,
        "overrides": overrides,
        "attn": attn or settings.attn,
        "gradient_checkpointing": gradient_checkpointing,
        "prompt_median": statistics.median(len(p) for p in prepared["prompt_input_ids"]),
        "completion_median": statistics.median(len(c) for c in prepared["chosen_input_ids"]),
    }
    try:
        trainer.train()
    except torch.OutOfMemoryError as err:
        return {**result, "error": f"OOM: {str(err).splitlines()[0]}"}
    ends = timer.step_ends
    seconds = ends[-1] - ends[settings.warmup]
    tokens = sum(sequence_lengths)
    flops = model_flops(model, sequence_lengths)
    result.update(
        seconds=seconds,
        steps=settings.steps,
        tokens=tokens,
        tokens_per_pair=tokens / len(measured),
        tokens_per_s=tokens / seconds,
        tflops=flops / seconds / 1e12,
        first_step_s=ends[1] - ends[0],
        cpu_seconds=timer.cpu_ends[-1] - timer.cpu_ends[settings.warmup],
        tokens_per_cpu_s=tokens / (timer.cpu_ends[-1] - timer.cpu_ends[settings.warmup]),
    )
    if settings.cpu:
        peak = _rss_kib()[1]
        result.update(
            peak_gib=peak / 2**20,
            train_extra_gib=(peak - timer.rss_start) / 2**20,
            peak_kind="VmHWM" if timer.rss_reset else "VmHWM (not reset: includes setup)",
        )
    else:
        result.update(
            peak_gib=torch.cuda.max_memory_allocated() / 2**30,
            reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
            peak_kind="max_memory_allocated",
        )
    if kind == "orpo":
        scorer, choice = trainer.scorer, trainer.layout_choice
        layout = choice.layout.value + (f" ({choice.implementation})" if choice.implementation else "")
        if scorer.uses_shared_prompt is False or scorer.uses_packing is False:
            layout = "padded (fallback)"
        result.update(fused=scorer.uses_fused, layout=layout)
    return result


# ---- driver --------------------------------------------------------------------------------


def _environment(settings: Settings) -> dict[str, Any]:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl

        env["trl"] = trl.__version__
    except ImportError:
        env["trl"] = None
    if settings.cpu:
        cpu = "unknown CPU"
        with contextlib.suppress(OSError):
            match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
            cpu = match.group(1).strip() if match else cpu
        env["device"] = f"{cpu}, {os.cpu_count()} cores, {settings.threads} torch threads"
    else:
        env["device"] = torch.cuda.get_device_name()
    return env


def _ratio(value: float, base: dict[str, Any] | None, key: str) -> str:
    return f"{value / base[key]:.2f}" if base and base.get(key) else "n/a"


def _format_table(results: list[dict[str, Any]], settings: Settings, peak: float) -> str:
    ok = {r["variant"]: r for r in results if "error" not in r}
    base, nogc = ok.get("trl"), ok.get("trl-nogc")
    memory = "peak RSS GiB" if settings.cpu else "peak GiB"
    head = f"| variant | tokens/s | x TRL | x TRL no-GC | {memory} | "
    head += "+train GiB | x TRL (+train) | " if settings.cpu else "x TRL (peak) | "
    head += "MFU | s/step | GC | fused head | layout |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['error']} |")
            continue
        row = f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {_ratio(r['tokens_per_s'], base, 'tokens_per_s')} | "
        row += f"{_ratio(r['tokens_per_s'], nogc, 'tokens_per_s')} | {r['peak_gib']:.2f} | "
        if settings.cpu:
            row += f"{r['train_extra_gib']:.2f} | {_ratio(r['train_extra_gib'], base, 'train_extra_gib')} | "
        else:
            row += f"{_ratio(r['peak_gib'], base, 'peak_gib')} | "
        row += f"{100 * r['tflops'] / peak:.1f}% | {r['seconds'] / r['steps']:.3f} | "
        row += f"{'on' if r.get('gradient_checkpointing') else 'off'} | {r.get('fused', '-')} | {r.get('layout', 'padded')} |"
        lines.append(row)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="tiny model on CPU (for machines without a GPU)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per batch (default 8)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default: GPU 20, CPU 6)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps, not timed (default: GPU 3, CPU 1)")
    parser.add_argument(
        "--lengths",
        default="uniform",
        choices=["uniform", "ultrafeedback", "long-prompt"],
        help="length distribution (bench_data.py); uniform uses --prompt-words / --completion-words",
    )
    parser.add_argument("--prompt-words", default=None, help="LO,HI words per prompt (default: GPU 100,200, CPU 40,80)")
    parser.add_argument(
        "--completion-words", default=None, help="LO,HI per completion (default: GPU 150,300, CPU 60,120)"
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="max tokens per sequence (default: 1024; long-prompt 2048)"
    )
    parser.add_argument(
        "--precision",
        choices=["bf16", "amp", "fp32"],
        default=None,
        help="bf16: bf16 weights (GPU default); amp: fp32 weights + bf16 autocast; fp32 (CPU default)",
    )
    parser.add_argument(
        "--attn",
        default="sdpa",
        help="attn_implementation of every variant (sdpa, eager, flex_attention, flash_attention_2); the *-flex "
        "variants always use flex_attention",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--liger", action="store_true", help="use_liger_kernel=True for every variant (GPU)")
    parser.add_argument("--compile", action="store_true", help="torch_compile=True for every variant (GPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak rate for MFU (default: by device)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true", help="run the variants in this process, one after another")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    cpu = ns.cpu

    def bounds(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
        if text is None:
            return default
        low, high = (int(x) for x in text.split(","))
        return low, high

    variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    from bench_data import MAX_LENGTH

    max_length = ns.max_length or MAX_LENGTH[ns.lengths]
    settings = Settings(
        cpu=cpu,
        variants=variants,
        lengths=ns.lengths,
        pairs=ns.pairs,
        steps=ns.steps or (6 if cpu else 20),
        warmup=ns.warmup if ns.warmup is not None else (1 if cpu else 3),
        prompt_words=bounds(ns.prompt_words, (40, 80) if cpu else (100, 200)),
        completion_words=bounds(ns.completion_words, (60, 120) if cpu else (150, 300)),
        max_length=max_length,
        max_prompt_length=max_length // 2,
        precision=ns.precision or ("fp32" if cpu else "bf16"),
        attn=ns.attn,
        gradient_checkpointing=ns.gradient_checkpointing,
        liger=ns.liger,
        compile=ns.compile,
        seed=ns.seed,
        threads=ns.threads or os.cpu_count() or 1,
        peak_tflops=ns.peak_tflops,
        shape=CPU_SHAPE if cpu else GPU_SHAPE,
    )
    if settings.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step allocates optimizer states)")
    return settings, ns


def main(argv: list[str] | None = None) -> None:
    settings, ns = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if ns.child:  # one variant, result as one JSON line on stdout
        import logging

        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        logging.getLogger("orpo").setLevel(logging.ERROR)
        print("RESULT " + json.dumps(run_variant(settings, ns.child)), flush=True)
        return
    if not settings.cpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu")
    if "trl" in settings.variants:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL is not installed (pip install -e '.[bench]'): skipping the 'trl' variant", file=sys.stderr)
            settings.variants.remove("trl")
    peak, peak_source = peak_tflops(settings)
    env = _environment(settings)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(
        f"# {command}\n# device: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}"
    )
    print(f"# settings: {json.dumps({k: v for k, v in asdict(settings).items() if k != 'shape'})}")
    print(f"# model: Qwen2 shape {asdict(settings.shape)}; peak {peak:.2f} TFLOP/s ({peak_source})", flush=True)
    results = []
    for name in settings.variants:
        if ns.in_process:
            result = run_variant(settings, name)
        else:
            args = [a for a in (argv if argv is not None else sys.argv[1:])]
            proc = subprocess.run([sys.executable, __file__, *args, "--child", name], capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                result = {"variant": name, "error": "failed: " + " / ".join(tail)}
            else:
                result = json.loads(line[len("RESULT ") :])
        results.append(result)
        summary = result.get("error") or f"{result['tokens_per_s']:,.0f} tokens/s, peak {result['peak_gib']:.2f} GiB"
        print(f"# {name}: {summary}", flush=True)
    print(_format_table(results, settings, peak))
    if results and "tokens_per_pair" in results[-1]:
        last = results[-1]
        print(
            f"\n{last['tokens_per_pair']:.0f} tokens per pair ((prompt + chosen) + (prompt + rejected)); "
            f"lengths {settings.lengths}: median prompt {last['prompt_median']:.0f}, completion "
            f"{last['completion_median']:.0f} tokens; {settings.pairs} pairs per batch, {settings.steps} measured "
            f"steps after {settings.warmup} warm-up.\nMFU basis: 6 x (non-embedding params + LM head) x tokens + "
            f"6 x layers x heads x head_dim x sum(len^2) per step (unpadded sequences, prompt counted per "
            f"sequence), over {peak:.3g} TFLOP/s ({peak_source})."
        )
    if ns.json:
        Path(ns.json).write_text(
            json.dumps(
                {
                    "command": command,
                    "environment": env,
                    "peak_tflops": peak,
                    "peak_source": peak_source,
                    "settings": asdict(settings),
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
