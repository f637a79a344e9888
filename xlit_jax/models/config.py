"""The LLaMA-family model config: one dataclass shared by training, decoding and conversion.

It holds the architecture (shapes, tokens) and its numerics only. A LoRA is a transformation of the model
chosen by the training config (models/lora.py: `LoraConfig`), and the attention kernel a choice of the
machine that runs it (models/attention.py: the `attention` argument of the model, the train step and the
decoding functions)."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots")
ROPE_TYPES = ("default", "llama3")  # plain RoPE; Llama 3.x's frequency scaling (models/llama.py: rope_frequencies)


def resolve_dtype(name: str, platform: str | None = None) -> str:
    """'auto': bfloat16 on accelerators, float32 on CPU (where bf16 is emulated and slow). `platform` defaults
    to the attached devices'; a compile-only plan passes its target's."""
    if name != "auto":
        return name
    return "float32" if (platform or jax.devices()[0].platform) == "cpu" else "bfloat16"


def inference_dtypes(name: str = "auto") -> dict[str, str]:
    """Config overrides for inference: params stored in the compute dtype (bfloat16 on accelerators halves
    the weights' memory and bandwidth; there are no master weights to keep). Softmax, norms and logits
    stay float32 whatever the dtype."""
    dtype = resolve_dtype(name)
    return {"dtype": dtype, "param_dtype": dtype}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """One decoder for the LLaMA family and its close relatives, which differ from LLaMA-2 in a few fields:
    Llama 3.x's RoPE frequency scaling (rope_type="llama3" and the rope_* fields), Qwen2's bias on the q/k/v
    projections (qkv_bias) and tied embeddings (tie_embeddings, also SmolLM2's), Mistral's sliding window
    (sliding_window: each query sees itself and the sliding_window - 1 tokens before it)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    # rope_type="llama3" (HF rope_scaling/rope_parameters): the frequencies of wavelength above
    # original/low_freq_factor are divided by rope_factor, those below original/high_freq_factor kept, and
    # the ones between interpolated (the rope_* fields are ignored for "default").
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    qkv_bias: bool = False  # Qwen2: a bias on the q, k and v projections (not o)
    sliding_window: int | None = None  # Mistral: keys fewer than this many positions back; None: no window
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = None
    # Numerics and memory: params are kept in `param_dtype`, matmuls run in `dtype`.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "dots"  # none | full | dots (save matmul outputs, recompute the rest)

    def __post_init__(self):
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads")
        bad = [f"{name}={getattr(self, name)!r}" for name in sizes
               if not isinstance(getattr(self, name), numbers.Integral) or getattr(self, name) < 1]
        if bad:  # before the divisions below
            raise ValueError(f"invalid LlamaConfig: {', '.join(bad)}: sizes are positive integers")
        problems = []
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:  # a damaged config: no head size splits hidden_size
                problems.append(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
            problems.append(f"dtype/param_dtype must be one of {sorted(DTYPES)}")
        if self.rope_type not in ROPE_TYPES:
            problems.append(f"rope_type={self.rope_type!r} is not one of {ROPE_TYPES}")
        elif self.rope_type == "llama3" and not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
            problems.append(f"rope_low_freq_factor={self.rope_low_freq_factor} and rope_high_freq_factor="
                            f"{self.rope_high_freq_factor}: llama3 scaling needs 0 < low < high")
        if self.sliding_window is not None and self.sliding_window < 1:
            problems.append(f"sliding_window={self.sliding_window!r} is not positive (None: no window)")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
        if problems:
            raise ValueError("invalid LlamaConfig: " + "; ".join(problems))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weights_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def max_positions(self) -> int:
        """The longest sequence this model runs: its positions (a sliding window limits what a token sees, not
        how long a sequence is)."""
        return self.max_position_embeddings

    @property
    def family(self) -> str:
        """The HF model type whose architecture this config needs (the export's model_type): qwen2 for
        q/k/v biases, mistral for a sliding window, llama otherwise (Llama 3.x's rope scaling included)."""
        return "qwen2" if self.qkv_bias else "mistral" if self.sliding_window else "llama"

    def replace(self, **changes: Any) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embeddings: bool = True) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        attn += hd * (self.num_heads + 2 * self.num_kv_heads) if self.qkv_bias else 0
        per_layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + d + (emb if include_embeddings else 0)

    def matmul_params(self) -> int:
        """The weights a token is multiplied by: the projections (k and v at the KV heads' width) and the LM
        head, which is a matmul whether or not it is tied to the embedding; not the embedding lookup, the
        norms or Qwen2's q/k/v biases, which are additions."""
        d, hd = self.hidden_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        return self.num_layers * (attn + 3 * d * self.intermediate_size) + self.vocab_size * d

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token as in PaLM's MFU: 6N for the matmuls plus 12*L*H*D*T for attention."""
        attention = 2 * self.num_layers * seq_len * self.num_heads * self.head_dim
        return 6.0 * self.matmul_params() + 6.0 * attention
