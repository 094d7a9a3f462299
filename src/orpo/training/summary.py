"""The end of a run: training curves as a PNG, a summary table, a JSON summary.

The PNG is drawn on matplotlib's Agg canvas directly, so no display and no global backend
switch are needed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orpo.training.callbacks import format_value
from orpo.training.health import series

PANELS = (
    ("loss", ("loss",), "loss (NLL + beta * odds-ratio)"),
    ("nll_loss", ("nll_loss",), "NLL of chosen"),
    ("rewards/accuracies", ("rewards/accuracies",), "preference accuracy"),
    ("rewards/margins", ("rewards/margins",), "reward margin (chosen - rejected)"),
    ("logps", ("logps/chosen", "logps/rejected"), "avg log-prob per token"),
    ("learning_rate", ("learning_rate",), "learning rate"),
)


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> str | None:
    """Write the training (and eval) curves to a PNG; None when nothing was logged.

    Args:
        history: the run's log entries (``trainer.state.log_history``).
        path: the PNG to write; its folder is created.

    Returns:
        The PNG's path, or None when no loss was logged.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not any("loss" in log or "eval_loss" in log for log in history):
        return None
    figure = Figure(figsize=(13, 7.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3)
    for ax, (_, keys, title) in zip(axes.flat, PANELS, strict=True):
        drawn = False
        for key in keys:
            train = series([log for log in history if "loss" in log], key)
            label = key.split("/")[-1] if len(keys) > 1 else "train"
            if train:
                ax.plot([s for s, _ in train], [v for _, v in train], label=label, linewidth=1.5)
                drawn = True
            evaluation = series(history, f"eval_{key}")
            if evaluation:
                ax.plot(
                    [s for s, _ in evaluation],
                    [v for _, v in evaluation],
                    "o--",
                    label=f"eval {label}" if len(keys) > 1 else "eval",
                    markersize=4,
                )
                drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if key == "rewards/accuracies":
            ax.set_ylim(-0.02, 1.02)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    figure.suptitle("ORPO training curves", fontsize=12)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return str(path)


SUMMARY_METRICS = (
    "loss",
    "nll_loss",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "log_odds_chosen",
    "aux_loss",  # mixture-of-experts models with output_router_logits only (a row without values is left out)
)


def first_last(history: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    """The first and last value of ``key`` in the training logs; (None, None) when it was never logged.

    Args:
        history: the run's log entries; only training logs (those with a ``loss``) are read.
        key: the metric's name.
    """
    points = series([log for log in history if "loss" in log], key)
    if not points:
        return None, None
    return points[0][1], points[-1][1]


def summary_table(result: Any) -> str:
    """The end-of-run table: first/last logged value of each metric, eval, where things are.

    Args:
        result: a :class:`~orpo.training.run.TrainResult` (or an object with its attributes).
    """
    history = result.log_history
    eval_metrics = result.eval_metrics or {}
    rows = [("metric", "first", "last", "eval")]
    for key in SUMMARY_METRICS:
        first, last = first_last(history, key)
        ev = eval_metrics.get(f"eval_{key}")
        if first is None and ev is None:
            continue
        rows.append((key, format_value(first), format_value(last), format_value(ev)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["", "ORPO training summary", "-" * (sum(widths) + 6)]
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        )
        if index == 0:
            lines.append("-" * (sum(widths) + 6))
    metrics = result.train_metrics or {}
    if metrics:
        lines.append(_steps_line(result, metrics))
    lines.append(f"model     {result.output_dir}" + (" (merged; adapter in adapter/)" if result.merged else ""))
    if result.adapter_dir and not result.merged:
        lines[-1] += " (LoRA adapter)"
    if result.plot_path:
        lines.append(f"curves    {result.plot_path}")
    if result.summary_path:
        lines.append(f"summary   {result.summary_path}")
    if result.health:
        lines.append("health")
        lines.extend(f"  {finding.line()}" for finding in result.health)
    return "\n".join(lines)


def _steps_line(result: Any, metrics: dict[str, Any]) -> str:
    """The steps this run made (not the checkpoint's), in how long, at what rate; where it resumed from."""
    runtime = float(metrics.get("train_runtime", 0.0))
    steps = result.steps_run
    if steps is None:  # a result put together by hand: the global step of the last log
        steps = next((log.get("step") for log in reversed(result.log_history) if "train_runtime" in log), None)
    rate = ""
    if steps and runtime > 0 and result.pairs_per_step:
        rate = f" ({format_value(steps * result.pairs_per_step / runtime, 3)} pairs/s)"
    resumed = f", resumed from {result.resumed_from}" if result.resumed_from else ""
    if resumed and steps:
        resumed += f" (steps {result.first_step + 1}-{result.first_step + steps})"
    epoch = format_value(metrics.get("epoch"), 3)
    return f"{steps if steps is not None else '?'} steps{resumed} in {runtime:.1f} s{rate}; at epoch {epoch}"


def write_summary(path: str | Path, result: Any) -> str:
    """Write the run's summary as JSON: where things are, the metrics, first/last values, the health verdict.

    Args:
        path: the JSON file to write (its folder must exist).
        result: a :class:`~orpo.training.run.TrainResult` (or an object with its attributes).

    Returns:
        The file's path.
    """
    history = result.log_history
    payload = {
        "output_dir": result.output_dir,
        "adapter_dir": result.adapter_dir,
        "merged": result.merged,
        "plot": result.plot_path,
        "train_metrics": result.train_metrics,
        "eval_metrics": result.eval_metrics,
        "steps_run": result.steps_run,
        "resumed_from": result.resumed_from,
        "first_last": {
            key: dict(zip(("first", "last"), first_last(history, key), strict=True))
            for key in SUMMARY_METRICS
            if key != "aux_loss" or first_last(history, key)[0] is not None
        },
        "health": [asdict(finding) for finding in result.health],
    }
    path = Path(path)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return str(path)
