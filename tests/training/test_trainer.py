"""ORPOTrainer end to end on tiny CPU models: it learns, logs the documented metrics as window
averages, computes the loss an independent float64 recomputation gives, and supports the TRL
constructor conveniences, gradient checkpointing, gradient accumulation and save_model."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from conftest import learnable_pairs
from orpo import METRIC_NAMES, ORPOConfig, ORPOTrainer
from orpo.demo.tiny import tiny_causal_lm
from orpo.scoring.layouts import Layout, layout_of, padded_of

BASE = {
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "constant",
    "report_to": [],
    "disable_tqdm": True,
    "save_strategy": "no",
    "max_length": 64,
    "max_prompt_length": 32,
    "seed": 0,
    "use_cpu": True,
}


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def make_trainer(tokenizer, tmp_path, model=None, train=None, eval_data=None, **overrides):
    recorder = Recorder()
    args = ORPOConfig(output_dir=str(tmp_path), **{**BASE, **overrides})
    trainer = ORPOTrainer(
        model=model if model is not None else tiny_causal_lm(tokenizer, hidden_size=32),
        args=args,
        train_dataset=train if train is not None else learnable_pairs(32),
        eval_dataset=eval_data,
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    trainer.recorder = recorder
    return trainer


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def uneven_pairs(n: int = 8, seed: int = 3) -> list[dict[str, str]]:
    """Completions of very different lengths: per-micro-batch averaging would be visibly wrong."""
    rng = random.Random(seed)
    words = ["sky", "grass", "hello", "world", "numbers", "answer", "color", "green"]
    return [
        {
            "prompt": f"Question {i} about {' '.join(rng.sample(words, rng.randint(1, 4)))}?",
            "chosen": " yes" + " " + " ".join(rng.choices(words, k=rng.randint(1, 9))),
            "rejected": " no" + " " + " ".join(rng.choices(words, k=rng.randint(1, 9))),
        }
        for i in range(n)
    ]


# ---- an independent float64 reference ----------------------------------------------------------


def reference(model, batch, beta: float, nll_scope: str) -> dict[str, torch.Tensor]:
    """ORPO from the textbook formulas on a float64 copy of the model, with full log_softmax.

    Returns sums and counts (for window averages) and the loss of this batch alone.
    """
    if layout_of(batch) is not Layout.PADDED:  # a row batch (the default layout): the same pairs, padded
        batch = padded_of(batch)
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logp = torch.log_softmax(logits, -1)
    targets = batch["input_ids"][:, 1:]
    token_logp = logp.gather(-1, targets[..., None]).squeeze(-1)
    completion = batch["labels"][:, 1:] != -100
    pairs = targets.shape[0] // 2
    avg = (token_logp * completion).sum(-1) / completion.sum(-1)
    lp_c, lp_r = avg[:pairs], avg[pairs:]
    log_odds = (lp_c - lp_r) - (torch.log1p(-torch.exp(lp_c)) - torch.log1p(-torch.exp(lp_r)))
    logsig = F.logsigmoid(log_odds)
    # prompt_and_completion: every real token of the chosen sequence that something predicts
    nll_mask = completion[:pairs] if nll_scope == "completion" else batch["attention_mask"][:pairs, 1:].bool()
    nll_sum = -(token_logp[:pairs] * nll_mask).sum()
    nll_tokens = nll_mask.sum()
    mean_logits = logits.mean(-1)
    out = {
        "pairs": torch.tensor(float(pairs), dtype=torch.float64),
        "rewards/chosen": beta * lp_c.sum(),
        "rewards/rejected": beta * lp_r.sum(),
        "rewards/accuracies": (lp_c > lp_r).double().sum(),
        "rewards/margins": beta * (lp_c - lp_r).sum(),
        "logps/chosen": lp_c.sum(),
        "logps/rejected": lp_r.sum(),
        "log_odds_ratio": logsig.sum(),
        "log_odds_chosen": log_odds.sum(),
        "logits/chosen": mean_logits[:pairs][completion[:pairs]].sum(),
        "logits/rejected": mean_logits[pairs:][completion[pairs:]].sum(),
        "tokens/chosen": completion[:pairs].sum().double(),
        "tokens/rejected": completion[pairs:].sum().double(),
        "nll/sum": nll_sum,
        "nll/tokens": nll_tokens.double(),
    }
    out["loss"] = nll_sum / nll_tokens - beta * logsig.mean()
    return out


def window_metrics(steps: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    total = {key: sum(step[key] for step in steps).item() for key in steps[0]}
    metrics = {
        name: total[name] / total["pairs"] for name in METRIC_NAMES if name in total and not name.startswith("logits")
    }
    metrics["logits/chosen"] = total["logits/chosen"] / total["tokens/chosen"]
    metrics["logits/rejected"] = total["logits/rejected"] / total["tokens/rejected"]
    metrics["nll_loss"] = total["nll/sum"] / total["nll/tokens"]
    return metrics


# ---- learning, metrics, evaluation, generation, saving: one trained model ----------------------


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    trainer = make_trainer(
        tokenizer,
        out,
        eval_data=learnable_pairs(8, seed=1),
        num_train_epochs=6,
        logging_steps=4,
        eval_strategy="epoch",
        generate_during_eval=True,
    )
    before = params(trainer.model)
    trainer.train()
    final_eval = trainer.evaluate()
    return trainer, before, final_eval


def test_learns_the_preference(trained):
    trainer, before, _ = trained
    logs = [log for log in trainer.recorder.logs if "loss" in log and "eval_loss" not in log]
    assert len(logs) == 6
    assert logs[-1]["rewards/accuracies"] >= 0.9
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    assert logs[-1]["nll_loss"] < 0.8 * logs[0]["nll_loss"]
    assert all(a["nll_loss"] > b["nll_loss"] for a, b in itertools.pairwise(logs))
    after = params(trainer.model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before)  # full fine-tuning: every parameter moves
    assert trainer.scorer.uses_fused is True


def test_every_metric_logged_finite_and_eval_prefixed(trained):
    trainer, _, final_eval = trained
    train_logs = [log for log in trainer.recorder.logs if "loss" in log]
    eval_logs = [log for log in trainer.recorder.logs if "eval_loss" in log]
    assert train_logs and len(eval_logs) == 7  # 6 epochs + the final evaluate()
    for log in train_logs:
        for name in METRIC_NAMES:
            assert math.isfinite(log[name]), (name, log)
    for log in [*eval_logs, final_eval]:
        for name in METRIC_NAMES:
            assert math.isfinite(log[f"eval_{name}"]), name
            assert name not in log  # no train metric leaks into an eval log
    assert final_eval["eval_rewards/accuracies"] >= 0.9
    # loss = nll_loss + the odds-ratio term, over the same window, in every train and eval log
    for log in train_logs:
        assert log["loss"] == log["nll_loss"] - trainer.args.beta * log["log_odds_ratio"]
    for log in [*eval_logs, final_eval]:
        assert log["eval_loss"] == log["eval_nll_loss"] - trainer.args.beta * log["eval_log_odds_ratio"]
    # TRL's relations between the metrics
    log = train_logs[-1]
    assert log["rewards/margins"] == pytest.approx(log["rewards/chosen"] - log["rewards/rejected"], abs=1e-6)
    assert log["rewards/chosen"] == pytest.approx(trainer.args.beta * log["logps/chosen"], rel=1e-5)
    assert log["log_odds_ratio"] < 0  # a log-sigmoid


def test_generate_during_eval_writes_jsonl(trained):
    trainer, _, _ = trained
    folder = trainer.args.output_dir + "/generations"
    final = f"{folder}/step-{trainer.state.global_step}.jsonl"
    with open(final, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert len(records) == 4
    for record in records:
        assert set(record) == {"step", "prompt", "chosen", "rejected", "generation"}
        assert record["step"] == trainer.state.global_step
        assert isinstance(record["generation"], str)
    # the trained model answers like the chosen completions
    assert sum(record["generation"].strip().startswith("yes") for record in records) >= 3
    with open(f"{folder}/step-4.jsonl", encoding="utf-8") as handle:  # one file per evaluation
        assert len(handle.readlines()) == 4


def test_save_model_loads_with_identical_weights(trained, tmp_path):
    trainer, _, _ = trained
    trainer.save_model(str(tmp_path))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(str(tmp_path))  # the tokenizer is saved alongside
    ours = trainer.model.state_dict()
    theirs = loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


# ---- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("nll_scope", ["completion", "prompt_and_completion"])
def test_loss_equals_float64_recomputation(tokenizer, tmp_path, nll_scope):
    trainer = make_trainer(
        tokenizer, tmp_path, train=uneven_pairs(), nll_scope=nll_scope, beta=0.25, per_device_train_batch_size=4
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert ("nll_labels" in batch) == (nll_scope == "prompt_and_completion")
    model = trainer.model
    model.train()
    loss = trainer.compute_loss(model, batch)
    expected = reference(model, batch, beta=0.25, nll_scope=nll_scope)
    assert loss.item() == pytest.approx(expected["loss"].item(), rel=1e-5)
    metrics = trainer._pop_metrics("train")
    for name, value in window_metrics([expected]).items():
        assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    if nll_scope == "prompt_and_completion":
        # the NLL covers the prompt: more tokens than the completion alone
        completion_tokens = (batch["labels"][: len(batch["labels"]) // 2, 1:] != -100).sum()
        assert expected["nll/tokens"] > completion_tokens


def test_metrics_are_averaged_over_the_logging_window(tokenizer, tmp_path):
    trainer = make_trainer(
        tokenizer,
        tmp_path,
        train=uneven_pairs(8),
        per_device_train_batch_size=2,
        max_steps=4,
        logging_steps=2,
        learning_rate=1e-2,
        train_sampling_strategy="sequential",
    )
    seen: list[dict[str, torch.Tensor]] = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, **kwargs):
        seen.append(reference(model, inputs, trainer.args.beta, trainer.args.nll_scope))
        return compute_loss(model, inputs, **kwargs)

    trainer.compute_loss = spy
    output = trainer.train()
    logs = [log for log in trainer.recorder.logs if "loss" in log]
    assert len(seen) == 4 and len(logs) == 2
    for log, window in zip(logs, (seen[:2], seen[2:]), strict=True):
        expected = window_metrics(window)
        for name in METRIC_NAMES:
            assert log[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
        # the logged loss is the window's objective, weighted like its nll_loss and log_odds_ratio
        window_loss = expected["nll_loss"] - trainer.args.beta * expected["log_odds_ratio"]
        assert log["loss"] == pytest.approx(window_loss, rel=1e-5)
        assert log["loss"] == log["nll_loss"] - trainer.args.beta * log["log_odds_ratio"]
    # Trainer's training_loss stays the mean of the optimizer steps' losses
    assert output.training_loss == pytest.approx(sum(step["loss"].item() for step in seen) / 4, rel=1e-4)
    # the two micro-batches of a window really differ (else "last micro-batch only" would pass too)
    assert window_metrics(seen[:1])["nll_loss"] != pytest.approx(window_metrics(seen[1:2])["nll_loss"], rel=1e-3)


def test_beta_zero_still_logs_finite_logps(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, beta=0.0, max_steps=1, logging_steps=1)
    trainer.train()
    log = next(log for log in trainer.recorder.logs if "loss" in log)
    assert math.isfinite(log["logps/chosen"]) and log["logps/chosen"] < 0
    assert log["loss"] == pytest.approx(log["nll_loss"], rel=1e-5)  # no odds-ratio term


def test_preference_accuracy_compares_log_probs_so_it_means_something_at_beta_zero(tokenizer, tmp_path):
    """rewards/accuracies is the fraction of pairs with lp_c > lp_r: at beta=0 the rewards are all 0."""
    trainer = make_trainer(tokenizer, tmp_path, train=uneven_pairs(8), beta=0.0, per_device_train_batch_size=8)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    model.train()
    trainer.compute_loss(model, batch)
    metrics = trainer._pop_metrics("train")
    expected = reference(model, batch, beta=0.0, nll_scope="completion")  # counts pairs with lp_c > lp_r
    accuracy = (expected["rewards/accuracies"] / expected["pairs"]).item()
    assert 0 < accuracy < 1  # the pairs really go both ways
    assert metrics["rewards/accuracies"] == pytest.approx(accuracy)
    assert metrics["rewards/margins"] == 0.0 and metrics["rewards/chosen"] == 0.0


# ---- TRL's constructor conveniences -----------------------------------------------------------


def test_model_path_string_and_tokenizer_alias(tokenizer, tmp_path):
    path = tmp_path / "tiny"
    tiny_causal_lm(tokenizer, hidden_size=32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    # model as a local path: model and tokenizer are loaded from it
    trainer = make_trainer(tokenizer, tmp_path / "a", model=str(path), max_steps=1)
    assert isinstance(trainer.model, torch.nn.Module) and trainer.processing_class.eos_token == tokenizer.eos_token
    trainer.train()
    # tokenizer= is an alias of processing_class
    args = ORPOConfig(output_dir=str(tmp_path / "b"), **{**BASE, "max_steps": 1})
    aliased = ORPOTrainer(model=str(path), args=args, train_dataset=learnable_pairs(8), tokenizer=tokenizer)
    assert aliased.processing_class is tokenizer
    aliased.train()
    with pytest.raises(ValueError, match="processing_class or tokenizer"):
        ORPOTrainer(
            model=str(path),
            args=args,
            train_dataset=learnable_pairs(8),
            tokenizer=tokenizer,
            processing_class=copy.deepcopy(tokenizer),
        )


def test_evaluate_accepts_raw_data_and_names_metrics_by_prefix(tokenizer, tmp_path):
    trainer = make_trainer(
        tokenizer, tmp_path, eval_data={"a": learnable_pairs(4, seed=2), "b": learnable_pairs(6, seed=3)}
    )
    metrics = trainer.evaluate()
    for name in METRIC_NAMES:
        assert math.isfinite(metrics[f"eval_a_{name}"]) and math.isfinite(metrics[f"eval_b_{name}"])
        assert f"eval_{name}" not in metrics
    raw = trainer.evaluate(eval_dataset=learnable_pairs(4, seed=4), metric_key_prefix="test")
    assert all(math.isfinite(raw[f"test_{name}"]) for name in METRIC_NAMES)


# ---- gradient checkpointing and accumulation --------------------------------------------------


def _run(tokenizer, tmp_path, **overrides):
    trainer = make_trainer(
        tokenizer, tmp_path, train=uneven_pairs(8), train_sampling_strategy="sequential", logging_steps=1, **overrides
    )
    trainer.train()
    return trainer, [log for log in trainer.recorder.logs if "loss" in log]


def test_gradient_checkpointing_gives_the_same_training(tokenizer, tmp_path):
    plain, plain_logs = _run(tokenizer, tmp_path / "plain", per_device_train_batch_size=4, max_steps=2)
    ckpt, ckpt_logs = _run(
        tokenizer, tmp_path / "ckpt", per_device_train_batch_size=4, max_steps=2, gradient_checkpointing=True
    )
    assert ckpt.model.is_gradient_checkpointing
    for a, b in zip(plain_logs, ckpt_logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    final_a, final_b = params(plain.model), params(ckpt.model)
    for name in final_a:
        torch.testing.assert_close(final_a[name], final_b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optim", ["sgd", "adamw_torch"])
def test_gradient_accumulation_matches_one_big_batch(tokenizer, tmp_path, optim):
    common = {"max_steps": 1, "optim": optim, "learning_rate": 0.1 if optim == "sgd" else 1e-3, "max_grad_norm": 0.0}
    big, big_logs = _run(
        tokenizer, tmp_path / "big", per_device_train_batch_size=4, gradient_accumulation_steps=1, **common
    )
    small, small_logs = _run(
        tokenizer, tmp_path / "small", per_device_train_batch_size=2, gradient_accumulation_steps=2, **common
    )
    initial = params(tiny_causal_lm(tokenizer, hidden_size=32))
    assert big_logs[0]["loss"] == pytest.approx(small_logs[0]["loss"], rel=1e-6)
    for name in METRIC_NAMES:
        assert big_logs[0][name] == pytest.approx(small_logs[0][name], rel=1e-5, abs=1e-7), name
    big_w, small_w = params(big.model), params(small.model)
    for name in big_w:
        delta_big, delta_small = big_w[name] - initial[name], small_w[name] - initial[name]
        assert delta_big.abs().max() > 0, name
        # float32 rounding of the weights themselves is ~1e-9 here; a per-micro-batch normalisation bug is ~10%
        torch.testing.assert_close(delta_small, delta_big, rtol=1e-4, atol=1e-5 * delta_big.abs().max().item() + 1e-8)


def test_label_pad_and_padding_value_do_not_change_the_loss(tokenizer, tmp_path):
    _, default = _run(tokenizer, tmp_path / "default", per_device_train_batch_size=4, max_steps=2)
    _, custom = _run(
        tokenizer,
        tmp_path / "custom",
        per_device_train_batch_size=4,
        max_steps=2,
        label_pad_token_id=-7,
        padding_value=7,
        pad_to_multiple_of=8,
    )
    for a, b in zip(default, custom, strict=True):
        for name in ("loss", "grad_norm", *METRIC_NAMES):
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), name


# ---- nothing reported that did not happen ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"max_steps": 0}, "max_steps=0 trains no step"),
        ({"max_steps": -1, "num_train_epochs": 0}, "num_train_epochs=0 trains no step"),
        ({"learning_rate": 0.0}, "learning_rate=0 leaves the weights as they are"),
    ],
)
def test_settings_that_train_nothing_are_refused_before_the_data_is_prepared(tokenizer, tmp_path, overrides, reason):
    bad_data = [{"prompt": "Q?", "chosen": 42, "rejected": " no"}]  # preparing it would be a data error
    with pytest.raises(ValueError, match=f"^nothing would be trained: {reason}"):
        make_trainer(tokenizer, tmp_path, train=bad_data, **overrides)


def test_the_last_step_is_logged_even_between_logging_steps(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, max_steps=3, logging_steps=10)
    trainer.train()
    assert [log["step"] for log in trainer.state.log_history if "loss" in log] == [3]


def test_plain_strings_for_a_chat_tokenizer_are_counted_and_warned_about(tokenizer, tmp_path, caplog):
    from orpo.data import prepare_preference_dataset
    from orpo.demo.tiny import build_tokenizer

    args = ORPOConfig(output_dir=str(tmp_path), report_to=[])
    rows = learnable_pairs(6)
    with caplog.at_level("WARNING", logger="orpo.data.prepare"):
        _, report = prepare_preference_dataset(rows, tokenizer, args)
    assert report.untemplated == 6 and "6 plain-text rows without the chat template" in report.summary()
    assert caplog.messages == [
        "train: 6 of 6 rows are plain strings, trained without the tokenizer's chat template, while orpo generate "
        "and orpo chat apply it (orpo generate --no-chat-template does not); give prompt/chosen/rejected as "
        "message lists to train with the template"
    ]
    plain_tokenizer = build_tokenizer(["Question about sky grass yes no"], chat_template=None)
    assert prepare_preference_dataset(rows, plain_tokenizer, args)[1].untemplated == 0
    chat_rows = [
        {"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": r["chosen"], "rejected": r["rejected"]}
        for r in rows
    ]
    assert prepare_preference_dataset(chat_rows, tokenizer, args)[1].untemplated == 0


def test_a_model_folder_without_tokenizer_files_says_so(tokenizer, tmp_path):
    from orpo.models.loading import load_tokenizer

    tiny_causal_lm(tokenizer, hidden_size=32).save_pretrained(tmp_path)
    with pytest.raises(OSError) as info:
        load_tokenizer(str(tmp_path))
    assert str(info.value) == (
        f"no tokenizer files in {tmp_path} (it has config.json, generation_config.json, model.safetensors): save the "
        "tokenizer there too (tokenizer.save_pretrained), or load the model and its tokenizer from where both are"
    )
