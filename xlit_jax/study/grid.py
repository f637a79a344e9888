"""A study: a grid of training runs (models x data sets x methods x learning rates) and baselines, each
evaluated the same way, described by an ml_collections config (configs/studies/*.py):

    name          the study's name
    experiment    the xlit-train config of one cell, with {model} {data} {method} {lr} filled in, e.g.
                  "configs/experiments/paper.py:{model},{data},{method},{lr}"
    models, datasets, methods, learning_rates    the grid's axes (strings)
    model_sources {model: weights} passed as --config.model.source (empty: the experiment's own)
    train         nested overrides of the experiment config, e.g. {"train": {"max_steps": 30}}
    eval          xlit-eval flags without dashes, e.g. {"eval_set": "chirkova", "limit": 12}
    baselines     {name: model} evaluated as they are, without training (e.g. the untuned model)

A cell is one training run plus its evaluation, or one baseline's evaluation; `commands` gives the
command lines that do it, the same ones the runner executes and `xlit-study --print_commands` prints.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import shlex
import sys
from pathlib import Path

from xlit_jax.errors import InputError

AXES = ("models", "datasets", "methods", "learning_rates")
BASELINE = "base"  # the method of a baseline cell: evaluated without training
# How each launcher spells the two programs; "python" runs this checkout's code (what the runner uses).
LAUNCHERS = {
    "xlit": (["xlit-train"], ["xlit-eval"]),
    "python": ([sys.executable, "-m", "launch.train"], [sys.executable, "-m", "launch.evaluate"]),
    "slurm": (["sbatch", "launch/pods/slurm_gpu.sbatch"], ["xlit-eval"]),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    model: str
    data: str
    method: str
    lr: str
    experiment: str  # the xlit-train --config value ("" for a baseline)
    source: str  # --config.model.source for training, --model for a baseline
    train_overrides: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        if self.method == BASELINE:
            return f"{self.model}.{BASELINE}"
        return f"{self.model}.{self.data}.{self.method}.lr{self.lr}"

    @property
    def trains(self) -> bool:
        return self.method != BASELINE

    def labels(self) -> dict[str, str]:
        return {"cell": self.name, "model": self.model, "data": self.data, "method": self.method, "lr": self.lr}


def _flatten(tree, sequence, prefix: str = "") -> list[tuple[str, str]]:
    """{"train": {"max_steps": 30}} -> [("train.max_steps", "30")]; a tuple becomes sequence(values), and
    "" is left out (the program's default stays)."""
    pairs = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            pairs += _flatten(value, sequence, path + ".")
        elif isinstance(value, (tuple, list)):
            pairs.append((path, sequence(value)))
        elif value != "":
            pairs.append((path, str(value)))
    return pairs


def config_override_pairs(tree) -> list[tuple[str, str]]:
    """Overrides of an ml_collections config flag: tuples spelled as Python literals."""
    return _flatten(tree, lambda values: repr(tuple(values)))


def flag_pairs(tree) -> list[tuple[str, str]]:
    """absl flags: lists spelled comma-separated."""
    return _flatten(tree, lambda values: ",".join(str(v) for v in values))


def _strings(config, field: str) -> tuple[str, ...]:
    values = config.get(field) or ()
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise InputError(f"study config: {field} must be a tuple of strings, not {values!r}")
    return tuple(values)


def expand(config) -> list[Cell]:
    """The study's cells: baselines first, then the grid in axis order."""
    for field in ("name", "experiment"):
        if not config.get(field):
            raise InputError(f"study config: no {field!r}")
    axes = {axis: _strings(config, axis) for axis in AXES}
    empty = [axis for axis, values in axes.items() if not values]
    if empty:
        raise InputError(f"study config: the grid axis {empty[0]!r} is empty")
    sources = dict(config.get("model_sources") or {})
    overrides = tuple(config_override_pairs(config.get("train") or {}))
    cells = [Cell(name, "", BASELINE, "", "", str(source), ())
             for name, source in (config.get("baselines") or {}).items()]
    for model in axes["models"]:
        for data in axes["datasets"]:
            for method in axes["methods"]:
                for lr in axes["learning_rates"]:
                    experiment = config.experiment.format(model=model, data=data, method=method, lr=lr)
                    cells.append(Cell(model, data, method, lr, experiment, str(sources.get(model, "")), overrides))
    names = [c.name for c in cells]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"study config: cell {repeated[0]!r} appears twice (a baseline named like a model?)")
    return cells


def select(cells: list[Cell], patterns: list[str] | None) -> list[Cell]:
    """The cells whose name matches any of the glob patterns (all of them without patterns)."""
    if not patterns:
        return cells
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if not chosen:
        raise InputError(f"--only={','.join(patterns)} matches no cell; cells are named like {cells[-1].name}")
    return chosen


@dataclasses.dataclass(frozen=True)
class CellPaths:
    root: Path

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def log(self, stage: str) -> Path:
        return self.root / f"{stage}.log"


def cell_paths(workdir: Path, cell: Cell) -> CellPaths:
    return CellPaths(Path(workdir) / "cells" / cell.name)


def commands(cell: Cell, paths: CellPaths, eval_flags, launcher: str = "python") -> dict[str, list[str]]:
    """{"train": argv, "eval": argv} for the cell ("train" absent for a baseline)."""
    if launcher not in LAUNCHERS:
        raise InputError(f"--launcher={launcher}: use one of {', '.join(LAUNCHERS)}")
    train_program, eval_program = LAUNCHERS[launcher]
    result = {}
    model = cell.source
    if cell.trains:
        overrides = list(cell.train_overrides) + ([("model.source", cell.source)] if cell.source else [])
        flags = [f"--config.{key}={value}" for key, value in overrides]
        if launcher == "slurm":  # the sbatch script takes CONFIG WORKDIR then overrides
            result["train"] = train_program + [cell.experiment, str(paths.train)] + flags
        else:
            result["train"] = train_program + [f"--config={cell.experiment}", f"--workdir={paths.train}"] + flags
        model = str(paths.train)
    result["eval"] = eval_program + [f"--model={model}", f"--model_name={cell.name}", f"--out_dir={paths.eval}"] + [
        f"--{key}={value}" for key, value in flag_pairs(eval_flags or {})]
    return result


def command_lines(cells: list[Cell], workdir: Path, eval_flags, launcher: str) -> str:
    """Shell lines, a comment naming each cell then its commands (to run from the repository root)."""
    lines = []
    for cell in cells:
        lines.append(f"# {cell.name}")
        lines += [shlex.join(argv) for argv in commands(cell, cell_paths(workdir, cell), eval_flags, launcher).values()]
    return "\n".join(lines) + "\n"
