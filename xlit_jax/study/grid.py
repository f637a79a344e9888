"""A study: a grid of training runs (models x data sets x methods x learning rates) and baselines, each
evaluated the same way, described by an ml_collections config (configs/studies/*.py):

    name          the study's name
    experiment    the xlit-train config of one cell, with {model} {data} {method} {lr} filled in, e.g.
                  "configs/experiments/paper.py:{model},{data},{method},{lr}"
    models, datasets, methods, learning_rates    the grid's axes (strings)
    model_sources {model: weights} passed as --config.model.source (empty: the experiment's own)
    train         nested overrides of the experiment config, e.g. {"train": {"max_steps": 30}}
    eval          xlit-eval flags without dashes, e.g. {"eval_set": "chirkova", "limit": 12}
    bench         optional xlit-eval flags of a second evaluation stage into cells/NAME/bench, e.g. the
                  benchmarks {"eval_set": "xquad,mlqa,mmlu,bbh", "limit": 100}
    data_prep     optional {dataset: {"steps": ({"program": "translate" or "demos", flag: value}, ...),
                  "sources": (...)}}: programs (xlit-translate, xlit-demos; a tuple value repeats its
                  flag) that make a data set, run in
                  order once per study into WORKDIR/data/DATASET (written "{prep}" in flags and sources)
                  before the first cell that trains on it; the cells then train on `sources`
    baselines     {name: model} evaluated as they are, without training (e.g. the untuned model)

A cell is its data preparation, one training run and its evaluations, or one baseline's evaluations;
`commands` gives the command lines that do it, the same ones the runner executes and `xlit-study
--print_commands` prints.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import shlex
import sys
from pathlib import Path

from ml_collections import ConfigDict
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from xlit_jax.errors import InputError
from xlit_jax.train import loop, probes

AXES = ("models", "datasets", "methods", "learning_rates")
BASELINE = "base"  # the method of a baseline cell: evaluated without training
PREP = "{prep}"  # the data-preparation folder, in data_prep's flags and sources
PREP_PROGRAMS = ("demos", "translate")
_PYTHON = [sys.executable, "-m"]
# How each launcher spells the programs; "python" runs this checkout's code (what the runner uses).
LAUNCHERS = {
    "xlit": {"train": ["xlit-train"], "eval": ["xlit-eval"], "demos": ["xlit-demos"], "translate": ["xlit-translate"]},
    "python": {"train": _PYTHON + ["launch.train"], "eval": _PYTHON + ["launch.evaluate"],
               "demos": _PYTHON + ["launch.translation_demos"], "translate": _PYTHON + ["launch.translate"]},
    "slurm": {"train": ["sbatch", "launch/pods/slurm_gpu.sbatch"], "eval": ["xlit-eval"], "demos": ["xlit-demos"],
              "translate": ["xlit-translate"]},
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
    prep_steps: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()  # (step, program, flags)
    bench_flags: tuple[tuple[str, str], ...] = ()  # the second evaluation stage's xlit-eval flags, if any

    @property
    def name(self) -> str:
        if self.method == BASELINE:
            return f"{self.model}.{BASELINE}"
        return f"{self.model}.{self.data}.{self.method}.lr{self.lr}"

    @property
    def trains(self) -> bool:
        return self.method != BASELINE

    @property
    def last_stage(self) -> str:
        return "bench" if self.bench_flags else "eval"

    def labels(self) -> dict[str, str]:
        return {"cell": self.name, "model": self.model, "data": self.data, "method": self.method, "lr": self.lr}


def _flatten(tree, sequence, prefix: str = "") -> list[tuple[str, str]]:
    """{"train": {"max_steps": 30}} -> [("train.max_steps", "30")]; a tuple becomes sequence(values), and
    "" and None (an unset placeholder: configs/experiments/base.py's overrides) are left out (the program's
    default stays)."""
    pairs = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            pairs += _flatten(value, sequence, path + ".")
        elif isinstance(value, (tuple, list)):
            pairs.append((path, sequence(value)))
        elif value not in ("", None):
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
    bench = config.get("bench") or {}
    bench = tuple(flag_pairs(bench)) if bench.get("eval_set") else ()  # no eval_set: no second stage
    preps = {data: _prep(data, spec) for data, spec in (config.get("data_prep") or {}).items()}
    cells = [Cell(name, "", BASELINE, "", "", str(source), (), bench_flags=bench)
             for name, source in (config.get("baselines") or {}).items()]
    for model in axes["models"]:
        for data in axes["datasets"]:
            steps, data_overrides = preps.get(data, ((), ()))
            for method in axes["methods"]:
                for lr in axes["learning_rates"]:
                    experiment = config.experiment.format(model=model, data=data, method=method, lr=lr)
                    cells.append(Cell(model, data, method, lr, experiment, str(sources.get(model, "")),
                                      overrides + data_overrides, steps, bench))
    names = [c.name for c in cells]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"study config: cell {repeated[0]!r} appears twice (a baseline named like a model?)")
    return cells


def _prep(data: str, spec) -> tuple[tuple, tuple]:
    """(steps, training overrides) of one data set's preparation; each step is named by its program."""
    steps = []
    for number, flags in enumerate(spec.get("steps") or (), 1):
        flags = dict(flags)
        program = flags.pop("program", None)
        if program not in PREP_PROGRAMS or program in {s[0] for s in steps}:
            raise InputError(f"study config: data_prep.{data}.steps[{number}]: program must be one of "
                             f"{', '.join(PREP_PROGRAMS)}, each once, not {program!r}")
        # A tuple repeats its flag (xlit-demos --mix_with=A --mix_with=B); a list flag takes "a,b".
        steps.append((program, program, tuple((key, str(v)) for key, value in sorted(flags.items())
                                              for v in (value if isinstance(value, (tuple, list)) else (value,)))))
    sources = spec.get("sources") or ()
    if not steps or not sources:
        raise InputError(f"study config: data_prep.{data} needs steps and the sources its cells train on")
    return tuple(steps), tuple(config_override_pairs({"data": {"name": data, "sources": tuple(sources)}}))


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

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    def log(self, stage: str) -> Path:
        return self.root / f"{stage}.log"


def cell_paths(workdir: Path, cell: Cell) -> CellPaths:
    return CellPaths(Path(workdir) / "cells" / cell.name)


def data_paths(workdir: Path, data: str) -> CellPaths:
    """A data set's preparation folder (status.json and logs as a cell's)."""
    return CellPaths(Path(workdir) / "data" / data)


def _launcher(launcher: str) -> dict[str, list[str]]:
    if launcher not in LAUNCHERS:
        raise InputError(f"--launcher={launcher}: use one of {', '.join(LAUNCHERS)}")
    return LAUNCHERS[launcher]


def prep_commands(cell: Cell, workdir: Path, launcher: str = "python") -> dict[str, list[str]]:
    """{step: argv} making the cell's data set, in order (empty when it needs no preparation)."""
    programs, folder = _launcher(launcher), str(data_paths(workdir, cell.data).root)
    return {step: programs[program] + [f"--{key}={value.replace(PREP, folder)}" for key, value in flags]
            for step, program, flags in cell.prep_steps}


def commands(cell: Cell, paths: CellPaths, eval_flags, launcher: str = "python") -> dict[str, list[str]]:
    """{"train": argv, "eval": argv, "bench": argv} for the cell ("train" absent for a baseline, "bench"
    without a second evaluation stage)."""
    programs = _launcher(launcher)
    train_program, eval_program = programs["train"], programs["eval"]
    result = {}
    model = cell.source
    if cell.trains:
        folder = str(data_paths(paths.root.parent.parent, cell.data).root)  # paths.root is WORKDIR/cells/NAME
        overrides = [(key, value.replace(PREP, folder)) for key, value in cell.train_overrides]
        overrides += [("model.source", cell.source)] if cell.source else []
        flags = [f"--config.{key}={value}" for key, value in overrides]
        if launcher == "slurm":  # the sbatch script takes CONFIG WORKDIR then overrides
            result["train"] = train_program + [cell.experiment, str(paths.train)] + flags
        else:
            result["train"] = train_program + [f"--config={cell.experiment}", f"--workdir={paths.train}"] + flags
        model = str(paths.train)
    for stage, out_dir, flags in (("eval", paths.eval, flag_pairs(eval_flags or {})),
                                  ("bench", paths.bench, cell.bench_flags)):
        if stage == "eval" or flags:
            result[stage] = eval_program + [f"--model={model}", f"--model_name={cell.name}", f"--out_dir={out_dir}"] + [
                f"--{key}={value}" for key, value in flags]
    return result


def command_lines(cells: list[Cell], workdir: Path, eval_flags, launcher: str) -> str:
    """Shell lines, a comment naming each cell then its commands (to run from the repository root); a data
    set's preparation comes once, before the first cell that trains on it."""
    lines, prepared = [], set()
    for cell in cells:
        if cell.prep_steps and cell.data not in prepared:
            prepared.add(cell.data)
            lines.append(f"# data set {cell.data}")
            lines += [shlex.join(argv) for argv in prep_commands(cell, workdir, launcher).values()]
        lines.append(f"# {cell.name}")
        lines += [shlex.join(argv) for argv in commands(cell, cell_paths(workdir, cell), eval_flags, launcher).values()]
    return "\n".join(lines) + "\n"


def experiment_config(cell: Cell) -> ConfigDict:
    """The experiment config the cell's xlit-train will run: its file, then its overrides (each value read as
    a Python literal unless the field holds a string, as config_flags reads them)."""
    config = ConfigFileFlagParser("config").parse(cell.experiment)
    overrides = dict(cell.train_overrides) | ({"model.source": cell.source} if cell.source else {})
    for key, text in overrides.items():
        current = config
        for part in key.split("."):
            current = current[part]
        config.update_from_flattened_dict({key: text if isinstance(current, str) else ast.literal_eval(text)})
    return config


def check_training_settings(cells: list[Cell]) -> None:
    """The settings xlit-train checks without reading anything, for every training cell, before a study's
    first stage (a baseline's evaluation would otherwise run before a cell's training refuses them)."""
    for cell in cells:
        if cell.trains:
            try:
                config = experiment_config(cell)
                probes.check_cadence(config)
                loop.check_settings(config)
            except InputError as e:
                raise InputError(f"cell {cell.name}: {e}") from None
