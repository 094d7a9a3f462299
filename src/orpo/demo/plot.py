"""The demo's figure: held-out log-probs of chosen and rejected answers over training, SFT next to ORPO.

The paper's Fig. 3 in miniature (Hong et al. 2024): with SFT alone the rejected answers' likelihood
rises along with the chosen ones'; the odds-ratio term holds it down.
"""

from __future__ import annotations

from pathlib import Path

#: (kind of pair, 1 = its chosen / 2 = its rejected answers, label, colour, line style).  The chosen answers of
#: the wrong pairs (right sum, hedged) score like the hedged rejected answers, so they are not drawn.
SERIES = (
    ("hedged", 1, "plain answer (chosen)", "tab:blue", "-"),
    ("hedged", 2, "same answer, hedged (rejected)", "tab:red", "-"),
    ("wrong", 2, "wrong sum, hedged (rejected)", "tab:red", "--"),
)


def plot_logps(curves: dict[str, dict[str, list[tuple[int, float, float]]]], path: str | Path) -> str:
    """``curves[run][kind]`` = [(step, chosen logp, rejected logp)]; one panel per run, shared y axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(curves), sharey=True, squeeze=False)[0]
    for ax, (run, kinds) in zip(axes, curves.items(), strict=True):
        for kind, side, label, colour, style in SERIES:
            points = kinds.get(kind, [])
            ax.plot([p[0] for p in points], [p[side] for p in points], style, color=colour, label=label, linewidth=1.6)
        ax.set_title(run, fontsize=11)
        ax.set_xlabel("training step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("held-out log-prob per token", fontsize=9)
    axes[-1].legend(fontsize=8, loc="lower right")
    figure.suptitle("Chosen and rejected answers on 80 unseen sums, from the same hedging base model", fontsize=11)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return str(path)
