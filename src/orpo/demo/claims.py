"""What the demo measures, and the few comparisons it claims, each checked against a required margin.

One run's numbers move with the CPU, the thread count and the seed (float sums are not associative,
and a few flipped samples change a rate).  So the demo states a comparison only when it held with
room to spare over 5 seeds x 1/2/4 threads (``benchmarks/demo_spread.py``, ``MEASURED.md``), and
each claim prints its measured margin next to the margin it requires.  Everything else is shown as
information, never as a verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: (label, key, shown as a percentage): the information table, base model next to SFT and ORPO.
MEASURES = (
    ("preference accuracy, hedged pairs", "accuracy_hedged", True),
    ("preference accuracy, wrong pairs", "accuracy_wrong", True),
    ("hedged generations, greedy", "hedged_greedy", True),
    ("hedged generations, sampled", "hedged_sampled", True),
    ("correct sums, greedy", "correct_greedy", True),
    ("correct sums, sampled", "correct_sampled", True),
    ("logp/token, plain answers (chosen)", "logp_plain", False),
    ("logp/token, hedged answers (rejected)", "logp_hedged", False),
    ("logp/token, wrong sums (rejected)", "logp_wrong", False),
    ("logp margin/token, hedged pairs", "margin_hedged", False),
    ("logp margin/token, wrong pairs", "margin_wrong", False),
)


@dataclass(frozen=True)
class Claim:
    """ORPO's value of measure ``key`` lies beyond SFT's in ``direction`` (+1 higher, -1 lower) by over ``required``."""

    text: str
    key: str
    direction: int
    required: float  # in the measure's unit: a fraction for rates, nats/token for log-probs
    percent: bool

    def check(self, sft: float, orpo: float) -> Check:
        return Check(self, sft, orpo)


@dataclass(frozen=True)
class Check:
    """One claim against one pair of measured values."""

    claim: Claim
    sft: float
    orpo: float

    @property
    def margin(self) -> float:
        """How far ORPO's value lies from SFT's in the claim's direction (negative: the other way)."""
        return (self.orpo - self.sft) * self.claim.direction

    @property
    def passed(self) -> bool:
        return self.margin > self.claim.required

    def line(self, checked: bool = True) -> str:
        """``PASS  text: ORPO x vs SFT y (margin m > r required)``; ``----`` when not checked (``--fast``)."""
        claim, percent = self.claim, self.claim.percent
        status = ("PASS" if self.passed else "FAIL") if checked else "----"
        relation = ">" if self.passed else "<="
        return (
            f"{status}  {claim.text}: ORPO {_value(self.orpo, percent)} vs SFT {_value(self.sft, percent)} "
            f"(margin {_amount(self.margin, percent)} {relation} {_amount(claim.required, percent)} required)"
        )


def _value(value: float, percent: bool) -> str:
    return f"{100 * value:.1f}%" if percent else f"{value:+.2f}"


def _amount(amount: float, percent: bool) -> str:
    """A margin: percentage points for rates, nats/token otherwise (``+ 0.0`` turns a rounded -0 into 0)."""
    return f"{round(100 * amount, 1) + 0.0:.1f} points" if percent else f"{round(amount, 2) + 0.0:.2f}"


#: The claims, each required margin about half the smallest one measured over 5 seeds x 1/2/4 threads (MEASURED.md).
#: Not claimed, because they flip or nearly flip between seeds: greedy hedging (SFT's greedy answer to a sum is a
#: near coin flip between the hedge and the end of the answer: 22.5%..57.5%), preference accuracy and margins on the
#: wrong pairs, greedy correct sums.
CLAIMS = (
    Claim("ORPO hedges in fewer sampled answers than SFT", "hedged_sampled", -1, 0.20, True),
    Claim(
        "ORPO's log-prob margin (chosen - rejected) on held-out hedged pairs exceeds SFT's",
        "margin_hedged",
        1,
        0.10,
        False,
    ),
    Claim("ORPO pushes the held-out hedged (rejected) answers below SFT's log-prob", "logp_hedged", -1, 0.07, False),
    Claim("SFT gets more sampled sums right than ORPO (what ORPO costs here)", "correct_sampled", -1, 0.02, True),
)


def check_claims(measures: Mapping[str, Mapping[str, float]], claims: tuple[Claim, ...] = CLAIMS) -> list[Check]:
    """Each claim against ``measures['sft']`` and ``measures['orpo']``."""
    return [claim.check(measures["sft"][claim.key], measures["orpo"][claim.key]) for claim in claims]
