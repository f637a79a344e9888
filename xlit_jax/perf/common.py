"""What every perf script shares: the timing rule, the output format and the data-folder flag.

Timing: `time_calls` runs a call `warmups` times untimed (JAX compiles, torch allocates), then `calls` times,
and reports the median (one noisy moment on a shared machine moves a mean by 20%). Output: a markdown
table (`io.files.markdown_table`) on stdout; scripts that write files write the same rows as JSON (`write_rows`);
worker subprocesses hand their row back as the last stdout line (`print_result`, `read_result`).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from absl import flags

from xlit_jax.io.files import atomic_write_text
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
