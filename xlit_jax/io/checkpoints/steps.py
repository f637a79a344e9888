"""checkpoints/ in a run's workdir: the step checkpoints (Orbax), saved asynchronously; on resume the newest
that every process restores, newer unreadable ones set aside in checkpoints/unreadable/."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from xlit_jax.errors import UserError
from xlit_jax.io.checkpoints.agree import ELSEWHERE, alone, restore_everywhere
from xlit_jax.io.checkpoints.sums import checksums, first_mismatch
from xlit_jax.io.files import reported_os_errors

CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable"
ITEMS = ("params", "opt_state", "data", "sums")  # sums: checksums of params and opt_state


def free_name(target: Path) -> Path:
    """`target`, or TARGET.1, TARGET.2, ... when it is taken: nothing set aside is ever overwritten."""
    n = 0
    while (candidate := target.with_name(f"{target.name}.{n}" if n else target.name)).exists():
        n += 1
    return candidate


class Checkpoints:
    """Step checkpoints of (trainable params, optimizer state, data position), saved asynchronously."""

    def __init__(self, workdir: str | os.PathLike, keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        # a save cut short (a kill, a full disk) leaves a temporary directory: removed when training restarts
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               read_only=read_only, cleanup_tmp_directories=not read_only)
        self.directory = Path(workdir).absolute() / CHECKPOINTS_DIR
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self.reader = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=ocp.CheckpointManagerOptions(
            read_only=True, max_to_keep=None, create=False, multiprocessing_options=alone()))
        self.saving = None  # the step whose asynchronous save may still be running

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict) -> None:
        """Starts the save and returns once the arrays are copied off the devices; the write goes on. A save
        that fails at the filesystem (here or, asynchronously, at the next save or wait) is a UserError."""
        self.wait()
        self.saving = step
        with reported_os_errors(self._save_failed):
            sums = {"params": checksums(params), "opt_state": checksums(opt_state)}
            self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                data=ocp.args.JsonSave(data_state), sums=ocp.args.JsonSave(sums)), force=True)

    def _save_failed(self, reason: str) -> str:
        saved = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        kept = f"step {saved[-1]} and the checkpoints before it are intact" if saved else "nothing was saved yet"
        return (f"cannot save checkpoint step {self.saving} in {self.directory}: {reason}; {kept}: "
                "free space (or raise the quota) and rerun the same command to resume")

    def restore_latest(self, params_target: Any, opt_target: Any) -> tuple[int, dict] | None:
        """(step, restored) from the newest checkpoint that every process can restore, or None when there is
        no checkpoint. Newer ones that cannot be restored (a truncated, missing or overwritten file, bad
        metadata, another config's shapes) are moved to checkpoints/unreadable/STEP, one log line each;
        when none can be restored nothing is moved and a UserError says so.

        Multi-host: each process restores its own shards, by itself (no barrier: `alone`), so only some may
        see a damaged file. Every process tries the steps in the same order and a step is taken only if it
        restored on all of them (one allgather of a flag per step); process 0 moves the rejected ones aside."""
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            restore = functools.partial(self.restore, step, params_target, opt_target)
            check = functools.partial(self.mismatch, step)  # the same on every process: the sums are global
            ok, restored, reason = restore_everywhere(restore, self.directory / str(step), check)
            if ok:
                self._set_aside(failures, step)
                return step, restored
            failures.append((step, reason))
        if not failures:
            return None
        newest, reason = failures[0]
        raise UserError(f"no checkpoint in {self.directory} can be restored (steps "
                        f"{', '.join(str(s) for s, _ in failures)}; step {newest}: "
                        f"{reason or ELSEWHERE}); if the model or optimizer "
                        "settings changed since they were saved, rerun with the ones that saved them; to start "
                        f"over, move {self.directory} away")

    def _set_aside(self, failures: list[tuple[int, str | None]], resumed: int) -> None:
        """Process 0 moves each rejected step to checkpoints/unreadable/STEP (STEP.1, ... if that is taken)."""
        for step, reason in failures:
            target = free_name(self.directory / UNREADABLE_DIR / str(step))
            if jax.process_index() == 0:
                target.parent.mkdir(exist_ok=True)
                os.replace(self.directory / str(step), target)
            if reason or jax.process_index() == 0:
                logging.warning("checkpoint step %d cannot be restored (%s); moved to %s, resuming from step %d",
                                step, reason or ELSEWHERE, target, resumed)
        if failures:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("xlit_jax checkpoints set aside")
            self.manager.reload()
            self.reader.reload()

    def restore(self, step: int, params_target: Any, opt_target: Any | None = None) -> dict:
        """Restore into the targets' shapes and shardings; without `opt_target`, params (and data) only.
        Each process reads its own shards, so check `mismatch` once every process has restored."""
        items = {"params": ocp.args.StandardRestore(params_target), "data": ocp.args.JsonRestore()}
        if opt_target is not None:
            items["opt_state"] = ocp.args.StandardRestore(opt_target)
        if (self.directory / str(step) / "sums").is_dir():  # not in checkpoints from before checksums
            items["sums"] = ocp.args.JsonRestore()
        return dict(self.reader.restore(step, args=ocp.args.Composite(**items)).items())

    def mismatch(self, step: int, restored: dict) -> str | None:
        """'FILE: REASON' when a restored item's data differs from what step `step` saved, else None; every
        process calls it (a collective) and gets the same answer."""
        sums = restored.get("sums") or {}
        reasons = (first_mismatch(restored[item], sums.get(item), self.directory / str(step) / item)
                   for item in ("params", "opt_state") if item in restored)
        return next((reason for reason in reasons if reason), None)

    def wait(self) -> None:
        with reported_os_errors(self._save_failed):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        self.reader.close()
