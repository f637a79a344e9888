"""Restoring on every process of a run and agreeing on the outcome. Each process reads its own shards by
itself, so a damaged file may fail the read on some processes only: all of them take a checkpoint, or none."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from xlit_jax.errors import UserError

ELSEWHERE = "unreadable on another process, see its log"  # a restore that failed only on other processes


def everywhere(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective: every process calls it, in the same order)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def alone() -> ocp.options.MultiprocessingOptions:
    """Orbax's options for a restore that takes no barrier: each process reads its own shards by itself, so
    one that fails cannot leave the others waiting at a barrier it never reaches; they agree afterwards
    (everywhere)."""
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def restore_everywhere(restore, directory: Path, check=lambda value: None) -> tuple[bool, Any, str | None]:
    """(ok, value, reason): ok when restore() worked on every process and `check(value)` (a collective, called
    once all have restored) finds nothing wrong; else reason is 'FILE: REASON', or None on a process whose
    own read worked while another's failed."""
    try:
        value, reason = restore(), None
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise ValueError, OSError, bare Exception, ...
        value, reason = None, _reason(e, directory)
    if not everywhere(reason is None):
        return False, None, reason
    reason = check(value)
    return reason is None, value, reason


def restored(restore, directory: Path, what: str, check=lambda value: None) -> Any:
    """restore(), or a UserError naming `what`, the file and the reason (restore_everywhere)."""
    ok, value, reason = restore_everywhere(restore, directory, check)
    if not ok:
        raise UserError(f"{what} cannot be restored ({reason or ELSEWHERE})")
    return value


def _reason(error: BaseException, step_dir: Path) -> str:
    """'FILE: REASON' of a failed restore: the file under `step_dir` the error names (else the step's
    directory) and the innermost error's first line."""
    messages = []
    while error is not None:
        messages.append(str(error).strip() or type(error).__name__)
        error = error.__cause__ or error.__context__
    named = re.search(re.escape(str(step_dir)) + r"[^\s\"']*", " ".join(messages))
    reason = messages[-1].splitlines()[0]
    return f"{named.group(0) if named else step_dir}: {reason[:400]}"
