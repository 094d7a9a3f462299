"""Naming the dataset rows, micro-batches and parameters behind a non-finite loss or gradient."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from orpo.data.errors import SOURCE_COLUMN  # each row's origin, e.g. "data.jsonl, line 7 (row 6)"
from orpo.training.metrics import MetricWindows

#: Column added to the prepared train dataset and carried by the collator as ``batch[ROW_INDEX_COLUMN]``,
#: so a report can name the dataset rows of a bad batch.
ROW_INDEX_COLUMN = "orpo_row_index"

Batch = dict[str, Any]


def rows_of(batch: Batch) -> list[int]:
    """The dataset rows of a collated micro-batch (empty when the collator does not carry them).

    Args:
        batch: a collated micro-batch.
    """
    index = batch.get(ROW_INDEX_COLUMN) if isinstance(batch, dict) else None
    return [int(i) for i in index.tolist()] if index is not None else []


def format_rows(rows: list[int]) -> str:
    """Dataset rows for a message: the first 16 and how many in all, or "unknown".

    Args:
        rows: dataset row indices.
    """
    if not rows:
        return "unknown"
    return "[" + ", ".join(map(str, rows[:16])) + (f", ... ({len(rows)} in all)" if len(rows) > 16 else "") + "]"


def preview(dataset: Any, rows: list[int], limit: int = 3) -> str:
    """Where each row came from (file and line, when loaded from a file) and the start of its prompt.

    Args:
        dataset: the prepared train dataset.
        rows: its row indices.
        limit: the most rows shown.

    Returns:
        `` (...)`` to append to a message, or ``""`` with nothing to show.
    """
    columns = getattr(dataset, "column_names", None) or []
    if not rows or not columns:
        return ""
    shown = []
    for row in rows[:limit]:
        record = dataset[row]
        parts = [f"[{row}]"]
        if record.get(SOURCE_COLUMN):
            parts.append(str(record[SOURCE_COLUMN]))
        if isinstance(record.get("prompt"), str):
            text = record["prompt"].replace("\n", " ")
            parts.append(f"prompt {text[:60]!r}{'...' if len(text) > 60 else ''}")
        shown.append(" ".join(parts))
    return " (" + "; ".join(shown) + ")"


class Diagnosis:
    """Re-runs a bad step's micro-batches, with the same weights, to say what went non-finite.

    Every dependency is a callable bound by the trainer: ``dataset()`` the train dataset (for
    previews), ``model()`` the model being trained, ``rescore(batch)`` the micro-batch's per-token
    log-probs (``TokenScores.logps``: 2B rows, chosen first), ``loss(batch)`` its training loss with
    autograd on (it records metrics: ``windows`` are restored afterwards so the logs do not count the
    re-runs), ``context()`` the trainer's ``compute_loss_context_manager``.

    Args:
        dataset: returns the train dataset.
        model: returns the model being trained.
        rescore: a micro-batch's per-token log-probs, ``[2B, L-1]``.
        loss: a micro-batch's training loss, with autograd on.
        windows: the trainer's metric windows (restored after the re-runs).
        context: the trainer's ``compute_loss_context_manager``.
    """

    def __init__(
        self,
        dataset: Callable[[], Any],
        model: Callable[[], torch.nn.Module],
        rescore: Callable[[Batch], torch.Tensor],
        loss: Callable[[Batch], torch.Tensor],
        windows: MetricWindows,
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.dataset = dataset
        self.model = model
        self.rescore = rescore
        self.loss = loss
        self.windows = windows
        self.context = context

    def preview(self, rows: list[int]) -> str:
        """:func:`preview` of the train dataset's ``rows``.

        Args:
            rows: dataset row indices.
        """
        return preview(self.dataset(), rows)

    def bad_rows(self, batch: Batch) -> str:
        """Re-score the micro-batch (no grad) to find the rows whose log-probs are non-finite.

        Args:
            batch: the collated micro-batch, as the step got it.
        """
        rows = rows_of(batch)
        with torch.no_grad(), self.context():
            logps = self.rescore(batch)
        bad = (~torch.isfinite(logps)).any(-1).tolist()
        pairs = len(bad) // 2
        if not rows or len(bad) != 2 * len(rows):  # e.g. packed rows: no per-pair attribution
            return "log-probs are non-finite" if any(bad) else "every log-prob is finite: the loss itself overflowed"
        found = [f"{'chosen' if r < pairs else 'rejected'} of row {rows[r % pairs]}" for r, b in enumerate(bad) if b]
        if not found:
            return "every row's log-probs are finite: the loss itself overflowed"
        bad_rows = sorted({rows[r % pairs] for r, b in enumerate(bad) if b})
        return "non-finite log-probs in " + ", ".join(found) + self.preview(bad_rows)

    def bad_gradients(self, inputs: list[Batch]) -> list[str]:
        """Re-run each micro-batch's backward alone to find which one, and which parameters, go non-finite.

        The gradients already accumulated (a later step's, when the report comes a step late) are put back.

        Args:
            inputs: the step's collated micro-batches.

        Returns:
            One indented line per micro-batch with non-finite gradients (or one saying none reproduces it).
        """
        model = self.model()
        snapshot = self.windows.snapshot("train")
        accumulated = [(p, p.grad) for p in model.parameters()]
        lines = []
        try:
            for i, batch in enumerate(inputs):
                model.zero_grad(set_to_none=True)
                with self.context():
                    loss = self.loss(batch)
                loss.backward()
                names = [
                    n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
                ]
                if names:
                    rows = rows_of(batch)
                    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                    lines.append(
                        f"  micro-batch {i + 1}/{len(inputs)} (dataset rows {format_rows(rows)}{self.preview(rows)}) "
                        f"gives non-finite gradients in {shown}"
                    )
        finally:
            for param, grad in accumulated:
                param.grad = grad
            self.windows.restore("train", snapshot)
        return lines or ["  no single micro-batch reproduces it: the accumulated gradient overflowed"]
