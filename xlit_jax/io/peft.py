"""LoRA exports: a PEFT adapter directory (for `peft.PeftModel.from_pretrained` on the HF base model) and
merged HF weights (the adapters folded into the base; loads as a plain LlamaForCausalLM).

Our adapters are lora_a [in, r] and lora_b [r, out] with scale alpha / r; PEFT stores lora_A.weight [r, in]
and lora_B.weight [out, r] with the same scale, so export is a transpose per layer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from xlit_jax.io.files import atomic_directory
from xlit_jax.io.hf import LAYER_TENSORS, save_hf_dir
from xlit_jax.models.config import LlamaConfig
from xlit_jax.models.lora import LoraConfig, merge_lora, split_lora

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _target_modules(lora: LoraConfig) -> dict[tuple[str, str], str]:
    """(block, projection) -> HF module path inside a layer, e.g. ("attn", "q") -> "self_attn.q_proj"."""
    return {path[:2]: name.removesuffix(".weight") for path, name in LAYER_TENSORS.items()
            if path[-1] == "kernel" and path[1] in lora.targets}


def adapter_tensors(config: LlamaConfig, lora: LoraConfig, params) -> dict[str, np.ndarray]:
    """PEFT-named [r, in] / [out, r] tensors for every adapted projection of every layer."""
    layers = split_lora(params)[1]["layers"]
    tensors = {}
    for (block, proj), module in _target_modules(lora).items():
        a, b = np.asarray(layers[block][proj]["lora_a"]), np.asarray(layers[block][proj]["lora_b"])
        for i in range(config.num_layers):
            prefix = f"base_model.model.model.layers.{i}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    return tensors


def save_peft_adapter(config: LlamaConfig, lora: LoraConfig, params, directory: str | os.PathLike,
                      base_model_name_or_path: str | None = None, overwrite: bool = False) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (float32) of `params`' `lora` adapters atomically
    into `directory` (an existing folder only as io.files.check_replaceable allows)."""
    if lora is None:
        raise ValueError("save_peft_adapter: no LoRA (lora is None)")
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted({m.split(".")[-1] for m in _target_modules(lora).values()}),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    tensors = {k: v.astype(np.float32) for k, v in adapter_tensors(config, lora, params).items()}
    with atomic_directory(directory, overwrite) as tmp:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return Path(directory)


def save_merged_hf(config: LlamaConfig, lora: LoraConfig | None, params, directory: str | os.PathLike,
                   tokenizer=None, overwrite: bool = False) -> Path:
    """An HF LLaMA directory with `lora`'s adapters (None: none) folded into the kernels."""
    merged = params if lora is None else merge_lora(params, lora)
    return save_hf_dir(config, merged, directory, tokenizer, overwrite)
