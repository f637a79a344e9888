"""frozen/ in a LoRA run's workdir: the frozen base params, saved once (Orbax), with their checksums in
model/; a damaged one is set aside and saved again from the run's source."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from xlit_jax.io.checkpoints.agree import alone, restored
from xlit_jax.io.checkpoints.model_info import MODEL_DIR
from xlit_jax.io.checkpoints.steps import CHECKPOINTS_DIR, UNREADABLE_DIR, free_name
from xlit_jax.io.checkpoints.sums import checksums, first_mismatch
from xlit_jax.io.files import atomic_write_text, read_json

FROZEN_DIR = "frozen"
FROZEN_SUMS_FILE = "frozen_sums.json"  # checksums of frozen/, in model/


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
    reader = ocp.StandardCheckpointer(multiprocessing_options=alone())
    sums = Path(workdir) / MODEL_DIR / FROZEN_SUMS_FILE
    saved = read_json(sums) if sums.is_file() else None  # None: saved before checksums
    return restored(lambda: reader.restore(directory, target), directory, "the LoRA base",
                    lambda frozen: first_mismatch(frozen, saved, directory))


def replace_frozen(workdir: str | os.PathLike, frozen: Any) -> Path:
    """Save the LoRA base again, the unreadable one moved to checkpoints/unreadable/frozen (returned)."""
    aside = free_name(Path(workdir).absolute() / CHECKPOINTS_DIR / UNREADABLE_DIR / FROZEN_DIR)
    if jax.process_index() == 0:
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(workdir) / FROZEN_DIR, aside)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("xlit_jax frozen set aside")
    save_frozen(workdir, frozen)
    return aside


def has_frozen(workdir: str | os.PathLike) -> bool:
    return (Path(workdir) / FROZEN_DIR).is_dir()
