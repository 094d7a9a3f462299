"""``--config zephyr-141b-orpo``: the alignment-handbook's flagship ORPO recipe, shipped by name with its launch
config, and run on CPU on a tiny Mixtral with only the machine's keys overridden, in one process and in two.

The overrides are what this machine and this sandbox change, nothing of the recipe's training: where the model
and data are, bf16 and flash-attention off (CPU), the bitsandbytes optimizer (CUDA only), no hub push and no
trackers (offline), one data process, and a run of 2 steps on short pairs.  FSDP is the launch config's, not the
recipe's, so the CPU runs are plain (one process) and DDP over gloo (two).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _cli_support import ENV, orpo_command, run
from orpo.cli import main
from orpo.cli.train import train_sources
from orpo.config import shipped
from orpo.config.resolve import resolve_values

NAME = "zephyr-141b-orpo"
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
#: recipes/zephyr-141b-A35b/orpo/config_full.yaml of huggingface/alignment-handbook, every key
HANDBOOK = {
    "model_name_or_path": "mistral-community/Mixtral-8x22B-v0.1",
    "model_revision": "main",
    "torch_dtype": "bfloat16",
    "attn_implementation": "flash_attention_2",
    "chat_template": ZEPHYR_TEMPLATE,
    "dataset_name": "argilla/distilabel-capybara-dpo-7k-binarized",
    "dataset_train_split": "train",
    "dataset_num_proc": 8,
    "bf16": True,
    "beta": 0.05,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": True,
    "gradient_checkpointing_kwargs": {"use_reentrant": True},
    "hub_model_id": "zephyr-orpo-141b-A35b",
    "learning_rate": 5.0e-6,
    "log_level": "info",
    "logging_steps": 10,
    "lr_scheduler_type": "inverse_sqrt",
    "max_length": 2048,
    "max_prompt_length": 1792,
    "num_train_epochs": 3,
    "optim": "adamw_bnb_8bit",
    "output_dir": "data/zephyr-orpo-141b-A35b",
    "per_device_train_batch_size": 1,
    "push_to_hub": True,
    "report_to": ["tensorboard", "wandb"],
    "save_strategy": "no",
    "seed": 42,
    "warmup_steps": 100,
}
MACHINE = {  # recipe key -> this machine's value
    "model_name_or_path": "model",
    "dataset_name": "capybara.jsonl",
    "output_dir": "out",
    "bf16": False,
    "torch_dtype": "float32",
    "attn_implementation": "sdpa",
    "optim": "adamw_torch",
    "push_to_hub": False,
    "report_to": "none",
    "dataset_num_proc": 1,
    "max_length": 96,
    "max_prompt_length": 48,
}
FLAGS = [
    "--config", NAME,
    *(item for key, value in MACHINE.items() for item in (f"--{key}", *map(str, value if isinstance(value, list) else [value]))),
    "--max_steps", "2",
]  # fmt: skip


def test_the_recipe_is_the_handbooks():
    assert yaml.safe_load(shipped.recipe_file(NAME).read_text(encoding="utf-8")) == HANDBOOK


def test_recipe_and_launch_config_are_shipped_by_name(capsys):
    assert main(["config", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert f"  {NAME}" in listing and "  fsdp-multinode" in listing
    launch = yaml.safe_load(shipped.launch_file("fsdp-multinode").read_text(encoding="utf-8"))
    assert (launch["distributed_type"], launch["num_machines"], launch["num_processes"]) == ("FSDP", 4, 32)
    assert (launch["mixed_precision"], launch["rdzv_backend"]) == ("bf16", "c10d")
    assert launch["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "MixtralDecoderLayer"
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(shipped.launch_file("fsdp-multinode"))).num_machines == 4  # accelerate reads it


def test_only_the_machine_keys_change():
    values, _ = resolve_values(*train_sources(FLAGS)[0])
    recipe_names = {"torch_dtype": "dtype"}  # the handbook's spelling of orpo's field
    for key, expected in HANDBOOK.items():
        field = recipe_names.get(key, key)
        given = MACHINE.get(key, expected)
        assert values[field] == given, key
    assert values["max_steps"] == 2
    assert values["chat_template"] == ZEPHYR_TEMPLATE and values["lr_scheduler_type"] == "inverse_sqrt"


def _tiny_mixtral(workspace: Path) -> dict[str, torch.Tensor]:
    from transformers import MixtralConfig, MixtralForCausalLM

    from orpo.demo.tiny import build_tokenizer

    rows = _capybara_rows(12)
    tokenizer = build_tokenizer([json.dumps(row) for row in rows] + [ZEPHYR_TEMPLATE], eos_token="</s>")
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    model = MixtralForCausalLM(config)
    model.save_pretrained(str(workspace / "model"))
    tokenizer.save_pretrained(str(workspace / "model"))
    with (workspace / "capybara.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _capybara_rows(n: int) -> list[dict]:
    """distilabel-capybara-dpo-7k-binarized's shape: a prompt, full conversations as chosen/rejected, ratings."""
    rows = []
    for i in range(n):
        prompt = f"What is {i} plus {i}?"
        turn = [{"role": "user", "content": prompt}]
        rows.append({
            "source": "tiny", "prompt": prompt,
            "chosen": [*turn, {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
            "chosen_rating": 5, "chosen_model": "a",
            "rejected": [*turn, {"role": "assistant", "content": "No idea, go away."}],
            "rejected_rating": 1, "rejected_model": "b",
        })  # fmt: skip
    return rows


def _loaded(out: Path, initial: dict[str, torch.Tensor]) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_local_experts == 4
    state = model.state_dict()
    assert state.keys() == initial.keys()
    assert all(torch.isfinite(value).all() for value in state.values())
    assert max((state[k] - initial[k]).abs().max().item() for k in state) > 0  # trained
    return json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))


def test_the_recipe_trains_a_tiny_mixtral_in_one_process(tmp_path):
    initial = _tiny_mixtral(tmp_path)
    result = run(orpo_command("train", *FLAGS), tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    state = _loaded(tmp_path / "out", initial)
    # 12 pairs, 1 per step: 2 steps are 1/6 of an epoch
    assert (state["global_step"], state["epoch"]) == (2, pytest.approx(2 / 12))
    assert (tmp_path / "out" / "chat_template.jinja").read_text(encoding="utf-8") == ZEPHYR_TEMPLATE
    recipe = yaml.safe_load((tmp_path / "out" / "orpo_recipe.yaml").read_text(encoding="utf-8"))
    assert (recipe["beta"], recipe["learning_rate"], recipe["hub_model_id"]) == (0.05, 5e-6, "zephyr-orpo-141b-A35b")


@pytest.mark.slow
def test_the_recipe_trains_a_tiny_mixtral_in_two_processes(tmp_path):
    initial = _tiny_mixtral(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "orpo"]
    result = subprocess.run(
        [*command, "train", *FLAGS], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=500
    )
    assert result.returncode == 0, result.stderr[-4000:]
    state = _loaded(tmp_path / "out", initial)
    # 2 processes x 1 pair per step: 2 steps are 4 of the 12 pairs, twice one process's share
    assert (state["global_step"], state["epoch"]) == (2, pytest.approx(4 / 12))
    assert (result.stdout + result.stderr).count("ORPO training summary") == 1
