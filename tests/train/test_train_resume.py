"""xlit-train's resume check (xlit_jax/train/record.py): a workdir resumes only with the settings that
determine its result; those that may change (docs/training.md) do. xlit-train's own refusal, end to end, is
in test_train_loop.py."""

import re
from pathlib import Path

import pytest

from xlit_jax.errors import UserError
from xlit_jax.io.checkpoints import save_model_info
from xlit_jax.models.presets import get_preset
from xlit_jax.train.record import EXPERIMENT_FILE, check_resume, save_experiment

from support import tiny_config


def config(workdir: Path, **changes):
    return tiny_config(workdir / "chats.jsonl", **changes)  # 8 steps, linear schedule, lr 1e-3


def saved(workdir: Path, step: int = 8, **changes) -> Path:
    """`workdir` as xlit-train leaves it once it saved `step` of config(**changes) (the check reads only the
    record and the checkpoint folders' names)."""
    save_experiment(config(workdir, **changes), workdir)
    (workdir / "checkpoints" / str(step)).mkdir(parents=True)
    return workdir


def refusal(workdir: Path, differences: str) -> str:
    return re.escape(f"{workdir}: was trained with other settings: {differences}; rerun with the recorded settings "
                     f"({workdir / EXPERIMENT_FILE}) or use a new workdir")


def test_the_same_settings_and_those_that_may_change_resume(tmp_path):
    workdir = saved(tmp_path)
    check_resume(config(workdir), workdir)
    check_resume(config(workdir, **{"train.log_every": 4, "train.save_every": 4, "train.eval_every": 2,
                                    "train.eval_batches": 1, "train.export_hf": True, "model.attention": "xla",
                                    "mesh.fsdp": 1, "train.eval_harness": "xnli_fr", "train.harness_limit": 4,
                                    "train.harness_include_path": "tasks"}), workdir)


def test_settings_that_change_the_result_are_one_line_naming_each(tmp_path):
    workdir = saved(tmp_path)
    with pytest.raises(UserError, match=f"^{refusal(workdir, 'lora.rank 0 -> 16, optim.lr 0.001 -> 0.0001')}$"):
        check_resume(config(workdir, **{"optim.lr": 1e-4, "lora.rank": 16}), workdir)
    with pytest.raises(UserError, match=re.escape(f'data.sources ["chat:{workdir}/chats.jsonl"] -> ["b"]; rerun')):
        check_resume(config(workdir, **{"data.sources": ("b",)}), workdir)


def test_max_steps_changes_only_where_the_schedule_does_not_depend_on_it(tmp_path):
    linear = saved(tmp_path / "linear")
    why = "the pasero schedule's learning rate at every step depends on it (with warmup_steps=0)"
    with pytest.raises(UserError, match=f"^{refusal(linear, f'train.max_steps 8 -> 20 ({why})')}$"):
        check_resume(config(linear, **{"train.max_steps": 20}), linear)
    inverse_sqrt = saved(tmp_path / "inverse_sqrt", **{"optim.schedule": "inverse_sqrt"})
    check_resume(config(inverse_sqrt, **{"optim.schedule": "inverse_sqrt", "train.max_steps": 20}), inverse_sqrt)
    below = "below the latest checkpoint, step 8"
    with pytest.raises(UserError, match=refusal(inverse_sqrt, f"train.max_steps 8 -> 4 ({below})")):
        check_resume(config(inverse_sqrt, **{"optim.schedule": "inverse_sqrt", "train.max_steps": 4}), inverse_sqrt)


def test_a_workdir_with_nothing_to_resume_takes_any_settings_and_a_lora_base_is_something(tmp_path):
    save_experiment(config(tmp_path), tmp_path)  # a run killed before its first checkpoint
    check_resume(config(tmp_path, **{"optim.lr": 1e-4}), tmp_path)
    (tmp_path / "frozen").mkdir()  # ... that saved its LoRA base, which a rerun would take as it is
    with pytest.raises(UserError, match="optim.lr 0.001 -> 0.0001"):
        check_resume(config(tmp_path, **{"optim.lr": 1e-4}), tmp_path)


def test_without_experiment_json_the_lora_settings_are_checked_against_the_model_record(tmp_path, caplog):
    (tmp_path / "checkpoints" / "8").mkdir(parents=True)
    save_model_info(tmp_path, get_preset("tiny"))  # full fine-tuning, as train() from Python records it
    check_resume(config(tmp_path, **{"optim.lr": 1e-4}), tmp_path)  # not recorded: not checked
    assert "only the LoRA settings are checked" in caplog.text
    model = tmp_path / "model" / "llama_config.json"
    with pytest.raises(UserError, match=re.escape(f"lora_rank 0 -> 16, lora_alpha 32.0 -> 8.0; rerun with the "
                                                  f"recorded settings ({model})")):
        check_resume(config(tmp_path, **{"lora.rank": 16, "lora.alpha": 8.0}), tmp_path)


def test_an_unreadable_record_is_one_line_naming_it(tmp_path):
    workdir = saved(tmp_path)
    (workdir / EXPERIMENT_FILE).write_text('{"model": ')
    with pytest.raises(UserError, match=rf"^{re.escape(str(workdir / EXPERIMENT_FILE))}: cannot be read"):
        check_resume(config(workdir), workdir)
