"""Run a study's cells one after the other, each stage a subprocess (xlit-train, then xlit-eval, then
xlit-eval's benchmarks where the study has a second evaluation stage).

A cell's folder (WORKDIR/cells/NAME) holds train/ (the training workdir), eval/ (the evaluation out_dir),
bench/, train.log, eval.log and bench.log (each attempt appended) and status.json, rewritten atomically
after every stage: {"train": "done", "eval": "done"} or, when a stage failed, {"failed": {"stage",
"returncode", "log"}}. The programs resume by themselves, so rerunning the study continues a half-trained
or half-evaluated cell; finished cells are skipped and a failed one is retried. One failing cell does not
stop the others. A runner holds a cell's lock (.lock) while on it, so several runners can share one study
folder. A data set's preparation (xlit-demos, xlit-translate) runs the same way in WORKDIR/data/DATASET
(its own status.json, step logs and lock, waited for) before the first cell that trains on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import time
from pathlib import Path

from xlit_jax.io.files import atomic_write_text, read_output_jsonl
from xlit_jax.resources import REPOSITORY  # the programs run from here so `configs` imports
from xlit_jax.study import grid

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
JAX_CACHE_DIR = "jax_cache"
LOCK_FILE = ".lock"
DONE, PARTIAL, FAILED, NOT_STARTED, RUNNING = "done", "partial", "failed", "not started", "running"


def read_status(paths: grid.CellPaths) -> dict:
    path = paths.root / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_status(paths: grid.CellPaths, status: dict) -> None:
    atomic_write_text(paths.root / STATUS_FILE, json.dumps(status, indent=1) + "\n")


def _checkpoint_step(paths: grid.CellPaths) -> int | None:
    steps = [int(p.name) for p in (paths.train / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=None)


def _generated(paths: grid.CellPaths) -> int:
    path = paths.eval / "generations.jsonl"
    return len(read_output_jsonl(path)) if path.is_file() else 0


def _running(paths: grid.CellPaths) -> bool:
    """Whether a runner holds the cell's lock now."""
    if not (paths.root / LOCK_FILE).exists():
        return False
    with open(paths.root / LOCK_FILE) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def cell_state(cell: grid.Cell, paths: grid.CellPaths) -> tuple[str, str]:
    """(state, detail) of a cell: done / running / partial / failed / not started, and where it stands."""
    status = read_status(paths)
    if status.get(cell.last_stage) == DONE:
        return DONE, ""
    running = _running(paths)
    if "failed" in status and not running:
        failed = status["failed"]
        return FAILED, f"{failed['stage']} exited {failed['returncode']}, see {failed['log']}"
    if not paths.root.exists():
        return NOT_STARTED, ""
    parts = []
    if cell.trains:
        trained = status.get("train") == DONE
        parts.append("trained" if trained else f"checkpoint step {_checkpoint_step(paths) or 0}")
    parts.append(f"{_generated(paths)} responses generated")
    return RUNNING if running else PARTIAL, ", ".join(parts)


def status_table(cells: list[grid.Cell], workdir: Path) -> str:
    rows = [(c.name, *cell_state(c, grid.cell_paths(workdir, c))) for c in cells]
    counts = {s: sum(r[1] == s for r in rows) for s in (DONE, RUNNING, PARTIAL, FAILED, NOT_STARTED)}
    width = max(len(r[0]) for r in rows)
    lines = [f"{'cell':<{width}}  {'state':<11}  detail"] + [f"{n:<{width}}  {s:<11}  {d}" for n, s, d in rows]
    return "\n".join(lines + ["", ", ".join(f"{v} {k}" for k, v in counts.items())]) + "\n"


def stage_environment(workdir: Path) -> dict[str, str]:
    """The programs' environment: cells share one persistent JAX compilation cache (WORKDIR/jax_cache,
    unless JAX_COMPILATION_CACHE_DIR is set), so cells of one shape compile their steps and decoding once."""
    return {"JAX_COMPILATION_CACHE_DIR": str(Path(workdir).absolute() / JAX_CACHE_DIR)} | dict(os.environ)


def _run_stage(stage: str, argv: list[str], paths: grid.CellPaths, env: dict[str, str]) -> int:
    log_path = paths.log(stage)
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        out.flush()
        return subprocess.run(argv, cwd=REPOSITORY, env=env, stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode


@contextlib.contextmanager
def _cell_lock(paths: grid.CellPaths, wait: bool = False):
    """Yields True while this process holds the cell (another runner of the study may be on it); with
    `wait`, waits for another runner to let go."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def run_cell(cell: grid.Cell, workdir: Path, eval_flags) -> str:
    """Train (unless done) then evaluate one cell; returns its state afterwards. A cell another runner is
    working on is left to it, so several runners can share a study."""
    paths = grid.cell_paths(workdir, cell)
    if read_status(paths).get(cell.last_stage) == DONE:
        return DONE
    with _cell_lock(paths) as mine:
        if not mine:
            log.info("%s: another runner is on it", cell.name)
            return RUNNING
        if cell.prep_steps and _prepare(cell, workdir) == FAILED:
            status = read_status(paths)
            status["failed"] = read_status(grid.data_paths(workdir, cell.data))["failed"]
            _write_status(paths, status)
            return FAILED
        return _run_stages(cell.name, grid.commands(cell, paths, eval_flags), paths, workdir)


def _prepare(cell: grid.Cell, workdir: Path) -> str:
    """Make the cell's data set unless done (waiting for a runner preparing it)."""
    paths = grid.data_paths(workdir, cell.data)
    with _cell_lock(paths, wait=True):
        return _run_stages(f"data set {cell.data}", grid.prep_commands(cell, workdir), paths, workdir)


def _run_stages(name: str, stages: dict[str, list[str]], paths: grid.CellPaths, workdir: Path) -> str:
    """Run the stages not done yet, in order, recording each in paths' status.json."""
    status = read_status(paths)
    status.pop("failed", None)
    for stage, argv in stages.items():
        if status.get(stage) == DONE:
            continue
        started = time.perf_counter()
        log.info("%s: %s", name, stage)
        returncode = _run_stage(stage, argv, paths, stage_environment(workdir))
        if returncode:
            status["failed"] = {"stage": stage, "returncode": returncode, "log": str(paths.log(stage))}
            _write_status(paths, status)
            log.error("%s: %s failed (exit %d); its log: %s", name, stage, returncode, paths.log(stage))
            return FAILED
        status[stage] = DONE
        status[f"{stage}_seconds"] = status.get(f"{stage}_seconds", 0) + round(time.perf_counter() - started, 1)
        _write_status(paths, status)
    return DONE


def run(cells: list[grid.Cell], workdir: Path, eval_flags) -> dict[str, str]:
    """Run every cell in turn; returns {cell: state}."""
    states = {}
    for number, cell in enumerate(cells, 1):
        log.info("cell %d/%d: %s", number, len(cells), cell.name)
        states[cell.name] = run_cell(cell, workdir, eval_flags)
    return states
