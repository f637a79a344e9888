"""Run a study's cells one after the other, each stage a subprocess (xlit-train, then xlit-eval, then
xlit-eval's benchmarks where the study has a second evaluation stage).

A cell's folder (WORKDIR/cells/NAME) holds train/ (the training workdir), eval/ (the evaluation out_dir),
bench/, train.log, eval.log and bench.log (each attempt appended) and status.json, rewritten atomically
after every stage: {"train": "done", "eval": "done", "settings": {stage: its flags}} or, when a stage
failed, {"failed": {"stage", "returncode", "log", "reason"}}. The programs resume by themselves, so
rerunning the study continues a half-trained or half-evaluated cell; finished stages are skipped (so a
rerun first checks that they were run with the study's settings now: check_recorded) and a failed one is
retried. One failing cell does not stop the others. A runner holds a cell's lock (.lock) while on it, so
several runners can share one study folder. A data set's preparation (xlit-demos, xlit-translate) runs the
same way in WORKDIR/data/DATASET (its own status.json, step logs and lock, waited for) before the first cell
that trains on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path

from xlit_jax.errors import UserError
from xlit_jax.io.files import atomic_write_text, read_output_jsonl
from xlit_jax.resources import REPOSITORY  # the programs run from here so `configs` imports
from xlit_jax.study import grid
from xlit_jax.train.record import latest_checkpoint, may_change

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
JAX_CACHE_DIR = "jax_cache"
LOCK_FILE = ".lock"
DONE, PARTIAL, FAILED, NOT_STARTED, RUNNING = "done", "partial", "failed", "not started", "running"
# The study folder as recorded settings name it, so that a moved study folder still matches its records.
WORKDIR_MARK = Path("{workdir}")


def read_status(paths: grid.CellPaths) -> dict:
    path = paths.root / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_status(paths: grid.CellPaths, status: dict) -> None:
    atomic_write_text(paths.root / STATUS_FILE, json.dumps(status, indent=1) + "\n")


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
        reason = f": {failed['reason']}" if failed.get("reason") else ""
        return FAILED, f"{failed['stage']} exited {failed['returncode']}{reason}, see {failed['log']}"
    if not paths.root.exists():
        return NOT_STARTED, ""
    parts = []
    if cell.trains:
        trained = status.get("train") == DONE
        parts.append("trained" if trained else f"checkpoint step {latest_checkpoint(paths.train) or 0}")
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


def _run_stage(stage: str, argv: list[str], paths: grid.CellPaths, env: dict[str, str]) -> tuple[int, str]:
    """(exit status, and when it failed its reason: the last `xlit-NAME: message` line of this attempt's log,
    the one line a binary ends with on a user's error; "" if there is none)."""
    log_path = paths.log(stage)
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
        out.flush()
        start = log_path.stat().st_size
        returncode = subprocess.run(argv, cwd=REPOSITORY, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    check=False).returncode
    if not returncode:
        return 0, ""
    with open(log_path, "rb") as log_file:
        log_file.seek(start)
        lines = re.split(r"[\r\n]", log_file.read().decode("utf-8", "replace"))  # tqdm ends lines in \r
    return returncode, next((line for line in reversed(lines) if line.startswith("xlit-")), "")


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
        return _run_stages(cell.name, grid.commands(cell, paths, eval_flags), paths, workdir,
                           cell_settings(cell, eval_flags))


def _prepare(cell: grid.Cell, workdir: Path) -> str:
    """Make the cell's data set unless done (waiting for a runner preparing it)."""
    paths = grid.data_paths(workdir, cell.data)
    with _cell_lock(paths, wait=True):
        return _run_stages(f"data set {cell.data}", grid.prep_commands(cell, workdir), paths, workdir,
                           prep_settings(cell))


def _run_stages(name: str, stages: dict[str, list[str]], paths: grid.CellPaths, workdir: Path,
                settings: dict[str, list[str]]) -> str:
    """Run the stages not done yet, in order, recording each in paths' status.json with its `settings`."""
    status = read_status(paths)
    status.pop("failed", None)
    for stage, argv in stages.items():
        if status.get(stage) == DONE:
            continue
        started = time.perf_counter()
        log.info("%s: %s", name, stage)
        returncode, reason = _run_stage(stage, argv, paths, stage_environment(workdir))
        if returncode:
            status["failed"] = {"stage": stage, "returncode": returncode, "log": str(paths.log(stage)),
                                "reason": reason}
            _write_status(paths, status)
            log.error("%s: %s failed (exit %d): %s; its log: %s", name, stage, returncode,
                      reason or "no xlit- line", paths.log(stage))
            return FAILED
        status[stage] = DONE
        status.setdefault("settings", {})[stage] = settings[stage]
        seconds = round(time.perf_counter() - started, 1)
        status[f"{stage}_seconds"] = status.get(f"{stage}_seconds", 0) + seconds
        _write_status(paths, status)
        log.info("%s: %s done in %.0f s%s", name, stage, seconds, _made(stage, paths))
    return DONE


def _made(stage: str, paths: grid.CellPaths) -> str:
    """What a finished stage left, for its progress line: the training's last step, the responses."""
    if stage == "train":
        return f" (step {latest_checkpoint(paths.train) or 0})"
    if stage == "eval":
        return f" ({_generated(paths)} responses)"
    return ""


def _flags(stages: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each stage's flags: its argv without the program (`python -m MODULE`, whose path is the machine's)."""
    return {stage: [arg for arg in argv if arg.startswith("--")] for stage, argv in stages.items()}


def cell_settings(cell: grid.Cell, eval_flags) -> dict[str, list[str]]:
    """What a cell's status.json records of each stage it ran: its flags, the study folder written {workdir}."""
    return _flags(grid.commands(cell, grid.cell_paths(WORKDIR_MARK, cell), eval_flags))


def prep_settings(cell: grid.Cell) -> dict[str, list[str]]:
    """The same for the preparation of the cell's data set (its own status.json)."""
    return _flags(grid.prep_commands(cell, WORKDIR_MARK))


def _by_name(flags: list[str]) -> dict[str, list[str]]:
    named = {}
    for flag in flags:
        name, _, value = flag.partition("=")
        named.setdefault(name, []).append(value)  # a repeated flag (--mix_with=A --mix_with=B) keeps each
    return named


def _flag_changes(before: list[str], after: list[str]) -> str:
    """'--flag old -> new, ...' for the flags whose values differ ("" if none); xlit-train's settings that
    may change on resume (xlit_jax/train/record.py) do not count: they change nothing a stage made."""
    old, new = _by_name(before), _by_name(after)
    show = lambda values: "(unset)" if values is None else ",".join(values)  # noqa: E731
    changed = [name for name in dict.fromkeys([*old, *new]) if old.get(name) != new.get(name)
               and not (name.startswith("--config.") and may_change(name.removeprefix("--config.")))]
    return ", ".join(f"{name} {show(old.get(name))} -> {show(new.get(name))}" for name in changed)


def _changed_stages(paths: grid.CellPaths, now: dict[str, list[str]]) -> list[str]:
    """'STAGE (changes)' for each done stage whose recorded flags differ from its flags `now`."""
    status = read_status(paths)
    recorded = status.get("settings", {})
    changes = [(stage, _flag_changes(recorded[stage], flags)) for stage, flags in now.items()
               if status.get(stage) == DONE and stage in recorded]
    return [f"{stage} ({changed})" for stage, changed in changes if changed]


def _first_few(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def check_recorded(cells: list[grid.Cell], workdir: Path, eval_flags) -> None:
    """A UserError, in one line, naming the done stages of `cells` (and of their data sets' preparation)
    whose status.json records other flags than the study gives them now, and the flags: the runner skips
    done stages, so it would keep results the study no longer describes. Stages recorded by older code
    (no settings) pass. Reads only the status files: call it before anything runs or is written."""
    found: dict[str, list[str]] = {}  # "STAGE (changes)" -> the cells and data sets
    for cell in cells:
        places = [(cell.name, grid.cell_paths(workdir, cell), cell_settings(cell, eval_flags))]
        if cell.prep_steps:
            places.append((f"data set {cell.data}", grid.data_paths(workdir, cell.data), prep_settings(cell)))
        for name, paths, now in places:
            for changed in _changed_stages(paths, now):
                names = found.setdefault(changed, [])
                if name not in names:  # cells share their data set's preparation
                    names.append(name)
    if found:
        listed = "; ".join(f"{changed} in {_first_few(names)}" for changed, names in found.items())
        raise UserError(f"{workdir}: done stages were run with other settings: {listed}; rerun with the settings "
                        "they record (cells/NAME/status.json, data/DATASET/status.json), use a new --workdir, or "
                        "remove those folders to redo them")


def run(cells: list[grid.Cell], workdir: Path, eval_flags) -> dict[str, str]:
    """Run every cell in turn; returns {cell: state}."""
    states = {}
    for number, cell in enumerate(cells, 1):
        log.info("cell %d/%d: %s", number, len(cells), cell.name)
        states[cell.name] = run_cell(cell, workdir, eval_flags)
    return states
