"""Unbabel/TowerBase-7B-v0.1: the model section of a training config (weights: a local HF directory)."""

from ml_collections import ConfigDict

HUB_NAME = "Unbabel/TowerBase-7B-v0.1"


def get_config() -> ConfigDict:
    # Download Unbabel/TowerBase-7B-v0.1 (e.g. huggingface-cli download) and point model.source at the directory;
    # "preset:tower-7b" trains the same shapes from random weights (benchmarks, smoke tests).
    return ConfigDict({"source": "", "hub_name": HUB_NAME, "remat": "full"})
