"""Named models: their shapes (PRESETS) and, for the real ones, their hub names (HUB_NAMES), the one home of
both. `preset:NAME` builds the shape with seeded random weights; real weights come from a local copy of
the hub name (or, for smollm2-135m, the GGUF that xlit_jax.load finds)."""

import difflib

from xlit_jax.errors import InputError
from xlit_jax.models.config import LlamaConfig

LLAMA3_ROPE = dict(rope_theta=500000.0, rope_type="llama3", rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                   rope_original_max_positions=8192, max_position_embeddings=131072)
LLAMA3_TOKENS = dict(bos_token_id=128000, eos_token_ids=(128001,))  # <|begin_of_text|>, <|end_of_text|>
QWEN2_5 = dict(qkv_bias=True, rope_theta=1000000.0, rms_norm_eps=1e-6, bos_token_id=151643,
               eos_token_ids=(151643,))  # <|endoftext|>

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
    # Today's multilingual bases (numbers from each hub name's config.json; tests/test_model_families.py).
    # Llama 3.x: 128k vocabulary, rope_type llama3 (the 3.2 sizes tie their embeddings).
    "llama3.1-8b": LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, **LLAMA3_ROPE, rope_factor=8.0, **LLAMA3_TOKENS),
    "llama3.2-1b": LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, tie_embeddings=True, **LLAMA3_ROPE, rope_factor=32.0, **LLAMA3_TOKENS),
    "llama3.2-3b": LlamaConfig(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
        num_kv_heads=8, head_dim=128, tie_embeddings=True, **LLAMA3_ROPE, rope_factor=32.0, **LLAMA3_TOKENS),
    # Qwen2.5: q/k/v biases, tied embeddings in the small sizes; no sliding window (use_sliding_window false).
    "qwen2.5-0.5b": LlamaConfig(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, tie_embeddings=True, max_position_embeddings=32768, **QWEN2_5),
    "qwen2.5-7b": LlamaConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
        num_kv_heads=4, max_position_embeddings=131072, **QWEN2_5),
    # Mistral-7B-v0.1: a 4096-token sliding window.
    "mistral-7b": LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, sliding_window=4096, max_position_embeddings=32768),
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
    "llama3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama3.2-3b": "meta-llama/Llama-3.2-3B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
}


def get_preset(name: str) -> LlamaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"unknown model preset {name!r} ({hint}known: {', '.join(sorted(PRESETS))})") from None
