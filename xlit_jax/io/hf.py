"""HF directories of the LLaMA family (llama, mistral, qwen2: config.json + safetensors) <-> our config and params.

Params are read tensor by tensor into preallocated stacked arrays, so importing a 13B model needs its
size in RAM once, not twice. Kernels are stored [in, out] here and [out, in] in HF files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from xlit_jax.errors import WeightsError
from xlit_jax.io.files import atomic_directory, read_json
from xlit_jax.models.config import ROPE_TYPES, LlamaConfig
from xlit_jax.models.llama import param_shapes

GENERATION_CONFIG = "generation_config.json"  # its eos_token_id joins config.json's (config_from_hf_dir)

# Our path inside a layer -> the HF name under `model.layers.{i}.`; kernels are transposed.
LAYER_TENSORS = {
    ("attn", "q", "kernel"): "self_attn.q_proj.weight",
    ("attn", "k", "kernel"): "self_attn.k_proj.weight",
    ("attn", "v", "kernel"): "self_attn.v_proj.weight",
    ("attn", "o", "kernel"): "self_attn.o_proj.weight",
    ("mlp", "gate", "kernel"): "mlp.gate_proj.weight",
    ("mlp", "up", "kernel"): "mlp.up_proj.weight",
    ("mlp", "down", "kernel"): "mlp.down_proj.weight",
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
}
TOP_TENSORS = {
    ("embed",): "model.embed_tokens.weight",
    ("final_norm", "scale"): "model.norm.weight",
    ("lm_head", "kernel"): "lm_head.weight",
}
# Qwen2's q/k/v bias (LlamaConfig.qkv_bias), read and written only for configs that have it.
BIAS_TENSORS = {
    ("attn", "q", "bias"): "self_attn.q_proj.bias",
    ("attn", "k", "bias"): "self_attn.k_proj.bias",
    ("attn", "v", "bias"): "self_attn.v_proj.bias",
}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
LLAMA3_ROPE = {"factor": "rope_factor", "low_freq_factor": "rope_low_freq_factor",
               "high_freq_factor": "rope_high_freq_factor",
               "original_max_position_embeddings": "rope_original_max_positions"}  # HF key -> LlamaConfig field
HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
WEIGHTS_INDEX = "model.safetensors.index.json"
SHARD_BYTES = 4 << 30


def layer_tensors(c: LlamaConfig) -> dict[tuple[str, ...], str]:
    """LAYER_TENSORS, with the q/k/v biases for a config that has them."""
    return {**LAYER_TENSORS, **(BIAS_TENSORS if c.qkv_bias else {})}


def _hf_tensor_name(path: tuple[str, ...], layer: int | None) -> str:
    if layer is None:
        return TOP_TENSORS[path]
    return f"model.layers.{layer}.{LAYER_TENSORS.get(path) or BIAS_TENSORS[path]}"


def _is_kernel(path: tuple[str, ...]) -> bool:
    return path[-1] == "kernel"


def config_from_hf_dir(directory: str | os.PathLike, **overrides) -> LlamaConfig:
    """The config of an HF directory: its config.json, with the end-of-sequence ids of its
    generation_config.json too (an instruct model ends its turns with a token config.json may not name: Llama 3's
    <|eot_id|>, Qwen2.5's <|im_end|>; transformers' generate stops at those)."""
    directory = Path(directory)
    hf = read_json(directory / "config.json")
    generation = directory / GENERATION_CONFIG
    extra = read_json(generation).get("eos_token_id") if generation.is_file() else None
    if extra is not None:
        ids = [i for value in (hf.get("eos_token_id"), extra) if value is not None
               for i in (value if isinstance(value, list) else [value])]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise WeightsError(f"{generation}: eos_token_id {extra!r} is not a token id or a list of them")
        hf = {**hf, "eos_token_id": list(dict.fromkeys(ids))}
    return config_from_hf(hf, str(directory / "config.json"), **overrides)


def config_from_hf(hf: dict, source: str = "config.json", **overrides) -> LlamaConfig:
    """Map a transformers config dict of the LLaMA family (llama, mistral, qwen2) to ours; refuse in one line,
    naming the field, what the one model does not implement."""
    model_type = hf.get("model_type", "llama")
    arch = hf.get("architectures") or [ARCHITECTURES.get(model_type, "LlamaForCausalLM")]
    if model_type not in ARCHITECTURES or arch[0] not in ARCHITECTURES.values():
        raise WeightsError(f"{source}: model_type={model_type!r}, architectures={arch} is not a LLaMA model "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    if rope_type not in ROPE_TYPES:
        raise WeightsError(f"{source}: rope scaling type {rope_type!r} is not implemented (supported: "
                           f"{', '.join(ROPE_TYPES)})")
    if hf.get("attention_bias") and model_type != "qwen2" or hf.get("mlp_bias"):  # llama's is on o too
        raise WeightsError(f"{source}: attention_bias/mlp_bias are not implemented (only Qwen2's q/k/v bias)")
    if hf.get("hidden_act", "silu") != "silu":
        raise WeightsError(f"{source}: hidden_act={hf['hidden_act']!r} is not implemented (only silu)")
    missing = [key for key in HF_REQUIRED if key not in hf]
    if missing:
        raise WeightsError(f"{source}: no field {missing[0]!r} (an HF LLaMA config.json has {', '.join(HF_REQUIRED)})")
    eos = hf.get("eos_token_id", 2)
    fields = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        qkv_bias=model_type == "qwen2",
        sliding_window=_sliding_window(hf, model_type, source),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
        pad_token_id=hf.get("pad_token_id"),
    )
    if rope_type == "llama3":
        missing = [key for key in LLAMA3_ROPE if key not in rope]
        if missing:
            raise WeightsError(f"{source}: rope scaling 'llama3' without {missing[0]!r}")
        fields.update(rope_type="llama3", **{ours: rope[key] for key, ours in LLAMA3_ROPE.items()})
    fields.update(overrides)
    return checked_config(fields, source)


def _sliding_window(hf: dict, model_type: str, source: str) -> int | None:
    """Mistral's window (null in its later versions, and for every layer); Qwen2's where its layers use one
    (use_sliding_window from max_window_layers on, or layer_types): all of them, as the one model applies the
    window to every layer (some only is refused)."""
    if model_type == "mistral":
        return hf.get("sliding_window")
    if model_type != "qwen2" or not hf.get("sliding_window"):
        return None
    kinds = hf.get("layer_types") or [
        "sliding_attention" if hf.get("use_sliding_window") and i >= hf.get("max_window_layers", 28) else
        "full_attention" for i in range(hf["num_hidden_layers"])]  # Qwen2Config's default
    if "sliding_attention" not in kinds:
        return None
    if "full_attention" in kinds:
        raise WeightsError(f"{source}: a sliding window on some layers only (layer_types, max_window_layers) is not "
                           "implemented (the one model slides every layer or none)")
    return hf["sliding_window"]


def checked_config(fields: dict, source: str) -> LlamaConfig:
    """LlamaConfig(**fields), or a WeightsError naming `source` when its values do not make a model (a head
    count that does not divide the hidden size, a zero or negative size)."""
    try:
        return LlamaConfig(**fields)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{source}: {e}") from None


def config_to_hf(c: LlamaConfig) -> dict:
    """The config.json of `c`'s family (LlamaConfig.family): transformers builds the same model from it."""
    rope = {"rope_type": c.rope_type, "rope_theta": c.rope_theta}
    if c.rope_type == "llama3":
        rope.update({key: getattr(c, ours) for key, ours in LLAMA3_ROPE.items()})
    hf = {
        "architectures": [ARCHITECTURES[c.family]],
        "model_type": c.family,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rope_theta": c.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": None if c.rope_type == "default" else rope,  # transformers 4.x reads this one
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": list(c.eos_token_ids) if len(c.eos_token_ids) > 1 else c.eos_token_ids[0],
        "pad_token_id": c.pad_token_id,
        "torch_dtype": c.param_dtype,
    }
    if c.family == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    elif c.family == "mistral":
        hf.update(sliding_window=c.sliding_window)
    else:  # qwen2: the bias is implied; a window applies to every layer
        window = c.sliding_window is not None
        hf.update(use_sliding_window=window, sliding_window=c.sliding_window, max_window_layers=0 if window else
                  c.num_layers)
    return hf


def expected_shapes(c: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a LLaMA weights file must hold for config `c`, by HF name, in HF's layout ([out, in] for
    kernels): the model's own parameter shapes, so the check and the model cannot disagree."""
    shapes = param_shapes(c)

    def hf_shape(path, shape):
        return tuple(reversed(shape)) if _is_kernel(path) else tuple(shape)

    expected = {}
    for path in TOP_TENSORS:
        if not (path == ("lm_head", "kernel") and c.tie_embeddings):
            expected[_hf_tensor_name(path, None)] = hf_shape(path, _node(shapes, path).shape)
    for path in layer_tensors(c):
        shape = hf_shape(path, _node(shapes["layers"], path).shape[1:])
        expected.update((_hf_tensor_name(path, layer), shape) for layer in range(c.num_layers))
    return expected


def check_shapes(c: LlamaConfig, shape_of: Callable[[str], tuple[int, ...]], where: Callable[[str], str],
                 config_source: str) -> dict[str, tuple[int, ...]]:
    """A WeightsError naming the first tensor (`where(hf_name)`: its file and its name there) whose shape is not
    the one the config gives it, before any tensor is read (`shape_of(hf_name)` reads a header only, and
    raises for a missing tensor). Returns the expected shapes."""
    expected = expected_shapes(c)
    for name, shape in expected.items():
        found = tuple(shape_of(name))
        if found != shape:
            raise WeightsError(
                f"{where(name)} has shape {list(found)}, but {config_source} makes it "
                f"{list(shape)} (vocab_size={c.vocab_size}, hidden_size={c.hidden_size}, intermediate_size="
                f"{c.intermediate_size}, heads={c.num_heads}, kv_heads={c.num_kv_heads}, head_dim={c.head_dim}): "
                "the weights or the config are damaged, or they belong to different models")
    return expected


def _node(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def params_from_tensors(c: LlamaConfig, read: Callable[[str], np.ndarray], expected: dict[str, tuple[int, ...]],
                        dtype=np.float32) -> dict:
    """Build our param tree from `read(hf_name) -> [out, in] array` (of the `expected` shapes, checked by
    check_shapes), filling stacked layers of `dtype` in place (host memory: the model once in `dtype`, plus
    one tensor)."""
    params: dict = {}

    def put(path, value):
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    for path in TOP_TENSORS:
        if path == ("lm_head", "kernel") and c.tie_embeddings:
            continue
        value = read(_hf_tensor_name(path, None))
        put(path, np.ascontiguousarray(value.T if _is_kernel(path) else value, dtype=dtype))
    for path in layer_tensors(c):
        shape = expected[_hf_tensor_name(path, 0)]
        stacked = np.empty((c.num_layers, *(reversed(shape) if _is_kernel(path) else shape)), dtype)
        for layer in range(c.num_layers):
            value = read(_hf_tensor_name(path, layer))
            stacked[layer] = value.T if _is_kernel(path) else value
        put(("layers",) + path, stacked)
    return params


def tensors_from_params(c: LlamaConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """The inverse of `params_from_tensors`: (hf_name, [out, in] array) pairs."""

    def get(path):
        node = params
        for key in path:
            node = node[key]
        return np.asarray(node)

    for path in TOP_TENSORS:
        if path == ("lm_head", "kernel") and c.tie_embeddings:
            continue
        value = get(path)
        yield _hf_tensor_name(path, None), value.T if _is_kernel(path) else value
    for path in layer_tensors(c):
        stacked = get(("layers",) + path)
        for layer in range(c.num_layers):
            yield _hf_tensor_name(path, layer), stacked[layer].T if _is_kernel(path) else stacked[layer]


class SafetensorsReader:
    """Reads named tensors from a directory's safetensors files, one at a time, sharded or not."""

    def __init__(self, directory: Path):
        self.directory = directory
        index = directory / WEIGHTS_INDEX
        if index.exists():
            self.where = {k: directory / v for k, v in read_json(index)["weight_map"].items()}
        else:
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                raise WeightsError(f"{directory}: no *.safetensors files (pickled .bin weights are not loaded)")
            self.where = {}
            for f in files:
                with _open_safetensors(f) as handle:
                    self.where.update({k: f for k in handle.keys()})
        self._handles: dict[Path, object] = {}

    def file(self, name: str) -> Path:
        if name not in self.where:
            raise WeightsError(f"{self.directory}: tensor {name!r} is missing from the safetensors files")
        return self.where[name]

    def _handle(self, name: str):
        path = self.file(name)
        if path not in self._handles:
            self._handles[path] = _open_safetensors(path).__enter__()
        return self._handles[path]

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape from its file's header, reading none of its data."""
        try:
            return tuple(self._handle(name).get_slice(name).get_shape())
        except WeightsError:
            raise
        except Exception as e:  # an index naming a tensor its file lacks
            raise WeightsError(f"{self.file(name)}: cannot read tensor {name!r}: {e}") from e

    def __call__(self, name: str) -> np.ndarray:
        try:
            return self._handle(name).get_tensor(name)
        except WeightsError:
            raise
        except Exception as e:  # truncated or corrupt payload
            raise WeightsError(f"{self.file(name)}: cannot read tensor {name!r}: {e}") from e


def _open_safetensors(path: Path):
    try:
        return safe_open(str(path), framework="numpy")
    except Exception as e:
        raise WeightsError(f"{path}: not a readable safetensors file: {e}") from e


def load_hf_dir(directory: str | os.PathLike, **config_overrides):
    """(config, params) from an HF LLaMA directory. bf16 files are widened to float32 on read."""
    directory = Path(directory)
    config = config_from_hf_dir(directory, **config_overrides)
    reader = SafetensorsReader(directory)
    expected = check_shapes(config, reader.shape, lambda name: f"{reader.file(name)}: tensor {name!r}",
                            str(directory / "config.json"))
    params = params_from_tensors(config, lambda name: _to_numpy(reader(name)), expected,
                                 np.dtype(config.weights_dtype))
    return config, params


def _to_numpy(x) -> np.ndarray:
    # safetensors' numpy backend yields ml_dtypes bfloat16 for bf16 tensors; widen for exact copies.
    return x.astype(np.float32) if x.dtype != np.float32 else x


def save_hf_dir(config: LlamaConfig, params: dict, directory: str | os.PathLike, tokenizer=None,
                overwrite: bool = False) -> Path:
    """Write config.json, generation_config.json and safetensors (sharded past 4 GiB, with an index) atomically
    into `directory`; an existing folder only as io.files.check_replaceable allows."""
    with atomic_directory(directory, overwrite) as tmp:
        hf = config_to_hf(config)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        # what generate stops at, where servers and transformers look first (a tuned model's end of turn too)
        generation = {key: hf[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (tmp / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2))
        weight_map, shard, shard_bytes, total = {}, {}, 0, 0

        def flush():
            fname = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})

        for name, value in tensors_from_params(config, params):
            if shard and shard_bytes + value.nbytes > SHARD_BYTES:
                flush()
                shard, shard_bytes = {}, 0
            shard[name] = np.ascontiguousarray(value)
            shard_bytes += value.nbytes
            total += value.nbytes
        flush()
        if len(set(weight_map.values())) == 1:
            os.replace(tmp / "model-00001.safetensors", tmp / "model.safetensors")
        else:
            (tmp / WEIGHTS_INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                                         "weight_map": weight_map}, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(directory)
