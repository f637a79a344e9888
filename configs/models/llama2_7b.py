"""meta-llama/Llama-2-7b-hf: the model section of a training config (weights: a local HF directory)."""

from ml_collections import ConfigDict

HUB_NAME = "meta-llama/Llama-2-7b-hf"


def get_config() -> ConfigDict:
    # Download meta-llama/Llama-2-7b-hf (e.g. huggingface-cli download) and point model.source at the directory;
    # "preset:llama2-7b" trains the same shapes from random weights (benchmarks, smoke tests).
    return ConfigDict({"source": "", "hub_name": HUB_NAME, "remat": "full"})
