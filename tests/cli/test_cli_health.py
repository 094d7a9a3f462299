"""The training health check, curves and summary: synthetic ORPO logs with known problems."""

from __future__ import annotations

import math

import pytest

from orpo.training.health import HealthCallback, health_check
from orpo.training.run import TrainResult
from orpo.training.summary import plot_training_curves, summary_table


def logs(chosen, rejected, accuracies=None, nll=None, evals=()):
    """A log history: one training entry per value (avg log-probs per token), plus eval entries."""
    n = len(chosen)
    accuracies = accuracies or [0.5 + 0.4 * i / max(n - 1, 1) for i in range(n)]
    nll = nll or [-c for c in chosen]
    history = []
    for i in range(n):
        history.append(
            {
                "step": 10 * (i + 1),
                "loss": nll[i] + 0.5,
                "nll_loss": nll[i],
                "logps/chosen": chosen[i],
                "logps/rejected": rejected[i],
                "rewards/accuracies": accuracies[i],
                "rewards/margins": 0.1 * (chosen[i] - rejected[i]),
                "learning_rate": 1e-4,
            }
        )
    for step, eval_nll in evals:
        history.append(
            {"step": step, "eval_loss": eval_nll + 0.5, "eval_nll_loss": eval_nll, "eval_rewards/accuracies": 0.8}
        )
    return history


def codes(findings):
    return {finding.code for finding in findings}


def test_healthy_run():
    history = logs([-2.0, -1.6, -1.3, -1.1, -1.0, -0.9], [-2.0, -2.3, -2.6, -2.9, -3.1, -3.3])
    findings = health_check(history, beta=0.1)
    assert codes(findings) == {"healthy"} and findings[0].level == "ok"


def test_both_logps_collapsing_means_beta_too_high():
    history = logs(
        [-1.0, -1.3, -1.8, -2.4, -2.9, -3.4], [-1.1, -1.8, -2.7, -3.6, -4.4, -5.2], nll=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    )
    findings = health_check(history, beta=1.0)
    collapse = next(f for f in findings if f.code == "collapse")
    assert (
        collapse.level == "warning" and "beta=1 is likely too high" in collapse.advice and "beta=0.5" in collapse.advice
    )


def test_accuracy_stuck_near_half_means_beta_too_low_or_bad_data():
    history = logs([-2.0] * 8, [-2.0] * 8, accuracies=[0.5, 0.45, 0.55, 0.5, 0.52, 0.48, 0.5, 0.51])
    finding = next(f for f in health_check(history, beta=0.05) if f.code == "no_separation")
    assert "beta=0.05 may be too low" in finding.advice and "orpo data inspect" in finding.advice


def test_reversed_preferences_point_at_swapped_columns():
    history = logs([-2.0] * 6, [-1.5] * 6, accuracies=[0.3, 0.25, 0.2, 0.15, 0.1, 0.1])
    finding = next(f for f in health_check(history, beta=0.1) if f.code == "reversed")
    assert "swapped" in finding.advice


def test_flat_loss_is_reported():
    history = logs([-2.0] * 6, [-2.0] * 6, accuracies=[0.7] * 6, nll=[2.0] * 6)
    finding = next(f for f in health_check(history, beta=0.1, learning_rate=1e-6) if f.code == "no_progress")
    assert finding.level == "info" and "1e-06" in finding.advice


def test_rising_nll():
    chosen = [-2.0, -1.5, -1.2, -1.0, -1.0, -1.0, -1.0, -1.0]
    nll = [2.0, 1.5, 1.0, 0.8, 0.9, 1.1, 1.3, 1.5]
    finding = next(f for f in health_check(logs(chosen, [-3.0] * 8, nll=nll), beta=0.1) if f.code == "nll_rising")
    assert "lower the learning rate" in finding.advice


def test_eval_overfitting_and_nonfinite():
    history = logs([-2.0, -1.5, -1.2, -1.0, -0.8, -0.6], [-3.0] * 6, evals=[(20, 1.0), (40, 1.2), (60, 1.5)])
    assert "overfitting" in codes(health_check(history, beta=0.1))
    history[3]["loss"] = math.nan
    assert [f.code for f in health_check(history, beta=0.1)] == ["nonfinite"]


def test_too_few_points_and_no_early_warnings():
    assert codes(health_check(logs([-1.0, -2.0], [-1.0, -3.0]), beta=0.1)) == {"few_points"}
    collapsing = logs([-1.0, -1.5, -2.0, -2.5, -3.0], [-1.0, -2.0, -3.0, -4.0, -5.0])
    assert health_check(collapsing, beta=0.5, progress=0.3, final=False) == []  # 5 noisy points: no warning yet


def test_a_margin_within_noise_is_no_reversal():
    """The issue's case: a margin of -2.8e-05 after 8 steps is noise, not swapped columns."""
    chosen = [-5.2650, -5.2640, -5.2655, -5.2648, -5.2652, -5.2649, -5.2651, -5.2650]
    history = logs(chosen, [c + 2.8e-4 for c in chosen], accuracies=[0.25, 0.375, 0.25, 0.125, 0.25, 0.375, 0.25, 0.25])
    assert not {"reversed", "no_separation"} & codes(health_check(history, beta=0.1))


def test_warnings_need_a_difference_beyond_twice_its_standard_error():
    clear = logs([-2.0] * 6, [-1.9] * 6, accuracies=[0.2] * 6)  # gap -0.1, no spread: beyond noise
    assert "reversed" in codes(health_check(clear, beta=0.1))
    # the same mean gap over the last 2 logs, but spread so widely that it is within 2 standard errors
    noisy = logs([-2.0] * 6, [-1.9] * 4 + [-2.9, -0.9], accuracies=[0.2] * 6)
    assert "reversed" not in codes(health_check(noisy, beta=0.1))
    # log-probs collapsing by 0.4 nats/token: a warning when steady, none when the tail is all over the place
    steady = logs([-1.0, -1.0, -1.2, -1.3, -1.4, -1.4], [-1.0, -1.0, -1.2, -1.3, -1.4, -1.4])
    assert "collapse" in codes(health_check(steady, beta=1.0))
    jumpy = logs([-1.0, -1.0, -1.2, -1.3, -0.4, -2.4], [-1.0, -1.0, -1.2, -1.3, -0.4, -2.4])
    assert "collapse" not in codes(health_check(jumpy, beta=1.0))


def test_beta_zero_is_judged_as_sft():
    history = logs([-2.0, -1.6, -1.3, -1.1, -1.0, -0.9], [-2.0, -1.6, -1.3, -1.1, -1.0, -0.9], accuracies=[0.5] * 6)
    findings = health_check(history, beta=0.0)
    assert [f.code for f in findings] == ["sft", "healthy"]
    assert findings[0].message.startswith("beta=0: this run is plain SFT on the chosen answers")
    assert findings[1].message.startswith("SFT (beta=0) looks healthy (means of the first and last 2 logs)")


def test_the_healthy_line_says_what_it_averages():
    history = logs([-2.0, -1.6, -1.3, -1.1, -1.0, -0.9], [-2.0, -2.3, -2.6, -2.9, -3.1, -3.3])
    (finding,) = health_check(history, beta=0.1)
    # accuracies 0.5 0.58 0.66 0.74 0.82 0.9: the means of the first and last 2 logs
    assert finding.message.startswith(
        "training looks healthy (means of the first and last 2 logs): preference accuracy 0.54 -> 0.86, log-prob "
        "gap +2.250 nats/token"
    )


def test_warning_during_training_is_emitted_once(capsys):
    class State:
        is_world_process_zero = True
        global_step = 80
        max_steps = 100
        log_history = logs(
            [-1.0, -1.3, -1.8, -2.4, -2.9, -3.4, -3.9, -4.4], [-1.0, -1.9, -2.8, -3.7, -4.6, -5.5, -6.4, -7.3]
        )

    class Args:
        learning_rate = 1e-4

    callback = HealthCallback(beta=0.5)
    for _ in range(3):
        callback.on_log(Args(), State(), None, logs={"loss": 1.0})
    err = capsys.readouterr().err
    assert err.count("[health] warning: chosen and rejected log-probs are both collapsing") == 1


@pytest.mark.parametrize("with_eval", [False, True])
def test_curves_png_and_summary(tmp_path, with_eval):
    history = logs([-2.0, -1.6, -1.3, -1.1], [-2.0, -2.3, -2.6, -2.9], evals=[(40, 1.0)] if with_eval else ())
    path = plot_training_curves(history, tmp_path / "curves.png")
    assert path and (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training_curves([], tmp_path / "none.png") is None
    result = TrainResult(
        output_dir="out", log_history=history, eval_metrics={"eval_nll_loss": 1.0} if with_eval else {}
    )
    table = summary_table(result)
    assert "rewards/accuracies" in table and "0.500" in table and "0.900" in table


def test_orpo_plot_redraws_from_trainer_state(tmp_path, capsys):
    import json

    from orpo.cli import main

    history = logs([-2.0, -1.6, -1.3, -1.1], [-2.0, -2.3, -2.6, -2.9])
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "curves written to" in capsys.readouterr().out


def test_progress_bar_shows_loss_and_accuracy(capsys):
    from orpo.training.callbacks import TqdmProgressCallback

    class State:
        is_world_process_zero = True
        max_steps = 4
        global_step = 0

    bar = TqdmProgressCallback()
    state = State()
    bar.on_train_begin(None, state, None)
    for step in range(1, 5):
        state.global_step = step
        bar.on_step_end(None, state, None)
        bar.on_log(
            None,
            state,
            None,
            logs={"loss": 1.0 / step, "nll_loss": 0.5, "rewards/accuracies": 0.75, "rewards/margins": 0.2},
        )
    bar.on_train_end(None, state, None)
    err = capsys.readouterr().err
    assert "4/4" in err and "acc=0.75" in err and "loss=0.25" in err
