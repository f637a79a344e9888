"""The tiny random preset (2 layers, width 64), its vocabulary grown to SmolLM2's tokenizer: trains in
seconds on a CPU."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    return ConfigDict({"source": "preset:tiny", "hub_name": "", "remat": "dots", "vocab_size": 49152})
