"""Naming the dataset rows, micro-batches and parameters behind a non-finite loss or gradient."""

from __future__ import annotations

from typing import Any

import torch

from ..data.errors import SOURCE_COLUMN  # each row's origin, e.g. "data.jsonl, line 7 (row 6)"

#: Column added to the prepared train dataset and carried by the collator as ``batch[ROW_INDEX_COLUMN]``,
#: so a report can name the dataset rows of a bad batch.
ROW_INDEX_COLUMN = "orpo_row_index"


class RowDiagnosticsMixin:
    """Re-runs a bad step's micro-batches to say which rows and parameters went non-finite."""

    def _rows_of(self, batch: dict[str, Any]) -> list[int]:
        index = batch.get(ROW_INDEX_COLUMN) if isinstance(batch, dict) else None
        return [int(i) for i in index.tolist()] if index is not None else []

    def _preview(self, rows: list[int], limit: int = 3) -> str:
        """Where each row came from (file and line, when loaded from a file) and the start of its prompt."""
        dataset = self.train_dataset
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

    def _diagnose_rows(self, batch: dict[str, Any], rows: list[int]) -> str:
        """Re-score the micro-batch (same weights, no grad) to find the rows whose log-probs are non-finite."""
        scorer = getattr(self, "scorer", None)
        if scorer is None:
            return "rows not diagnosed"
        prepared = self._prepare_inputs(batch)
        with torch.no_grad(), self.compute_loss_context_manager():
            scores = scorer(self.model, prepared)
        bad = (~torch.isfinite(scores.logps)).any(-1).tolist()
        pairs = len(bad) // 2
        if not rows or len(bad) != 2 * len(rows):  # e.g. packed rows: no per-pair attribution
            return "log-probs are non-finite" if any(bad) else "every log-prob is finite: the loss itself overflowed"
        found = []
        for r, is_bad in enumerate(bad):
            if is_bad:
                pair = r % pairs
                row = rows[pair] if pair < len(rows) else None
                found.append(
                    f"{'chosen' if r < pairs else 'rejected'} of row {row if row is not None else f'pair {pair}'}"
                )
        if not found:
            return "every row's log-probs are finite: the loss itself overflowed"
        bad_rows = sorted({rows[r % pairs] for r, b in enumerate(bad) if b and r % pairs < len(rows)})
        return "non-finite log-probs in " + ", ".join(found) + self._preview(bad_rows)

    def _diagnose_gradients(self, inputs: list[dict[str, Any]]) -> list[str]:
        """Re-run each micro-batch's backward alone to find which one, and which parameters, go non-finite."""
        model = self.model
        snapshot = self.metric_windows.snapshot("train")
        lines = []
        try:
            for i, batch in enumerate(inputs):
                model.zero_grad(set_to_none=True)
                prepared = self._prepare_inputs(batch)
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, prepared)
                loss.backward()
                names = [
                    n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
                ]
                if names:
                    rows = self._rows_of(batch)
                    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                    lines.append(
                        f"  micro-batch {i + 1}/{len(inputs)} (dataset rows {_fmt(rows)}{self._preview(rows)}) gives "
                        f"non-finite gradients in {shown}"
                    )
        finally:
            model.zero_grad(set_to_none=True)
            self.metric_windows.restore("train", snapshot)
        return lines or ["  no single micro-batch reproduces it: the accumulated gradient overflowed"]


def _fmt(rows: list[int]) -> str:
    if not rows:
        return "unknown"
    return "[" + ", ".join(map(str, rows[:16])) + (f", ... ({len(rows)} in all)" if len(rows) > 16 else "") + "]"
