"""Named models: their shapes (PRESETS) and, for the real ones, their hub names (HUB_NAMES), the one home of
both. `preset:NAME` builds the shape with seeded random weights; real weights come from a local copy of
the hub name (or, for smollm2-135m, the GGUF that xlit_jax.load finds)."""

import difflib

from xlit_jax.errors import InputError
from xlit_jax.models.config import LlamaConfig

PRESETS = {
    "llama2-7b": LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
        num_heads=32, num_kv_heads=32, max_position_embeddings=4096, pad_token_id=0),
    "llama2-13b": LlamaConfig(
        vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_layers=40,
        num_heads=40, num_kv_heads=40, max_position_embeddings=4096, pad_token_id=0),
    # TowerBase-7B is LLaMA-2-7B continued on multilingual data, with an extended vocabulary.
    "tower-7b": LlamaConfig(
        vocab_size=32007, hidden_size=4096, intermediate_size=11008, num_layers=32,
        num_heads=32, num_kv_heads=32, max_position_embeddings=4096, pad_token_id=0),
    # A 1B-class GQA shape (TinyLlama-1.1B) for perf measurements between the tiny and the 7B models.
    "llama-1b": LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
        num_heads=32, num_kv_heads=4, max_position_embeddings=2048, pad_token_id=0),
    "smollm2-135m": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
        num_heads=9, num_kv_heads=3, rope_theta=100000.0, tie_embeddings=True,
        max_position_embeddings=8192, bos_token_id=1, eos_token_ids=(2,), pad_token_id=2),
    # Tiny shapes for tests: GQA (4 heads / 2 KV heads) and tied / untied embeddings.
    "tiny": LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, max_position_embeddings=512, pad_token_id=0),
    "tiny-tied": LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=1, tie_embeddings=True, rope_theta=100000.0,
        max_position_embeddings=512, pad_token_id=0),
}


# What a config's model.source should hold for each real model: a local copy (HF directory) of this repo.
HUB_NAMES = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "tower-7b": "Unbabel/TowerBase-7B-v0.1",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def get_preset(name: str) -> LlamaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"unknown model preset {name!r} ({hint}known: {', '.join(sorted(PRESETS))})") from None
