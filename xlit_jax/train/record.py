"""What a training workdir records of its run (WORKDIR/experiment.json), and the check that a rerun resumes
it only with the settings that made it (docs/training.md, "Resuming with other settings").

A resumed run takes its model from its own record (model/llama_config.json, model/lora.json) and its position
from the checkpoint, so without this check a config of another method, rank, data or schedule would be half applied
(a LoRA config into a full fine-tuning workdir trains full fine-tuning) while experiment.json was rewritten
to claim it. The check reads small JSON files only, so the binary runs it before any weights are loaded.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
from pathlib import Path

from xlit_jax.errors import UserError
from xlit_jax.io.checkpoints import CHECKPOINTS_DIR, CONFIG_FILE, FROZEN_DIR, LORA_FILE, MODEL_DIR, read_lora
from xlit_jax.io.files import atomic_write_text
from xlit_jax.models.lora import LoraConfig
from xlit_jax.train import optim
from xlit_jax.train.loop import lora_config

EXPERIMENT_FILE = "experiment.json"
# Settings a resumed run may change (section.field globs): they do not change the weights of any step, only
# how often the run logs, saves and evaluates, what it exports, and how it uses the machine (the attention
# kernel, the mesh, the processes). Every other field must match the record; train.max_steps has its own
# rule (_max_steps_problem). docs/training.md lists these.
RESUMABLE = ("model.hub_name", "model.attention", "data.eval_sources", "train.log_every", "train.save_every",
             "train.keep", "train.async_checkpoint", "train.peak_flops", "train.tensorboard", "train.export_hf",
             "train.export_peft", "train.eval_every", "train.eval_batches", "train.probe_*", "train.stop_below",
             "train.stop_rounds", "train.eval_harness", "train.harness_*", "mesh.*", "distributed.*")


def may_change(field: str) -> bool:
    """Whether the config field `section.name` may differ from the record on resume."""
    return any(fnmatch.fnmatchcase(field, pattern) for pattern in RESUMABLE)


def settings(cfg) -> dict:
    """The config's fields as {"section.name": value}, as experiment.json holds them (tuples as lists)."""
    return _flatten(json.loads(cfg.to_json_best_effort()))


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        flat |= _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


def save_experiment(cfg, workdir: str | Path) -> None:
    """Record the run's config in WORKDIR/experiment.json (after check_resume passed: it then describes the
    run that follows)."""
    atomic_write_text(Path(workdir) / EXPERIMENT_FILE, cfg.to_json_best_effort(indent=2))


def latest_checkpoint(workdir: str | Path) -> int | None:
    return max((int(p.name) for p in (Path(workdir) / CHECKPOINTS_DIR).glob("*") if p.name.isdigit()), default=None)


def check_resume(cfg, workdir: str | Path) -> None:
    """A UserError, one line naming each differing field (recorded -> now), when `workdir` holds a run to
    resume (a checkpoint, or the LoRA base a run saves before its first one) and `cfg` differs from that
    run's record in a field that determines the result. A workdir without experiment.json (made by older
    code, or by train() from Python) has only its model record: the LoRA settings are checked against it."""
    workdir = Path(workdir)
    step = latest_checkpoint(workdir)
    if step is None and not (workdir / FROZEN_DIR).is_dir():
        return  # nothing to resume: the run starts afresh and rewrites every record
    record = workdir / EXPERIMENT_FILE
    if record.is_file():
        differences = _differences(_read(record), settings(cfg), step)
    else:
        record, differences = _lora_differences(cfg, workdir)
    if differences:
        raise UserError(f"{workdir}: was trained with other settings: {', '.join(differences)}; rerun with the "
                        f"recorded settings ({record}) or use a new workdir")


def _read(path: Path) -> dict:
    try:
        return _flatten(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError, RecursionError) as e:
        raise UserError(f"{path}: cannot be read ({e}); it records the settings of the run in this workdir, "
                        "needed to resume it: restore it, or use a new workdir") from None


def _show(value) -> str:
    return json.dumps(value)


def _differences(recorded: dict, now: dict, step: int | None) -> list[str]:
    """'field before -> after' for each field that may not change. A field the record lacks (the config
    gained it since) is not compared."""
    differences = []
    for field, after in now.items():
        before = recorded.get(field, after)
        if field == "train.max_steps":
            why = _max_steps_problem(before, after, step, now["optim.schedule"], now["optim.warmup_steps"])
            if why:
                differences.append(f"{field} {_show(before)} -> {_show(after)} ({why})")
        elif before != after and not may_change(field):
            differences.append(f"{field} {_show(before)} -> {_show(after)}")
    return differences


def _max_steps_problem(before: int, after: int, step: int | None, schedule: str, warmup_steps: int) -> str:
    """Why train.max_steps may not go from `before` to `after` on a run saved at `step` ("" if it may): the
    learning rate of every step of pasero's linear decay (warm-up 0) depends on max_steps; the others' do not."""
    if step is not None and after < step:
        return f"below the latest checkpoint, step {step}"
    if after != before and optim.depends_on_max_steps(schedule, warmup_steps):
        return f"the {schedule} schedule's learning rate at every step depends on it (with warmup_steps=0)"
    return ""


def _lora_differences(cfg, workdir: Path) -> tuple[Path, list[str]]:
    """(the model record, its LoRA fields that `cfg` changes): all a workdir without experiment.json says. The
    record is model/lora.json, or llama_config.json where there is none (full fine-tuning, or older code)."""
    record = workdir / MODEL_DIR / LORA_FILE
    record = record if record.is_file() else workdir / MODEL_DIR / CONFIG_FILE
    logging.warning("%s: no %s (made by older code, or by train() from Python): only the LoRA settings are "
                    "checked against %s before resuming", workdir, EXPERIMENT_FILE, record)
    before, now = read_lora(workdir), lora_config(cfg)
    # full fine-tuning: rank 0, and the other settings at their defaults, as older model records say
    before = dataclasses.asdict(before) if before else {**dataclasses.asdict(LoraConfig()), "rank": 0}
    after = dataclasses.asdict(now) if now else {"rank": 0}
    differences = [f"lora_{field} {_show(before[field])} -> {_show(value)}"
                   for field, value in after.items() if before[field] != value]
    return record, differences
