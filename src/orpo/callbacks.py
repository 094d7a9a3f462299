"""What a person watching a run sees: progress, health warnings, curves and a final summary.

- :class:`TqdmProgressCallback` / :class:`LineProgressCallback`: a progress bar (terminal) or one
  line per logging step (logs, CI) with loss, NLL, preference accuracy and margin.
- :class:`HealthCallback`: reads the ORPO signals as they are logged and warns, once per
  problem, with what to try: chosen and rejected log-probs both collapsing (beta too high),
  accuracies stuck near 0.5 (beta too low or bad data), the NLL rising, eval diverging from
  train, non-finite losses.  :meth:`HealthCallback.final_report` gives the end-of-run verdict.

The end-of-run curves, table and JSON summary are in :mod:`orpo.report`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

_ACTIVE_BAR: Any = None


def emit(line: str, err: bool = False) -> None:
    """Print a line without breaking an active progress bar."""
    stream = sys.stderr if err else sys.stdout
    if _ACTIVE_BAR is not None:
        from tqdm.auto import tqdm

        tqdm.write(line, file=stream)
    else:
        print(line, file=stream, flush=True)


def use_tqdm() -> bool:
    """A live bar on a terminal, one line per logging step elsewhere (logs, CI); ORPO_PROGRESS=bar|lines forces one."""
    forced = os.environ.get("ORPO_PROGRESS", "").lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    return sys.stderr.isatty()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits - 1}f}"
    return str(value)


def _train_line(logs: dict[str, float]) -> str:
    parts = [f"loss {_fmt(logs.get('loss'))}"]
    for key, label in (("nll_loss", "nll"), ("rewards/accuracies", "acc"), ("rewards/margins", "margin")):
        if key in logs:
            parts.append(f"{label} {_fmt(logs[key])}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.1e}")
    return "  ".join(parts)


def _eval_line(logs: dict[str, float]) -> str:
    parts = [f"eval_loss {_fmt(logs.get('eval_loss'))}"]
    for key, label in (
        ("eval_nll_loss", "nll"),
        ("eval_rewards/accuracies", "acc"),
        ("eval_rewards/margins", "margin"),
    ):
        if key in logs:
            parts.append(f"{label} {_fmt(logs[key])}")
    return "  ".join(parts)


class LineProgressCallback(TrainerCallback):
    """One line per logging step: ``step 40/300 (13%)  loss 1.23  nll 1.10  acc 0.750  margin 0.300``."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.time()
        if state.is_world_process_zero:
            emit(f"training: {state.max_steps} steps, logging every {args.logging_steps:g}")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        width = len(str(state.max_steps))
        head = f"step {state.global_step:>{width}}/{state.max_steps}"
        elapsed = f"[{time.time() - self.start:.0f}s]"
        if "loss" in logs:
            emit(f"{head}  {_train_line(logs)}  {elapsed}")
        elif "eval_loss" in logs:
            emit(f"{head}  {_eval_line(logs)}")


class TqdmProgressCallback(TrainerCallback):
    """A live progress bar whose postfix shows loss, NLL, preference accuracy and margin."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.last = 0
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        global _ACTIVE_BAR
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, desc="orpo", unit="step", dynamic_ncols=True)
            self.last = 0
            _ACTIVE_BAR = self.bar

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.last)
            self.last = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            for key, label in (
                ("loss", "loss"),
                ("nll_loss", "nll"),
                ("rewards/accuracies", "acc"),
                ("rewards/margins", "margin"),
            ):
                if key in logs:
                    self.postfix[label] = _fmt(logs[key], 3)
            self.bar.set_postfix(self.postfix, refresh=True)
        elif "eval_loss" in logs:
            emit(f"step {state.global_step}: {_eval_line(logs)}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        global _ACTIVE_BAR
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            _ACTIVE_BAR = None


# ---------------------------------------------------------------------------------------
# Health check
# ---------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One verdict of the health check."""

    level: str  # "ok" | "info" | "warning" | "error"
    code: str
    message: str
    advice: str = ""

    def line(self) -> str:
        return f"{self.level}: {self.message}" + (f" -> {self.advice}" if self.advice else "")


def _series(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (int(log.get("step", 0)), float(log[key]))
        for log in history
        if key in log and isinstance(log[key], int | float)
    ]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _smooth(values: list[float], window: int = 3) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(_mean(chunk))
    return out


def health_check(
    history: list[dict[str, Any]],
    beta: float,
    learning_rate: float | None = None,
    progress: float = 1.0,
    final: bool = True,
) -> list[Finding]:
    """Read the logged ORPO signals; return what looks wrong (or that all looks fine)."""
    findings: list[Finding] = []
    train = [log for log in history if "loss" in log and "rewards/accuracies" in log]
    for log in history:
        for key in ("loss", "nll_loss", "eval_loss", "grad_norm"):
            value = log.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                findings.append(
                    Finding(
                        "error",
                        "nonfinite",
                        f"{key} became {value} at step {log.get('step')}",
                        "lower the learning rate, use bf16 rather than fp16, and check the data for empty or huge rows",
                    )
                )
                return findings
    n = len(train)
    if n < MIN_POINTS:
        if final:
            findings.append(
                Finding(
                    "info",
                    "few_points",
                    f"only {n} logged training point(s); the health check needs at least {MIN_POINTS}",
                    "train longer or lower --logging-steps",
                )
            )
        return findings

    if not final and n < 2 * MIN_POINTS:
        return findings  # too early to warn: single logging windows are noisy
    k = max(2, min(5, n // 3))
    head, tail = train[:k], train[-k:]

    def avg(rows: list[dict[str, Any]], key: str) -> float:
        return _mean([float(row[key]) for row in rows if key in row])

    lr_text = f" (now {learning_rate:g})" if learning_rate else ""
    c0, c1 = avg(head, "logps/chosen"), avg(tail, "logps/chosen")
    r0, r1 = avg(head, "logps/rejected"), avg(tail, "logps/rejected")
    if all(math.isfinite(v) for v in (c0, c1, r0, r1)):
        drop_c, drop_r = c0 - c1, r0 - r1
        if drop_c > max(0.3, 0.15 * abs(c0)) and drop_r > max(0.3, 0.15 * abs(r0)):
            findings.append(
                Finding(
                    "warning",
                    "collapse",
                    f"chosen and rejected log-probs are both collapsing (chosen {c0:.2f} -> {c1:.2f}, rejected "
                    f"{r0:.2f} -> {r1:.2f} nats/token): the odds-ratio term pushes all likelihood down instead of "
                    "teaching the chosen answers",
                    f"beta={beta:g} is likely too high: try beta={beta / 2:g} (and/or halve the learning rate{lr_text})",
                )
            )

    a1 = avg(tail, "rewards/accuracies")
    m_tail = avg(tail, "rewards/margins")
    if (final or progress >= 0.5) and a1 < 0.4 and m_tail < 0:
        findings.append(
            Finding(
                "warning",
                "reversed",
                f"preference accuracy is {a1:.2f}: the model prefers the rejected answers",
                "check that the chosen and rejected columns are not swapped (--text-column is the chosen one, "
                "--rejected-text-column the rejected one); `orpo data inspect` shows a row as it is trained",
            )
        )
    elif (final or progress >= 0.5) and 0.4 <= a1 <= 0.6:
        findings.append(
            Finding(
                "warning",
                "no_separation",
                f"preference accuracy is stuck near 0.5 ({a1:.2f} over the last {k} logs): the model does not tell "
                "chosen from rejected",
                f"beta={beta:g} may be too low (try {min(beta * 2.5, 1.0):g}) or the learning rate too low{lr_text}; "
                "or chosen and rejected are nearly identical or mislabelled: check with `orpo data inspect`",
            )
        )

    nll = [value for _, value in _series(train, "nll_loss")]
    if len(nll) >= 4:
        smooth = _smooth(nll)
        low_at = min(range(len(smooth)), key=smooth.__getitem__)
        low, end = smooth[low_at], smooth[-1]
        if low_at < len(smooth) - max(1, len(smooth) // 5) and end > low + max(0.05, 0.1 * abs(low)):
            step = _series(train, "nll_loss")[low_at][0]
            findings.append(
                Finding(
                    "warning",
                    "nll_rising",
                    f"the NLL of the chosen answers is rising (lowest {low:.3f} near step {step}, now {end:.3f}): "
                    "the model is moving away from the chosen answers",
                    f"lower the learning rate{lr_text} or beta={beta:g}, or train fewer steps/epochs",
                )
            )

    eval_nll = [value for _, value in _series(history, "eval_nll_loss")]
    if len(eval_nll) >= 3 and len(nll) >= 2:
        low = min(eval_nll)
        if eval_nll[-1] > low + max(0.05, 0.1 * abs(low)) and nll[-1] < nll[0]:
            findings.append(
                Finding(
                    "warning",
                    "overfitting",
                    f"eval NLL is rising (lowest {low:.3f}, now {eval_nll[-1]:.3f}) while the training NLL falls: overfitting",
                    "train fewer epochs, add data, lower the learning rate, or set load_best_model_at_end",
                )
            )

    l0, l1 = avg(head, "loss"), avg(tail, "loss")
    if final and math.isfinite(l0) and abs(l1 - l0) < 0.01 * max(abs(l0), 1e-8):
        findings.append(
            Finding(
                "info",
                "no_progress",
                f"the loss barely moved ({l0:.4g} -> {l1:.4g})",
                f"the learning rate{lr_text} may be too low for this many steps, or the run too short",
            )
        )
    if final and not any(f.level in ("warning", "error", "info") for f in findings):
        a0 = avg(head, "rewards/accuracies")
        m1 = avg(tail, "rewards/margins")
        nll_text = f", nll {nll[0]:.3f} -> {nll[-1]:.3f}" if nll else ""
        findings.append(
            Finding(
                "ok",
                "healthy",
                f"training looks healthy: preference accuracy {a0:.2f} -> {a1:.2f}, margin {m1:+.3f}, "
                f"chosen logp {c0:.2f} -> {c1:.2f}, rejected logp {r0:.2f} -> {r1:.2f}{nll_text}",
            )
        )
    return findings


#: Logged training points the health check needs before judging anything.
MIN_POINTS = 4


class HealthCallback(TrainerCallback):
    """Warns during training (once per problem) and gives the verdict at the end."""

    def __init__(self, beta: float, console: bool = True) -> None:
        self.beta = beta
        self.console = console
        self.warned: set[str] = set()
        self.report: list[Finding] = []
        self.learning_rate: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.learning_rate = args.learning_rate

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        progress = state.global_step / state.max_steps if state.max_steps else 0.0
        for finding in health_check(state.log_history, self.beta, args.learning_rate, progress, final=False):
            if finding.level in ("warning", "error") and finding.code not in self.warned:
                self.warned.add(finding.code)
                if self.console:
                    emit(f"[health] {finding.line()}", err=True)

    def final_report(self, history: list[dict[str, Any]], state: Any = None) -> list[Finding]:
        self.report = health_check(history, self.beta, self.learning_rate, 1.0, final=True)
        return self.report
