"""Plain data the experiment hands to the report, so neither module imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field

#: ``curves[kind]`` = [(step, held-out chosen logp, held-out rejected logp)] over one training run.
Curves = dict[str, list[tuple[int, float, float]]]


@dataclass(frozen=True)
class Setup:
    """What the header states about the task, the data and the runs."""

    prompts: int  # held-out sums, one generation prompt each
    base_rows: int
    train_rows: int
    heldout_rows: int
    hedged_example: tuple[str, str]  # (chosen, rejected) of a training pair of each kind
    wrong_example: tuple[str, str]
    parameters: int
    vocabulary: int
    base_steps: int
    steps: int
    samples: int
    seed: int
    threads: int
    fast: bool


@dataclass(frozen=True)
class Run:
    """One training run: its loss from the first to the last logged step, and its held-out curves."""

    name: str
    beta: float
    steps: int
    lr: float
    rows: int
    seconds: float
    first_loss: float
    last_loss: float
    curves: Curves = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """The measures of the base, SFT and ORPO models (``measures[model][key]``) and their samples."""

    measures: dict[str, dict[str, float]]
    prompts: list[str]
    sampled: dict[str, list[list[str]]]  # [model][prompt] -> that prompt's sampled answers
    runs: dict[str, Run]
