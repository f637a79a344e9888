"""What every perf script shares: the timing rule, the output format and the flags for data and rows.

Timing: `time_calls` runs a call `warmups` times untimed (JAX compiles, torch allocates), then `calls` times,
and reports the median (one noisy moment on a shared machine moves a mean by 20%). Output: a markdown
table (`io.files.markdown_table`) on stdout, and the raw rows behind it appended as JSONL to --rows_out
(`define_rows_flag`, `save_rows`: each row with the command, commit, machine and date, so that
docs/performance.md's tables can be rebuilt); worker subprocesses hand their row back as the last stdout line
(`print_result`, `read_result`). The flags are defined by the scripts that call `define_*_flag`, never here.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from absl import flags

from xlit_jax.io.files import append_jsonl, atomic_write_text
from xlit_jax.resources import shared_data_dir

RESULT = "RESULT "


@dataclasses.dataclass
class Timing:
    first_s: float  # the first warm-up call (compilation included); 0 without warm-up
    seconds: float  # the median of the timed calls
    result: Any  # what the last timed call returned


def time_calls(run: Callable[[], Any], calls: int, warmups: int = 1) -> Timing:
    """`warmups` untimed calls of `run`, then the median wall seconds of `calls` timed ones."""
    first_s = 0.0
    for i in range(warmups):
        start = time.perf_counter()
        run()
        if i == 0:
            first_s = time.perf_counter() - start
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return Timing(first_s, statistics.median(seconds), result)


def write_rows(path: str | Path, rows: list[dict], table: str | None = None) -> None:
    """The rows as a JSON list at `path` and, when given, the table beside it as .md (both atomically)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
    if table is not None:
        atomic_write_text(path.with_suffix(".md"), table + "\n")


def print_result(row: dict) -> None:
    print(RESULT + json.dumps(row), flush=True)


def read_result(stdout: str) -> dict:
    """The row a worker printed with `print_result`."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith(RESULT))[len(RESULT):])


def define_data_flag() -> None:
    """--data, the shared data folder: resources.shared_data_dir() ($XLIT_SHARED_DATA, else ../shared/data)."""
    flags.DEFINE_string("data", str(shared_data_dir()), "shared data dir (the paper's prompts)")


def define_rows_flag(script: str) -> None:
    """--rows_out, where `save_rows` appends the script's raw rows (default runs/perf/SCRIPT.jsonl; '' for none)."""
    flags.DEFINE_string("rows_out", f"runs/perf/{script}.jsonl", "append the raw rows here as JSONL, each with "
                        "the command, commit, machine and date (docs/performance.md); '' writes none")


def cpu_model() -> str:
    """lscpu's model name: the machine a CPU row was measured on."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run_info() -> dict:
    """What a row needs beside its numbers to be found again: the command, the commit, the machine, the date."""
    try:  # an installed wheel has no git checkout: no commit
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {"command": " ".join(["python -m", f"xlit_jax.perf.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
            "commit": commit or None, "machine": cpu_model(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def save_rows(rows: list[dict]) -> None:
    """Append `rows` with `run_info()` to --rows_out (define_rows_flag), unless it is ''."""
    if flags.FLAGS.rows_out:
        info = run_info()
        Path(flags.FLAGS.rows_out).parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(flags.FLAGS.rows_out, [row | info for row in rows])
