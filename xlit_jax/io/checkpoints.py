"""Training checkpoints (Orbax) and loading a trained model back for inference.

A run's workdir holds:
  model/llama_config.json    the LlamaConfig, LoRA fields included (written once, at the start)
  model/source.json          where the weights came from ({"source", "seed"}): what rebuilds a damaged frozen/
  model/frozen_sums.json     checksums of frozen/
  model/tokenizer*           the tokenizer files, when the model has a tokenizer
  frozen/                    LoRA runs only: the frozen base params, saved once (Orbax)
  checkpoints/<step>/        params (trainable: all params, or the LoRA adapters), opt_state, data
                             (the batch iterator's position) and sums (checksums of params and opt_state),
                             saved every N steps and at the end, async; the last N are kept
  checkpoints/unreadable/<step>/  a checkpoint that could not be restored on resume, set aside (never deleted);
                             unreadable/frozen/ likewise, a LoRA base rebuilt from the source on resume

Damage and full disks (docs/training.md, "Recovery"): resuming takes the newest checkpoint that every
process can restore, setting newer unreadable ones aside; a save that fails at the filesystem stops the run
with one line (UserError) and leaves the earlier checkpoints as they were.
A LoRA step therefore costs the adapters' size, not the model's; `load_for_inference` merges the
adapters into the base and returns a plain model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging as pylogging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from xlit_jax.errors import UserError, WeightsError
from xlit_jax.io.files import atomic_write_text, read_json, reported_os_errors
from xlit_jax.models.config import LlamaConfig

MODEL_DIR = "model"
CONFIG_FILE = "llama_config.json"
SOURCE_FILE = "source.json"
FROZEN_SUMS_FILE = "frozen_sums.json"  # checksums of frozen/
FROZEN_DIR = "frozen"
CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable"
ITEMS = ("params", "opt_state", "data", "sums")  # sums: checksums of params and opt_state
UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}  # a leaf's bits by its item size
ELSEWHERE = "unreadable on another process, see its log"  # a restore that failed only on other processes
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


def _quiet_orbax(record) -> bool:
    """Orbax logs every save phase at INFO; keep its warnings and errors only, for every caller of this
    module (xlit-train, `make demo`, library users), less the errors it logs from its background threads
    or with a traceback: Orbax raises each of them again in the caller, which reports it (Checkpoints.save)."""
    if "/orbax/" not in record.pathname:
        return True
    if record.levelno == pylogging.WARNING and re.search(r"read.only", record.getMessage()):
        return False  # that a restore-only manager (Checkpoints.reader) does not save: what we asked for
    if record.levelno >= pylogging.ERROR:
        return record.threadName == "MainThread" and not record.exc_info
    return record.levelno >= pylogging.WARNING


logging.get_absl_logger().addFilter(_quiet_orbax)


def _from_orbax(trace, *files: str) -> bool:
    """Whether a traceback (or one of `files`) runs through Orbax's or asyncio's code."""
    files = list(files)
    while trace is not None:
        files.append(trace.tb_frame.f_code.co_filename)
        trace = trace.tb_next
    return any("/orbax/" in f or "/asyncio/" in f for f in files)


def _quiet_orbax_aftermath(unraisable, report=sys.unraisablehook) -> None:
    """After a failed restore or save, the reads and writes Orbax cancelled still finish on TensorStore's
    threads into a closed event loop, or are collected at exit, and Python prints a traceback for each
    ("Event loop is closed", "Exception ignored in <coroutine>"): the failure itself reaches the caller, so
    drop these, and only these."""
    code = getattr(getattr(unraisable.object, "cr_code", None), "co_filename", "")
    if not _from_orbax(unraisable.exc_traceback, code):
        report(unraisable)


def _quiet_orbax_tasks(record) -> bool:
    """The same aftermath through asyncio's logger: a task of Orbax's whose exception nobody retrieved is
    reported when it is collected ("Task exception was never retrieved"), whenever that happens."""
    trace = record.exc_info[2] if record.exc_info else None
    return not any("/orbax/" in frame.filename for frame in traceback.extract_tb(trace))


sys.unraisablehook = _quiet_orbax_aftermath
pylogging.getLogger("asyncio").addFilter(_quiet_orbax_tasks)


def _everywhere(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective: every process calls it, in the same order)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


@jax.jit
def _leaf_sums(leaves: list) -> list:
    """Per leaf, the sum of its bits weighted by position, mod 2**32: integer arithmetic, so the same
    however the leaf is sharded and on every platform."""
    def weighted(x):
        bits = jax.lax.bitcast_convert_type(x, UNSIGNED[x.dtype.itemsize]).astype(jnp.uint32)
        # the flat index of each element, built in place: a reshape of a sharded leaf could move it
        index = functools.reduce(lambda flat, d: flat * x.shape[d] + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d),
                                 range(x.ndim), jnp.zeros(x.shape, jnp.uint32))
        return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)

    return [weighted(x) for x in leaves]


def checksums(tree: Any) -> dict[str, int]:
    """{leaf path: checksum} of a tree of arrays (every process calls it: a collective on a mesh). Orbax
    keeps no checksum of array data, so without these, bytes overwritten inside a compressed chunk would
    restore without an error."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    values = _leaf_sums([x for _, x in leaves])
    return {jax.tree_util.keystr(path): int(v) for (path, _), v in zip(leaves, values, strict=True)}


def _mismatch(tree: Any, saved: dict[str, int] | None, where: Path) -> str | None:
    """'FILE: REASON' for the first leaf whose checksum differs from the saved one; None when all agree
    or nothing was saved (a checkpoint from before checksums)."""
    if saved is None:
        return None
    for path, value in checksums(tree).items():
        if saved.get(path) != value:
            return f"{where}: {path} does not match its checksum (the data changed after it was saved)"
    return None


def _alone() -> ocp.options.MultiprocessingOptions:
    """Orbax's options for a restore that takes no barrier: each process reads its own shards by itself, so
    one that fails cannot leave the others waiting at a barrier it never reaches; they agree afterwards
    (_everywhere)."""
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def _restore_everywhere(restore, directory: Path, check=lambda value: None) -> tuple[bool, Any, str | None]:
    """(ok, value, reason): ok when restore() worked on every process and `check(value)` (a collective, called
    once all have restored) finds nothing wrong; else reason is 'FILE: REASON', or None on a process whose
    own read worked while another's failed."""
    try:
        value, reason = restore(), None
    except Exception as e:  # Orbax and TensorStore raise ValueError, OSError, bare Exception, ...
        value, reason = None, _reason(e, directory)
    if not _everywhere(reason is None):
        return False, None, reason
    reason = check(value)
    return reason is None, value, reason


def _restored(restore, directory: Path, what: str, check=lambda value: None) -> Any:
    """restore(), or a UserError naming `what`, the file and the reason (_restore_everywhere)."""
    ok, value, reason = _restore_everywhere(restore, directory, check)
    if not ok:
        raise UserError(f"{what} cannot be restored ({reason or ELSEWHERE})")
    return value


def _free_name(target: Path) -> Path:
    """`target`, or TARGET.1, TARGET.2, ... when it is taken: nothing set aside is ever overwritten."""
    n = 0
    while (candidate := target.with_name(f"{target.name}.{n}" if n else target.name)).exists():
        n += 1
    return candidate


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


def save_model_info(workdir: str | os.PathLike, config: LlamaConfig, tokenizer=None, source: dict | None = None):
    """What a checkpoint needs to be read back: the config (and tokenizer), and the weights' `source`, as
    {"source", "seed"}; call on process 0 only."""
    directory = Path(workdir) / MODEL_DIR
    atomic_write_text(directory / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=2))
    if source is not None:
        atomic_write_text(directory / SOURCE_FILE, json.dumps(source))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def read_source(workdir: str | os.PathLike) -> dict | None:
    """The `source` save_model_info recorded, or None (a workdir from before it was recorded)."""
    path = Path(workdir) / MODEL_DIR / SOURCE_FILE
    return read_json(path) if path.is_file() else None


def read_config(workdir: str | os.PathLike) -> LlamaConfig:
    """The run's LlamaConfig (model/llama_config.json); a missing or damaged one is a WeightsError naming it."""
    path = Path(workdir) / MODEL_DIR / CONFIG_FILE
    rewrite = f"; is {workdir} a training workdir? (xlit-train writes this file once, at the start of a run)"
    fields = read_json(path, rewrite)
    known = {f.name for f in dataclasses.fields(LlamaConfig)}
    if not isinstance(fields, dict) or not set(fields) <= known:
        unknown = sorted(set(fields) - known) if isinstance(fields, dict) else type(fields).__name__
        raise WeightsError(f"{path}: not a LlamaConfig (unknown: {unknown}){rewrite}")
    config = LlamaConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    return config.replace(attention="auto")  # the kernel is the running machine's choice, not the model's


def read_tokenizer(workdir: str | os.PathLike):
    """The tokenizer save_model_info wrote, or None (a model without one); a damaged one is a WeightsError."""
    directory = Path(workdir) / MODEL_DIR
    if not (directory / "tokenizer_config.json").is_file():
        return None
    from xlit_jax.io.tokenizer import load_hf_tokenizer

    try:
        return load_hf_tokenizer(directory)
    except Exception as e:  # JSON, OS, or the tokenizers library's own errors (plain Exceptions)
        source, reason = (read_source(workdir) or {}).get("source", "?"), " ".join(str(e).split())[:200]
        raise WeightsError(f"{directory}: the tokenizer cannot be read ({type(e).__name__}: {reason}); "
                           f"write it again with xlit_jax.io.tokenizer.load_tokenizer(SRC).save_pretrained"
                           f"('{directory}'), SRC being the run's model.source ({source}) or a preset's "
                           f"data.tokenizer") from e


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings to restore into."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def save_frozen(workdir: str | os.PathLike, frozen: Any) -> None:
    """Save the LoRA base once (blocking), and its checksums; every process takes part, Orbax writes each
    shard once."""
    sums = checksums(frozen)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(workdir).absolute() / FROZEN_DIR, frozen)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        atomic_write_text(Path(workdir) / MODEL_DIR / FROZEN_SUMS_FILE, json.dumps(sums))


def restore_frozen(workdir: str | os.PathLike, target: Any) -> Any:
    """The LoRA base into `target`; a UserError when it cannot be restored on every process."""
    directory = Path(workdir).absolute() / FROZEN_DIR
    reader = ocp.StandardCheckpointer(multiprocessing_options=_alone())
    sums = Path(workdir) / MODEL_DIR / FROZEN_SUMS_FILE
    saved = read_json(sums) if sums.is_file() else None  # None: saved before checksums
    return _restored(lambda: reader.restore(directory, target), directory, "the LoRA base",
                     lambda frozen: _mismatch(frozen, saved, directory))


def replace_frozen(workdir: str | os.PathLike, frozen: Any) -> Path:
    """Save the LoRA base again, the unreadable one moved to checkpoints/unreadable/frozen (returned)."""
    aside = _free_name(Path(workdir).absolute() / CHECKPOINTS_DIR / UNREADABLE_DIR / FROZEN_DIR)
    if jax.process_index() == 0:
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(workdir) / FROZEN_DIR, aside)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("xlit_jax frozen set aside")
    save_frozen(workdir, frozen)
    return aside


def has_frozen(workdir: str | os.PathLike) -> bool:
    return (Path(workdir) / FROZEN_DIR).is_dir()


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
            read_only=True, max_to_keep=None, create=False, multiprocessing_options=_alone()))
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

        Multi-host: each process restores its own shards, by itself (no barrier: `_alone`), so only some may
        see a damaged file. Every process tries the steps in the same order and a step is taken only if it
        restored on all of them (one allgather of a flag per step); process 0 moves the rejected ones aside."""
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            restore = functools.partial(self.restore, step, params_target, opt_target)
            check = functools.partial(self.mismatch, step)  # the same on every process: the sums are global
            ok, restored, reason = _restore_everywhere(restore, self.directory / str(step), check)
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
            target = _free_name(self.directory / UNREADABLE_DIR / str(step))
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
        reasons = (_mismatch(restored[item], sums.get(item), self.directory / str(step) / item)
                   for item in ("params", "opt_state") if item in restored)
        return next((reason for reason in reasons if reason), None)

    def wait(self) -> None:
        with reported_os_errors(self._save_failed):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        self.reader.close()


def load_for_inference(path: str | os.PathLike, step: int | None = None, **config_overrides):
    """(config, params, tokenizer or None) from a training workdir, at `step` or the latest checkpoint.
    LoRA adapters are merged into the base, so the config comes back without LoRA (its fields at defaults)."""
    from xlit_jax.models.llama import param_shapes
    from xlit_jax.models.lora import merge_lora, merge_params, split_lora

    workdir = Path(path)
    config, tokenizer = read_config(workdir), read_tokenizer(workdir)  # both before the long restore
    checkpoints = Checkpoints(workdir, read_only=True)  # safe beside a run that is still training
    step = checkpoints.latest_step() if step is None else step
    if step is None:
        raise WeightsError(f"{workdir / CHECKPOINTS_DIR}: no checkpoint")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = param_shapes(config)
    on_device = lambda tree: abstract(tree, jax.tree_util.tree_map(lambda _: device, tree))  # noqa: E731

    def trained(target):
        return _restored(lambda: checkpoints.restore(step, on_device(target)), checkpoints.directory / str(step),
                         f"checkpoint step {step}", functools.partial(checkpoints.mismatch, step))["params"]

    try:
        if config.lora_rank:
            base, adapters = split_lora(shapes)
            params = merge_params(restore_frozen(workdir, on_device(base)), trained(adapters))
            params = merge_lora(params, config.lora_alpha)
            config = config.replace(**{f.name: f.default for f in dataclasses.fields(LlamaConfig)
                                       if f.name in LORA_FIELDS})
        else:
            params = trained(shapes)
    except UserError as e:
        raise WeightsError(f"{workdir}: {e}; xlit-train on this workdir sets a damaged checkpoint aside and "
                           "rebuilds a damaged LoRA base") from None
    finally:
        checkpoints.close()
    return config.replace(**config_overrides), params, tokenizer
