"""The LLaMA-family model config: one dataclass shared by training, decoding and conversion."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # every projection a LoRA can adapt (models/llama.py)
# LoRA defaults, their one home (LlamaConfig, models/lora.py and configs/experiments/base.py read them). The
# paper's text names LoRA and no setting of it; the released code (naver/pasero: its config
# examples/zero-shot-transfer-inst-tuning/config/config_llama13b2_dolly_en_lora.yaml, and pasero's own
# defaults for what that config leaves out) gives the rest.
LORA_RANK = 16  # the paper's LoRA runs: the released config's lora_rank: 16
LORA_ALPHA = 32.0  # our choice (2 x rank, scale 2); pasero's default is 8 (scale 0.5): lora.alpha=8 restores it
LORA_DROPOUT = 0.0  # as released: pasero has no LoRA dropout
LORA_DEFAULT_TARGETS = LORA_TARGETS  # as released: pasero adapts every linear of a layer (q, k, v, o, fc1-3)
REMAT_POLICIES = ("none", "full", "dots")
ATTENTIONS = ("auto", "xla", "cudnn", "splash")  # see models/attention.py


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
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
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
    attention: str = "auto"  # auto | xla | cudnn | splash (models/attention.py)
    splash_block: int = 512  # splash attention's block size (query and key), a multiple of 128
    # LoRA: rank 0 means no adapters; see models/lora.py.
    lora_rank: int = 0
    lora_alpha: float = LORA_ALPHA
    lora_dropout: float = LORA_DROPOUT
    lora_targets: tuple[str, ...] = LORA_DEFAULT_TARGETS

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
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
        if self.attention not in ATTENTIONS:
            problems.append(f"attention={self.attention!r} is not one of {ATTENTIONS}")
        if self.splash_block <= 0 or self.splash_block % 128:
            problems.append(f"splash_block={self.splash_block} is not a positive multiple of 128")
        unknown = set(self.lora_targets) - set(LORA_TARGETS)
        if unknown:
            problems.append(f"unknown lora_targets {sorted(unknown)}; choose from {LORA_TARGETS}")
        if problems:
            raise ValueError("invalid LlamaConfig: " + "; ".join(problems))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weights_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embeddings: bool = True) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + d + (emb if include_embeddings else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token as in PaLM's MFU: 6N for the matmuls plus 12*L*H*D*T for attention."""
        matmul_params = self.num_params(include_embeddings=False) + self.vocab_size * self.hidden_size
        attention = 2 * self.num_layers * seq_len * self.num_heads * self.head_dim
        return 6.0 * matmul_params + 6.0 * attention
