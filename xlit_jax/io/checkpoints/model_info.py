"""model/ in a run's workdir: what its checkpoints need to be read back (config, tokenizer, the weights'
source)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from xlit_jax.errors import WeightsError
from xlit_jax.io.files import atomic_write_text, read_json
from xlit_jax.models.config import LlamaConfig

MODEL_DIR = "model"
CONFIG_FILE = "llama_config.json"
SOURCE_FILE = "source.json"


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
        cause = e.__cause__ if isinstance(e, WeightsError) and e.__cause__ else e  # what load_hf_tokenizer met
        source, reason = (read_source(workdir) or {}).get("source", "?"), " ".join(str(cause).split())[:200]
        raise WeightsError(f"{directory}: the tokenizer cannot be read ({type(cause).__name__}: {reason}); "
                           f"write it again with xlit_jax.io.tokenizer.load_tokenizer(SRC).save_pretrained"
                           f"('{directory}'), SRC being the run's model.source ({source}) or a preset's "
                           f"data.tokenizer") from e
