"""What a person watching a run sees while it trains: a progress bar or one line per logging step.

:class:`TqdmProgressCallback` (terminal) / :class:`LineProgressCallback` (logs, CI) show loss, NLL,
preference accuracy and margin.  The health check is in :mod:`orpo.training.health`; the end-of-run curves,
table and JSON summary in :mod:`orpo.training.summary`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from transformers import TrainerCallback

_ACTIVE_BAR: Any = None


def emit(line: str, err: bool = False) -> None:
    """Print a line without breaking an active progress bar.

    Args:
        line: the text, without its newline.
        err: to stderr rather than stdout.
    """
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


def format_value(value: Any, digits: int = 4) -> str:
    """A metric as the progress lines and the summary table show it: ``-`` for None, floats short.

    Args:
        value: the value; None, a float (scientific notation below 1e-3 and from 1e5 on) or anything else (``str``).
        digits: significant digits of a float.
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:#.{digits}g}" if abs(value) >= 1 else f"{value:.{digits - 1}f}"
    return str(value)


def _train_line(logs: dict[str, float]) -> str:
    parts = [f"loss {format_value(logs.get('loss'))}"]
    for key, label in (("nll_loss", "nll"), ("rewards/accuracies", "acc"), ("rewards/margins", "margin")):
        if key in logs:
            parts.append(f"{label} {format_value(logs[key])}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.1e}")
    return "  ".join(parts)


def _eval_line(logs: dict[str, float]) -> str:
    parts = [f"eval_loss {format_value(logs.get('eval_loss'))}"]
    for key, label in (
        ("eval_nll_loss", "nll"),
        ("eval_rewards/accuracies", "acc"),
        ("eval_rewards/margins", "margin"),
    ):
        if key in logs:
            parts.append(f"{label} {format_value(logs[key])}")
    return "  ".join(parts)


class LineProgressCallback(TrainerCallback):
    """One line per logging step: ``step 40/300  loss 1.23  nll 1.10  acc 0.750  margin 0.300  [12s]``.

    Evaluations get a line of their own; only the main process prints.  Takes no arguments.
    """

    def __init__(self) -> None:
        self.start = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """``TrainerCallback``'s hook: starts the clock and prints the run's steps and logging interval."""
        self.start = time.time()
        if state.is_world_process_zero:
            emit(f"training: {state.max_steps} steps, logging every {args.logging_steps:g}")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        """``TrainerCallback``'s hook: one line per training or evaluation log."""
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
    """A live progress bar whose postfix shows loss, NLL, preference accuracy and margin.

    Evaluations are printed as lines above the bar; only the main process draws it.  Takes no arguments.
    """

    def __init__(self) -> None:
        self.bar: Any = None
        self.last = 0
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """``TrainerCallback``'s hook: opens the bar (main process), which :func:`emit` then writes above."""
        global _ACTIVE_BAR
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, desc="orpo", unit="step", dynamic_ncols=True)
            self.last = 0
            _ACTIVE_BAR = self.bar

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """``TrainerCallback``'s hook: advances the bar to the global step."""
        if self.bar is not None:
            self.bar.update(state.global_step - self.last)
            self.last = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        """``TrainerCallback``'s hook: a training log updates the postfix, an evaluation log prints a line."""
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
                    self.postfix[label] = format_value(logs[key], 3)
            self.bar.set_postfix(self.postfix, refresh=True)
        elif "eval_loss" in logs:
            emit(f"step {state.global_step}: {_eval_line(logs)}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """``TrainerCallback``'s hook: closes the bar."""
        global _ACTIVE_BAR
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            _ACTIVE_BAR = None
