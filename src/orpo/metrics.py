"""The ORPO metrics of a logging window: sums per micro-batch, averages when logged.

Sums (not per-step averages) are kept so a logged value is the average over every pair and
token of the window, whatever the batch sizes, and so processes can be reduced exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

#: The metrics logged at every logging step (``eval_``-prefixed during evaluation).
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
)


class MetricWindows:
    """Per-mode ("train", "eval") sums since the last log.

    ``sums`` has the structure checkpoints save and restore (see :mod:`orpo.reliability`):
    ``{mode: defaultdict(float, {key: float64 tensor})}``.
    """

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}

    def reset(self, mode: str) -> None:
        self.sums[mode] = defaultdict(float)

    # ---- the contract the reliability objects rely on (guard, diagnostics, checkpoints) ----
    def snapshot(self, mode: str) -> dict[str, Any]:
        """A copy of ``mode``'s sums, to put back with :meth:`restore` or :meth:`keep_if`."""
        return dict(self.sums[mode])

    def restore(self, mode: str, snapshot: dict[str, Any]) -> None:
        """Put back the sums of a :meth:`snapshot` (e.g. after a diagnostic re-run)."""
        self.sums[mode] = defaultdict(float, snapshot)

    def keep_if(self, mode: str, snapshot: dict[str, Any], keep: torch.Tensor) -> None:
        """Keep what was recorded since ``snapshot`` only where the 0-d bool ``keep`` is True.

        A ``torch.where`` on device, so leaving a non-finite micro-batch out costs no host sync.
        """
        store = self.sums[mode]
        for key in list(store):
            new = store[key]
            if torch.is_tensor(new):
                old = torch.as_tensor(snapshot.get(key, 0.0), dtype=new.dtype, device=new.device)
                store[key] = torch.where(keep.to(new.device), new, old)

    def export(self, mode: str) -> dict[str, float]:
        """``mode``'s sums as plain floats (saved in checkpoints for an exact resume)."""
        return {key: float(value) for key, value in self.sums[mode].items()}

    def load(self, mode: str, values: dict[str, float], device: Any) -> None:
        """Sums saved by :meth:`export`, as float64 tensors on ``device``."""
        self.sums[mode] = defaultdict(
            float, {key: torch.tensor(value, dtype=torch.float64, device=device) for key, value in values.items()}
        )

    def record(
        self,
        mode: str,
        out: Any,
        scores: Any,
        completion: torch.Tensor,
        nll_mask: torch.Tensor,
        nll_logp_sum: torch.Tensor,
        pairs: int,
        logps: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Accumulate sums so logged metrics are averages over the whole logging window."""
        odds = out.odds
        valid = odds.valid.float()
        with torch.no_grad():
            lm = scores.logit_means * completion
            sums = {
                "pairs": valid.sum(),
                # average log-probs themselves, not rewards / beta: those are 0/0 when beta == 0
                **(
                    {
                        "logps/chosen": (logps[0].detach() * valid).sum(),
                        "logps/rejected": (logps[1].detach() * valid).sum(),
                    }
                    if logps is not None
                    else {}
                ),
                "rewards/chosen": odds.chosen_rewards.sum(),
                "rewards/rejected": odds.rejected_rewards.sum(),
                "rewards/accuracies": ((odds.chosen_rewards > odds.rejected_rewards).float() * valid).sum(),
                "rewards/margins": (odds.chosen_rewards - odds.rejected_rewards).sum(),
                "log_odds_ratio": odds.log_sigmoid_odds.detach().sum(),
                "log_odds_chosen": odds.log_odds.detach().sum(),
                "logits/chosen": lm[:pairs].sum(),
                "logits/rejected": lm[pairs:].sum(),
                "tokens/chosen": completion[:pairs].sum(),
                "tokens/rejected": completion[pairs:].sum(),
                "nll/sum": -nll_logp_sum.detach(),
                "nll/tokens": nll_mask.sum(),
            }
            store = self.sums[mode]
            for key, value in sums.items():
                store[key] = store[key] + value.detach().double()

    def pop(
        self,
        mode: str,
        beta: float,
        device: Any,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """The window's averages (``METRIC_NAMES``), summed over processes with ``reduce``; starts a new window."""
        store = self.sums[mode]
        if not store:
            return {}
        keys = sorted(store)
        values = torch.stack([torch.as_tensor(store[k], dtype=torch.float64, device=device) for k in keys])
        if reduce is not None:
            values = reduce(values)
        totals = dict(zip(keys, values.tolist(), strict=True))
        self.sums[mode] = defaultdict(float)
        pairs = max(totals["pairs"], 1.0)
        metrics = {
            name: totals[name] / pairs
            for name in (
                "rewards/chosen",
                "rewards/rejected",
                "rewards/accuracies",
                "rewards/margins",
                "log_odds_ratio",
                "log_odds_chosen",
            )
        }
        for side in ("chosen", "rejected"):
            key = f"logps/{side}"
            if key in totals:
                metrics[key] = totals[key] / pairs
            else:  # sums restored from a checkpoint written before logps were recorded
                metrics[key] = metrics[f"rewards/{side}"] / beta if beta else math.nan
        metrics["logits/chosen"] = totals["logits/chosen"] / max(totals["tokens/chosen"], 1.0)
        metrics["logits/rejected"] = totals["logits/rejected"] / max(totals["tokens/rejected"], 1.0)
        metrics["nll_loss"] = totals["nll/sum"] / max(totals["nll/tokens"], 1.0)
        return {name: metrics[name] for name in METRIC_NAMES}
