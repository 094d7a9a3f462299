"""The training health check: what the logged ORPO signals say about a run, and what to try.

:func:`health_check` reads a log history; :class:`HealthCallback` runs it as a run logs (warning once
per problem) and at the end (:meth:`HealthCallback.final_report`).

**Evidence beyond noise.**  Each logged point is already an average over its logging window, but
windows differ by chance.  A warning compares the mean of the first and/or last ``k`` logged points
(``k`` = a third of them, 2 to 5) and fires only when the difference is larger than *both* a minimum
size (below) *and* twice its standard error (the spread of those points divided by sqrt(k)); during
training it also waits for ``2 * MIN_POINTS`` points.  Minimum sizes: log-probs collapsing, a drop of
0.3 nats/token or 15%; preferences reversed, a chosen-minus-rejected log-prob gap below
-``MIN_LOGP_GAP`` nats/token with accuracy below 0.4; the NLL rising, 0.05 or 10% above its lowest.

**beta = 0** is plain SFT on the chosen answers (no odds-ratio term): the checks about preferences
and about beta are not made, and the verdict says the run is SFT.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from orpo.training.callbacks import emit

#: Logged training points the health check needs before judging anything.
MIN_POINTS = 4
#: Smallest mean chosen-minus-rejected log-prob gap (nats/token) that counts as a preference either way.
MIN_LOGP_GAP = 0.01
#: How many standard errors a difference must exceed.
NOISE_SE = 2.0


@dataclass
class Finding:
    """One verdict of the health check.

    Attributes:
        level: ``"ok"``, ``"info"``, ``"warning"`` or ``"error"``.
        code: the problem's short name (``"collapse"``, ``"reversed"``, ``"nll_rising"``, ``"healthy"``...);
            a warning is shown once per code during a run.
        message: what the logs show.
        advice: what to try; empty when there is nothing to do.
    """

    level: str  # "ok" | "info" | "warning" | "error"
    code: str
    message: str
    advice: str = ""

    def line(self) -> str:
        """``level: message -> advice``, as the console and the model card show it."""
        return f"{self.level}: {self.message}" + (f" -> {self.advice}" if self.advice else "")


def series(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every log entry that has a number under ``key``.

    Args:
        history: log entries, as in ``trainer.state.log_history``.
        key: the metric's name (``"nll_loss"``, ``"eval_loss"``...).
    """
    return [
        (int(log.get("step", 0)), float(log[key]))
        for log in history
        if key in log and isinstance(log[key], int | float)
    ]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _se(values: list[float]) -> float:
    """Standard error of the mean of ``values`` (0 for fewer than two)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def exceeds(difference: float, minimum: float, *groups: list[float]) -> bool:
    """``difference`` (a mean, or a difference of means of ``groups``) beyond ``minimum`` and the noise.

    Args:
        difference: the observed difference, signed so that a problem is positive.
        minimum: the smallest difference that counts, whatever the noise.
        *groups: the values each mean was taken over; their standard errors, combined, make the noise
            (``NOISE_SE`` of them).
    """
    noise = NOISE_SE * math.sqrt(sum(_se(group) ** 2 for group in groups))
    return difference > max(minimum, noise)


def _smooth(values: list[float], window: int = 3) -> list[float]:
    return [_mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def _nonfinite(history: list[dict[str, Any]]) -> Finding | None:
    for log in history:
        for key in ("loss", "nll_loss", "eval_loss", "grad_norm"):
            value = log.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                return Finding(
                    "error",
                    "nonfinite",
                    f"{key} became {value} at step {log.get('step')}",
                    "lower the learning rate, use bf16 rather than fp16, and check the data for empty or huge rows",
                )
    return None


class _Window:
    """The first and last ``k`` training logs, and per-key values of each."""

    def __init__(self, train: list[dict[str, Any]]) -> None:
        self.k = max(2, min(5, len(train) // 3))
        self.head, self.tail = train[: self.k], train[-self.k :]

    @staticmethod
    def values(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(row[key]) for row in rows if isinstance(row.get(key), int | float)]

    def gap(self, rows: list[dict[str, Any]]) -> list[float]:
        """Per log: logps/chosen - logps/rejected (the margin without beta, so it means something at beta 0)."""
        return [float(r["logps/chosen"]) - float(r["logps/rejected"]) for r in rows if "logps/chosen" in r]


def _collapse(w: _Window, beta: float, lr_text: str) -> Finding | None:
    c_head, c_tail = w.values(w.head, "logps/chosen"), w.values(w.tail, "logps/chosen")
    r_head, r_tail = w.values(w.head, "logps/rejected"), w.values(w.tail, "logps/rejected")
    if not (c_head and c_tail and r_head and r_tail):
        return None
    c0, c1, r0, r1 = _mean(c_head), _mean(c_tail), _mean(r_head), _mean(r_tail)
    chosen_falls = exceeds(c0 - c1, max(0.3, 0.15 * abs(c0)), c_head, c_tail)
    if not (chosen_falls and exceeds(r0 - r1, max(0.3, 0.15 * abs(r0)), r_head, r_tail)):
        return None
    return Finding(
        "warning",
        "collapse",
        f"chosen and rejected log-probs are both collapsing (chosen {c0:.2f} -> {c1:.2f}, rejected "
        f"{r0:.2f} -> {r1:.2f} nats/token): the odds-ratio term pushes all likelihood down instead of "
        "teaching the chosen answers",
        f"beta={beta:g} is likely too high: try beta={beta / 2:g} (and/or halve the learning rate{lr_text})",
    )


def _preferences(w: _Window, beta: float, lr_text: str) -> Finding | None:
    """Reversed preferences, or none learnt: judged on the last ``k`` logs' accuracy and log-prob gap."""
    accuracy, gap = w.values(w.tail, "rewards/accuracies"), w.gap(w.tail)
    if not accuracy or not gap:
        return None
    a1 = _mean(accuracy)
    if a1 < 0.4 and exceeds(0.5 - a1, 0.1, accuracy) and exceeds(-_mean(gap), MIN_LOGP_GAP, gap):
        return Finding(
            "warning",
            "reversed",
            f"preference accuracy is {a1:.2f} and rejected answers are {-_mean(gap):.3f} nats/token more likely "
            f"than chosen ones (last {w.k} logs): the model prefers the rejected answers",
            "check that the chosen and rejected columns are not swapped (--text-column is the chosen one, "
            "--rejected-text-column the rejected one); `orpo data inspect` shows a row as it is trained",
        )
    if 0.4 <= a1 <= 0.6 and not exceeds(abs(_mean(gap)), MIN_LOGP_GAP, gap):
        return Finding(
            "warning",
            "no_separation",
            f"preference accuracy is stuck near 0.5 ({a1:.2f} over the last {w.k} logs): the model does not tell "
            "chosen from rejected",
            f"beta={beta:g} may be too low (try {min(beta * 2.5, 1.0):g}) or the learning rate too low{lr_text}; "
            "or chosen and rejected are nearly identical or mislabelled: check with `orpo data inspect`",
        )
    return None


def _nll_rising(train: list[dict[str, Any]], w: _Window, beta: float, lr_text: str) -> Finding | None:
    points = series(train, "nll_loss")
    nll = [value for _, value in points]
    if len(nll) < MIN_POINTS:
        return None
    smooth = _smooth(nll)
    low_at = min(range(len(smooth)), key=smooth.__getitem__)
    if low_at >= len(smooth) - max(1, len(smooth) // 5):
        return None
    around = nll[max(0, low_at - w.k // 2) : max(0, low_at - w.k // 2) + w.k]
    end = nll[-w.k :]
    low = _mean(around)
    if not exceeds(_mean(end) - low, max(0.05, 0.1 * abs(low)), around, end):
        return None
    return Finding(
        "warning",
        "nll_rising",
        f"the NLL of the chosen answers is rising (lowest {low:.3f} near step {points[low_at][0]}, now "
        f"{_mean(end):.3f}): the model is moving away from the chosen answers",
        f"lower the learning rate{lr_text}" + (f" or beta={beta:g}" if beta else "") + ", or train fewer steps/epochs",
    )


def _overfitting(history: list[dict[str, Any]], train: list[dict[str, Any]]) -> Finding | None:
    eval_nll = [value for _, value in series(history, "eval_nll_loss")]
    nll = [value for _, value in series(train, "nll_loss")]
    if len(eval_nll) < 3 or len(nll) < 2:
        return None
    low = min(eval_nll)
    if eval_nll[-1] > low + max(0.05, 0.1 * abs(low)) and nll[-1] < nll[0]:
        return Finding(
            "warning",
            "overfitting",
            f"eval NLL is rising (lowest {low:.3f}, now {eval_nll[-1]:.3f}) while the training NLL falls: overfitting",
            "train fewer epochs, add data, lower the learning rate, or set load_best_model_at_end",
        )
    return None


def health_check(
    history: list[dict[str, Any]],
    beta: float,
    learning_rate: float | None = None,
    progress: float = 1.0,
    final: bool = True,
) -> list[Finding]:
    """Read the logged ORPO signals; return what looks wrong (or that all looks fine).  The rules are in
    the module's docstring.

    Args:
        history: log entries, as in ``trainer.state.log_history`` (training and eval logs).
        beta: the run's odds-ratio weight; 0 (SFT) skips the preference and beta checks.
        learning_rate: the run's learning rate, quoted in the advice; None: not quoted.
        progress: the fraction of the run done, 0 to 1; the preference checks wait for half of it (during training).
        final: the end-of-run verdict (with info findings and "healthy"); False: only warnings and errors, and
            none before ``2 * MIN_POINTS`` logged points.

    Returns:
        The findings; a non-finite loss or gradient norm is the only one when there is one.
    """
    nonfinite = _nonfinite(history)
    if nonfinite is not None:
        return [nonfinite]
    findings: list[Finding] = []
    if final and beta == 0:
        findings.append(
            Finding(
                "info",
                "sft",
                "beta=0: this run is plain SFT on the chosen answers (no odds-ratio term); preference accuracy is "
                "measured but not trained",
            )
        )
    train = [log for log in history if "loss" in log and "rewards/accuracies" in log]
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
    w = _Window(train)
    lr_text = f" (now {learning_rate:g})" if learning_rate else ""
    late = final or progress >= 0.5
    checks = [
        _collapse(w, beta, lr_text) if beta else None,
        _preferences(w, beta, lr_text) if beta and late else None,
        _nll_rising(train, w, beta, lr_text),
        _overfitting(history, train),
    ]
    findings.extend(finding for finding in checks if finding is not None)
    l0, l1 = _mean(w.values(w.head, "loss")), _mean(w.values(w.tail, "loss"))
    if final and math.isfinite(l0) and abs(l1 - l0) < 0.01 * max(abs(l0), 1e-8):
        findings.append(
            Finding(
                "info",
                "no_progress",
                f"the loss barely moved ({l0:.4g} -> {l1:.4g})",
                f"the learning rate{lr_text} may be too low for this many steps, or the run too short",
            )
        )
    if final and not any(f.level in ("warning", "error") or f.code == "no_progress" for f in findings):
        findings.append(_healthy(w, beta))
    return findings


def _healthy(w: _Window, beta: float) -> Finding:
    def change(key: str, digits: int) -> str:
        return f"{_mean(w.values(w.head, key)):.{digits}f} -> {_mean(w.values(w.tail, key)):.{digits}f}"

    nll = f", nll {change('nll_loss', 3)}" if w.values(w.head, "nll_loss") else ""
    logps = f"chosen logp {change('logps/chosen', 2)}, rejected logp {change('logps/rejected', 2)}"
    what = "SFT (beta=0) looks healthy" if beta == 0 else "training looks healthy"
    return Finding(
        "ok",
        "healthy",
        f"{what} (means of the first and last {w.k} logs): preference accuracy {change('rewards/accuracies', 2)}, "
        f"log-prob gap {_mean(w.gap(w.tail)):+.3f} nats/token, {logps}{nll}",
    )


class HealthCallback(TrainerCallback):
    """Warns during training (once per problem) and gives the verdict at the end.

    Args:
        beta: the run's odds-ratio weight (see :func:`health_check`).
        console: print the warnings (to stderr); False: only keep them for the final report.
    """

    def __init__(self, beta: float, console: bool = True) -> None:
        self.beta = beta
        self.console = console
        self.warned: set[str] = set()
        self.report: list[Finding] = []
        self.learning_rate: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """``TrainerCallback``'s hook: keeps the learning rate for the final report's advice."""
        self.learning_rate = args.learning_rate

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        """``TrainerCallback``'s hook: checks the history so far; a new warning or error is printed once."""
        if not state.is_world_process_zero or not logs:
            return
        progress = state.global_step / state.max_steps if state.max_steps else 0.0
        for finding in health_check(state.log_history, self.beta, args.learning_rate, progress, final=False):
            if finding.level in ("warning", "error") and finding.code not in self.warned:
                self.warned.add(finding.code)
                if self.console:
                    emit(f"[health] {finding.line()}", err=True)

    def final_report(self, history: list[dict[str, Any]], state: Any = None) -> list[Finding]:
        """The end-of-run verdict, kept in ``report`` (the model card shows it).

        Args:
            history: the run's log entries.
            state: the trainer state; unused.
        """
        self.report = health_check(history, self.beta, self.learning_rate, 1.0, final=True)
        return self.report
