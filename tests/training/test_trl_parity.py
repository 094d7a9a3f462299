"""The behaviours TRL's own ORPO tests check, tested on orpo's tiny local models (nothing is downloaded).

Remote code is a local folder whose config.json has an ``auto_map`` into a ``configuration_*.py`` and
``modeling_*.py`` written beside it, as a hub repository with custom code has.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from orpo import ORPOConfig, ORPOTrainer
from orpo.demo.tiny import build_seq2seq_tokenizer, tiny_causal_lm, tiny_seq2seq_lm
from orpo.models.loading import HubSource, load_model, load_tokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def preference_rows(kind: str, n: int = 8) -> list[dict]:
    """``n`` rows in one of TRL's four preference formats."""
    rows = []
    for i in range(n):
        question, good, bad = f"What colour is the sky {i}?", f" The sky is blue {i}.", f" No {i}."
        if kind == "standard":
            rows.append({"prompt": question, "chosen": good, "rejected": bad})
        elif kind == "implicit":
            rows.append({"chosen": question + good, "rejected": question + bad})
        elif kind == "conversational":
            rows.append(
                {
                    "prompt": [{"role": "user", "content": question}],
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}],
                }
            )
        else:  # conversational, implicit prompt
            user = {"role": "user", "content": question}
            rows.append(
                {
                    "chosen": [user, {"role": "assistant", "content": good}],
                    "rejected": [user, {"role": "assistant", "content": bad}],
                }
            )
    return rows


def config(tmp_path: Path, **overrides) -> ORPOConfig:
    values = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 2,
        "max_steps": 3,
        "learning_rate": 0.9,
        "beta": 0.1,
        "report_to": "none",
        "save_strategy": "no",
        "dataloader_pin_memory": False,
    }
    return ORPOConfig(**{**values, **overrides})


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def unchanged(before: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if name in before and torch.equal(before[name], p)]


@pytest.fixture
def saved_model(tokenizer, tmp_path) -> Path:
    """A tiny causal LM and its tokenizer saved in one folder, as a hub repository is."""
    path = tmp_path / "tiny"
    tiny_causal_lm(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---- training on each data format ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["standard", "conversational"])
def test_causal_training_changes_every_parameter(tokenizer, tmp_path, kind):
    model = tiny_causal_lm(tokenizer)
    data = Dataset.from_list(preference_rows(kind))
    trainer = ORPOTrainer(
        model=model,
        args=config(tmp_path, eval_strategy="steps", eval_steps=2),
        processing_class=tokenizer,
        train_dataset=data,
        eval_dataset=data.select(range(4)),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] > 0
    assert unchanged(before, trainer.model) == []
    assert any("eval_loss" in entry for entry in trainer.state.log_history)


def test_encoder_decoder_training_on_implicit_prompt_data(tmp_path):
    rows = preference_rows("implicit")
    tokenizer = build_seq2seq_tokenizer([r["chosen"] + r["rejected"] for r in rows] * 4, style="t5")
    trainer = ORPOTrainer(
        model=tiny_seq2seq_lm(tokenizer, "t5"),
        args=config(tmp_path, is_encoder_decoder=True, eval_strategy="steps", eval_steps=2),
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:4]),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.model_kind.name == "seq2seq"
    assert trainer.state.log_history[-1]["train_loss"] > 0
    assert unchanged(before, trainer.model) == []


@pytest.mark.parametrize("kind", ["standard", "implicit", "conversational", "conversational_implicit"])
def test_lora_changes_only_the_adapter(tokenizer, tmp_path, kind):
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    data = Dataset.from_list(preference_rows(kind))
    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=config(tmp_path, gradient_accumulation_steps=2, eval_strategy="steps", eval_steps=2),
        processing_class=tokenizer,
        train_dataset=data,
        eval_dataset=data.select(range(4)),
        peft_config=lora,
    )
    before = snapshot(trainer.model)
    trainer.train()
    frozen = unchanged(before, trainer.model)
    adapter = [name for name in before if "lora_" in name]
    assert adapter and not set(adapter) & set(frozen)
    assert set(frozen) == set(before) - set(adapter)


# ---- the processing class ------------------------------------------------------------------------
def test_processing_class_is_loaded_from_the_models_name_or_path(saved_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(saved_model)
    trainer = ORPOTrainer(
        model=model, args=config(tmp_path), train_dataset=Dataset.from_list(preference_rows("standard"))
    )
    expected = load_tokenizer(str(saved_model))
    assert trainer.processing_class.get_vocab() == expected.get_vocab()
    assert trainer.processing_class.chat_template == expected.chat_template
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] > 0


def test_a_model_without_a_name_and_no_processing_class_is_one_clear_error(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"no name_or_path to load its tokenizer from; pass processing_class"):
        ORPOTrainer(
            model=tiny_causal_lm(tokenizer),
            args=config(tmp_path),
            train_dataset=Dataset.from_list(preference_rows("standard")),
        )


def test_a_model_whose_folder_has_no_tokenizer_is_one_clear_error(tokenizer, tmp_path):
    path = tmp_path / "weights-only"
    tiny_causal_lm(tokenizer).save_pretrained(path)
    with pytest.raises(ValueError, match=r"none could be loaded from the model's name_or_path .*weights-only"):
        ORPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(path),
            args=config(tmp_path),
            train_dataset=Dataset.from_list(preference_rows("standard")),
        )


# ---- metrics and evaluation ------------------------------------------------------------------------
def test_compute_metrics_values_are_logged_with_the_eval_prefix(tokenizer, tmp_path):
    data = Dataset.from_list(preference_rows("standard"))
    seen = []

    def metrics(prediction):
        seen.append(prediction.predictions.shape)
        return {"test": 0.25}

    trainer = ORPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=config(tmp_path, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=2),
        processing_class=tokenizer,
        train_dataset=data,
        eval_dataset=data.select(range(4)),
        compute_metrics=metrics,
    )
    trainer.train()
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evals) == 3 and all(entry["eval_test"] == 0.25 for entry in evals)
    assert seen == [(4, 2)] * 3  # chosen and rejected rewards of the 4 eval pairs


def test_eval_is_logged_at_a_step_no_training_log_fell_due(saved_model, tmp_path):
    data = Dataset.from_list(preference_rows("standard"))
    trainer = ORPOTrainer(
        model=str(saved_model),
        args=config(tmp_path, eval_strategy="steps", eval_steps=3, logging_steps=10, learning_rate=1e-3),
        train_dataset=data,
        eval_dataset=data.select(range(4)),
    )
    trainer.train()
    # No training log falls due before the evaluation at step 3 (logging_steps=10); the last step is always
    # logged (so a run's summary is never empty), and the evaluation comes right after it, on its own.
    train, evaluation = trainer.state.log_history[:2]
    assert train["step"] == 3 and "loss" in train and "eval_loss" not in train
    assert evaluation["eval_loss"] > 0 and evaluation["step"] == 3 and "loss" not in evaluation


# ---- loading options ------------------------------------------------------------------------------
def test_model_init_kwargs_dtype_float16_keeps_float16_parameters_that_change(saved_model, tmp_path):
    trainer = ORPOTrainer(
        model=str(saved_model),
        args=config(tmp_path, model_init_kwargs={"dtype": torch.float16}, learning_rate=0.1),
        train_dataset=Dataset.from_list(preference_rows("standard")),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float16}
    assert [name for name in unchanged(before, trainer.model) if "norm" not in name] == []


def test_gradient_checkpointing_changes_every_parameter(saved_model, tmp_path):
    trainer = ORPOTrainer(
        model=str(saved_model),
        args=config(tmp_path, gradient_checkpointing=True, learning_rate=0.1),
        train_dataset=Dataset.from_list(preference_rows("standard")),
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.model.is_gradient_checkpointing
    assert unchanged(before, trainer.model) == []


@pytest.mark.parametrize("with_peft", [False, True])
def test_the_model_is_tagged_orpo_and_not_trl(saved_model, tmp_path, with_peft):
    """orpo tags what it trains "orpo"; it is not TRL, so it does not add TRL's "trl" tag."""
    lora = LoraConfig(r=4, target_modules=TARGETS, task_type="CAUSAL_LM") if with_peft else None
    trainer = ORPOTrainer(
        model=str(saved_model),
        args=config(tmp_path),
        train_dataset=Dataset.from_list(preference_rows("standard")),
        peft_config=lora,
    )
    assert "orpo" in trainer.model.model_tags and "trl" not in trainer.model.model_tags


# ---- remote code -----------------------------------------------------------------------------------
CONFIGURATION = """
from transformers import LlamaConfig


class RemoteConfig(LlamaConfig):
    model_type = "remote-tiny"
"""

MODELING = """
from transformers import LlamaForCausalLM

from .configuration_remote import RemoteConfig


class RemoteForCausalLM(LlamaForCausalLM):
    config_class = RemoteConfig
"""


@pytest.fixture
def remote_model(saved_model) -> Path:
    """``saved_model`` turned into a model with custom code (its config's auto_map)."""
    (saved_model / "configuration_remote.py").write_text(CONFIGURATION, encoding="utf-8")
    (saved_model / "modeling_remote.py").write_text(MODELING, encoding="utf-8")
    config_file = saved_model / "config.json"
    values = json.loads(config_file.read_text(encoding="utf-8"))
    values.update(
        model_type="remote-tiny",
        architectures=["RemoteForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_remote.RemoteConfig",
            "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM",
        },
    )
    config_file.write_text(json.dumps(values), encoding="utf-8")
    return saved_model


def test_remote_code_is_refused_unless_trust_remote_code(remote_model, tokenizer, tmp_path):
    data = Dataset.from_list(preference_rows("standard"))
    with pytest.raises(ValueError, match=r"contains custom code.*trust_remote_code=True.*--trust-remote-code"):
        ORPOTrainer(model=str(remote_model), args=config(tmp_path), processing_class=tokenizer, train_dataset=data)
    trainer = ORPOTrainer(
        model=str(remote_model),
        args=config(tmp_path, trust_remote_code=True),
        processing_class=tokenizer,
        train_dataset=data,
    )
    assert type(trainer.model).__name__ == "RemoteForCausalLM"
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] > 0


def record_hub_loads(monkeypatch) -> list[tuple[str, str, dict]]:
    """(class, path, its trust_remote_code and revision) of each config, tokenizer and model load orpo makes (a
    local folder has no revisions, so the calls are recorded, then made without one)."""
    import orpo.models.loading as modeling

    calls: list[tuple[str, str, dict]] = []
    depth = [0]  # orpo's own calls only, not those transformers makes inside them

    def recording(name, real):
        def load(path, **kwargs):
            if depth[0] == 0:
                calls.append((name, str(path), {k: kwargs.get(k) for k in ("trust_remote_code", "revision")}))
            kwargs.pop("revision", None)
            depth[0] += 1
            try:
                return real(path, **kwargs)
            finally:
                depth[0] -= 1

        return load

    for cls in (modeling.AutoConfig, modeling.AutoTokenizer, AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", recording(cls.__name__, cls.from_pretrained))
    return calls


def test_trust_remote_code_and_revision_reach_every_load(remote_model, monkeypatch):
    """The config probe, the model and the tokenizer all get the same source."""
    calls = record_hub_loads(monkeypatch)
    source = {"trust_remote_code": True, "revision": "v1"}
    model = load_model(str(remote_model), {"revision": "v1"}, trust_remote_code=True)
    load_tokenizer(str(remote_model), source=HubSource(True, "v1"))
    assert type(model).__name__ == "RemoteForCausalLM"
    assert {name for name, _, _ in calls} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(kwargs == source for _, _, kwargs in calls), calls


def test_the_trainer_and_the_run_engine_load_through_one_loader(remote_model, tmp_path, monkeypatch):
    """``ORPOTrainer(model="path")`` and ``build_trainer`` (``orpo train``) call the one loader and make the
    same loads, in the same order, with the same revision and trust_remote_code."""
    import orpo.models.loading as modeling
    import orpo.training.trainer
    from orpo import ModelArguments
    from orpo.training.run import build_trainer

    calls = record_hub_loads(monkeypatch)
    given: list[str] = []
    real_loader = modeling.load_model_and_processor

    def loader(model, *args, **kwargs):
        given.append(model if isinstance(model, str) else "a model object")
        return real_loader(model, *args, **kwargs)

    monkeypatch.setattr(modeling, "load_model_and_processor", loader)
    monkeypatch.setattr(orpo.training.trainer, "load_model_and_processor", loader)
    data = Dataset.from_list(preference_rows("standard"))
    by_name = config(tmp_path, trust_remote_code=True, model_init_kwargs={"revision": "v1"})
    trainer = ORPOTrainer(model=str(remote_model), args=by_name, train_dataset=data)
    trainer_loads = list(calls)
    calls.clear()
    model_args = ModelArguments(model_name_or_path=str(remote_model), model_revision="v1")
    run = build_trainer(model_args, None, config(tmp_path, trust_remote_code=True), train_dataset=data, console=False)

    source = {"trust_remote_code": True, "revision": "v1"}
    path = str(remote_model)
    assert trainer_loads == [
        ("AutoConfig", path, source),  # what the saved model is: a tokenizer, or a vision processor
        ("AutoTokenizer", path, source),
        ("AutoConfig", path, source),  # which auto class loads the model
        ("AutoModelForCausalLM", path, source),
    ]
    assert calls == trainer_loads
    # the run engine's trainer gets the loaded objects: its own pass loads nothing more
    assert given == [path, path, "a model object"]
    for built in (trainer, run):
        assert type(built.model).__name__ == "RemoteForCausalLM" and built.model_kind.name == "causal"
        assert built.processing_class.get_vocab() == trainer.processing_class.get_vocab()


def test_the_resume_check_reads_the_model_config_with_the_same_source(remote_model, tmp_path, monkeypatch):
    """A full checkpoint is checked against the model's config before any data is read: that config read gets
    the run's revision (``model_init_kwargs``) and trust_remote_code too, and refuses remote code without it."""
    from safetensors.torch import save_file

    from orpo import ModelArguments
    from orpo.training.reliability.commit import CheckpointCommitter
    from orpo.training.run import check_resume

    saved = json.loads((remote_model / "config.json").read_text(encoding="utf-8"))

    def write(staging):
        Path(staging).mkdir()
        save_file({"weight": torch.zeros(1)}, str(Path(staging) / "model.safetensors"))
        (Path(staging) / "trainer_state.json").write_text("{}")
        other = {**saved, "hidden_size": saved["hidden_size"] * 2}
        (Path(staging) / "config.json").write_text(json.dumps(other), encoding="utf-8")

    CheckpointCommitter(lambda: None, True, lambda: "").save(str(tmp_path / "out"), 2, write)
    model_args = ModelArguments(model_name_or_path=str(remote_model))
    resume = {"resume_from_checkpoint": "latest", "model_init_kwargs": {"revision": "v1"}}
    with pytest.raises(ValueError, match=r"contains custom code.*trust_remote_code=True"):
        check_resume(model_args, config(tmp_path, **resume))
    calls = record_hub_loads(monkeypatch)
    with pytest.raises(ValueError, match=r"checkpoint-2 was trained from another model \(hidden_size"):
        check_resume(model_args, config(tmp_path, trust_remote_code=True, **resume))
    assert calls == [("AutoConfig", str(remote_model), {"trust_remote_code": True, "revision": "v1"})]


def test_the_cli_names_trust_remote_code_for_a_remote_model(remote_model, tmp_path):
    from orpo.models.generation import load_for_inference

    with pytest.raises(ValueError, match=r"--trust-remote-code"):
        load_for_inference(str(remote_model), device="cpu")
    model, _ = load_for_inference(str(remote_model), device="cpu", source=HubSource(trust_remote_code=True))
    assert type(model).__name__ == "RemoteForCausalLM"


def test_generate_chat_and_merge_load_through_the_one_loader(remote_model, tmp_path, monkeypatch):
    """``orpo generate|chat`` (load_for_inference) and ``orpo merge`` (merge_adapter) call the one loader, for a
    saved model and for LoRA adapters on it: every load gets the revision and trust_remote_code, an adapter's
    model is its base, its tokenizer the one saved beside it, else the base's."""
    import shutil

    from peft import get_peft_model

    import orpo.models.loading as modeling
    from orpo.demo.tiny import build_tokenizer
    from orpo.models.generation import load_for_inference, merge_adapter

    path = str(remote_model)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(load_model(path, trust_remote_code=True), lora).save_pretrained(tmp_path / "bare")
    own, bare = tmp_path / "own", str(tmp_path / "bare")
    shutil.copytree(bare, own)
    beside = build_tokenizer(["another vocabulary entirely"], vocab_size=300)
    beside.save_pretrained(own)
    given: list[tuple[str, str | None]] = []
    real_loader = modeling.load_model_and_processor

    def loader(model, *args, **kwargs):
        given.append((model, kwargs.get("tokenizer_from")))
        return real_loader(model, *args, **kwargs)

    monkeypatch.setattr(modeling, "load_model_and_processor", loader)
    calls = record_hub_loads(monkeypatch)
    source = HubSource(trust_remote_code=True, revision="v1")
    model, tokenizer = load_for_inference(path, device="cpu", source=source)
    on_bare, bare_tokenizer = load_for_inference(bare, device="cpu", source=source)
    on_own, own_tokenizer = load_for_inference(str(own), device="cpu", source=source)
    merged = merge_adapter(str(own), str(tmp_path / "merged"), source=source)

    assert given == [(path, path), (path, path), (path, str(own)), (path, str(own))]
    hub = {"trust_remote_code": True, "revision": "v1"}
    model_loads = [("AutoConfig", path, hub), ("AutoModelForCausalLM", path, hub)]
    own_loads = [("AutoConfig", str(own), hub), ("AutoTokenizer", str(own), hub), *model_loads]
    base_loads = [("AutoConfig", path, hub), ("AutoTokenizer", path, hub), *model_loads]
    assert calls == base_loads + base_loads + own_loads + own_loads
    for loaded in (model, on_bare.base_model.model, on_own.base_model.model):
        assert type(loaded).__name__ == "RemoteForCausalLM" and not loaded.training
    assert tokenizer.get_vocab() == bare_tokenizer.get_vocab() != own_tokenizer.get_vocab() == beside.get_vocab()
    assert merged == str(tmp_path / "merged")
    assert AutoTokenizer.from_pretrained(merged).get_vocab() == beside.get_vocab()


def test_an_adapter_whose_base_has_no_tokenizer_names_the_base(saved_model, tmp_path):
    """Neither beside the adapter nor in its base: the error names the base and what it holds instead."""
    from peft import get_peft_model

    from orpo.models.generation import load_for_inference, merge_adapter

    base = tmp_path / "weights-only"
    base.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (base / name).write_bytes((saved_model / name).read_bytes())
    lora = LoraConfig(r=4, target_modules=TARGETS, task_type="CAUSAL_LM")
    get_peft_model(load_model(str(base)), lora).save_pretrained(tmp_path / "adapter")
    message = (
        f"cannot load the tokenizer of {str(base)!r}: no tokenizer files in {base} (it has config.json, "
        "generation_config.json, model.safetensors): save the tokenizer there too"
    )
    with pytest.raises(OSError) as inference:
        load_for_inference(str(tmp_path / "adapter"), device="cpu")
    with pytest.raises(OSError) as merge:
        merge_adapter(str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert str(inference.value).startswith(message) and str(merge.value).startswith(message)
    assert not (tmp_path / "merged").exists()
