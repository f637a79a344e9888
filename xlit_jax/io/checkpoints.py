"""Training checkpoints (Orbax) and loading a trained model back for inference.

A run's workdir holds:
  model/llama_config.json    the LlamaConfig, LoRA fields included (written once, at the start)
  model/tokenizer*           the tokenizer files, when the model has a tokenizer
  frozen/                    LoRA runs only: the frozen base params, saved once (Orbax)
  checkpoints/<step>/        params (trainable: all params, or the LoRA adapters), opt_state, and data
                             (the batch iterator's position), saved every N steps and at the end, async;
                             the last N are kept
A LoRA step therefore costs the adapters' size, not the model's; `load_for_inference` merges the
adapters into the base and returns a plain model.
"""

from __future__ import annotations

import dataclasses
import json
import logging as pylogging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from xlit_jax.io.files import atomic_write_text
from xlit_jax.models.config import LlamaConfig

MODEL_DIR = "model"
CONFIG_FILE = "llama_config.json"
FROZEN_DIR = "frozen"
CHECKPOINTS_DIR = "checkpoints"
ITEMS = ("params", "opt_state", "data")
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


def _quiet_orbax(record) -> bool:
    """Orbax logs every save phase at INFO; keep its warnings and errors only, for every caller of this
    module (xlit-train, `make demo`, library users)."""
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


logging.get_absl_logger().addFilter(_quiet_orbax)


def save_model_info(workdir: str | os.PathLike, config: LlamaConfig, tokenizer=None) -> None:
    """The config (and tokenizer) a checkpoint needs to be read back; call on process 0 only."""
    directory = Path(workdir) / MODEL_DIR
    atomic_write_text(directory / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def read_config(workdir: str | os.PathLike) -> LlamaConfig:
    path = Path(workdir) / MODEL_DIR / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {workdir} a training workdir?")
    fields = json.loads(path.read_text(encoding="utf-8-sig"))
    config = LlamaConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    return config.replace(attention="auto")  # the kernel is the running machine's choice, not the model's


def read_tokenizer(workdir: str | os.PathLike):
    directory = Path(workdir) / MODEL_DIR
    if not (directory / "tokenizer_config.json").is_file():
        return None
    from xlit_jax.io.tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(directory)


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings to restore into."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def save_frozen(workdir: str | os.PathLike, frozen: Any) -> None:
    """Save the LoRA base once (blocking); every process takes part, Orbax writes each shard once."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(workdir).absolute() / FROZEN_DIR, frozen)
    checkpointer.wait_until_finished()


def restore_frozen(workdir: str | os.PathLike, target: Any) -> Any:
    return ocp.StandardCheckpointer().restore(Path(workdir).absolute() / FROZEN_DIR, target)


def has_frozen(workdir: str | os.PathLike) -> bool:
    return (Path(workdir) / FROZEN_DIR).is_dir()


class Checkpoints:
    """Step checkpoints of (trainable params, optimizer state, data position), saved asynchronously."""

    def __init__(self, workdir: str | os.PathLike, keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               read_only=read_only)
        self.manager = ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINTS_DIR, options=options,
                                             item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict) -> None:
        """Starts the save and returns once the arrays are copied off the devices; the write goes on."""
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            data=ocp.args.JsonSave(data_state)), force=True)

    def restore(self, step: int, params_target: Any, opt_target: Any | None = None) -> dict:
        """Restore into the targets' shapes and shardings; without `opt_target`, params (and data) only."""
        items = {"params": ocp.args.StandardRestore(params_target), "data": ocp.args.JsonRestore()}
        if opt_target is not None:
            items["opt_state"] = ocp.args.StandardRestore(opt_target)
        return dict(self.manager.restore(step, args=ocp.args.Composite(**items)).items())

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def load_for_inference(path: str | os.PathLike, step: int | None = None, **config_overrides):
    """(config, params, tokenizer or None) from a training workdir, at `step` or the latest checkpoint.
    LoRA adapters are merged into the base, so the config comes back without LoRA (its fields at defaults)."""
    from xlit_jax.models.llama import param_shapes
    from xlit_jax.models.lora import merge_lora, merge_params, split_lora

    workdir = Path(path)
    config = read_config(workdir)
    checkpoints = Checkpoints(workdir, read_only=True)  # safe beside a run that is still training
    step = checkpoints.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir / CHECKPOINTS_DIR}: no checkpoint")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = param_shapes(config)
    on_device = lambda tree: abstract(tree, jax.tree_util.tree_map(lambda _: device, tree))  # noqa: E731
    if config.lora_rank:
        base, adapters = split_lora(shapes)
        adapters = checkpoints.restore(step, on_device(adapters))["params"]
        params = merge_lora(merge_params(restore_frozen(workdir, on_device(base)), adapters), config.lora_alpha)
        config = config.replace(**{f.name: f.default for f in dataclasses.fields(LlamaConfig) if f.name in LORA_FIELDS})
    else:
        params = checkpoints.restore(step, on_device(shapes))["params"]
    checkpoints.close()
    return config.replace(**config_overrides), params, read_tokenizer(workdir)
