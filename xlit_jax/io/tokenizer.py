"""Tokenizers: from an HF directory, or built straight from a GGUF file's vocabulary.

For byte-level BPE GGUFs (SmolLM2, LLaMA-3) we build the `tokenizers` object from the vocab and merges
ourselves, which takes a fraction of a second; transformers' general GGUF conversion (used for other
tokenizer types) takes several seconds.
"""

from __future__ import annotations

import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

CONTROL_TOKEN_TYPES = (3, 4)  # GGUF token types CONTROL and USER_DEFINED: never split, kept whole


def load_hf_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(directory))


def load_tokenizer(src: str) -> PreTrainedTokenizerBase:
    """A tokenizer without its model: `smollm2-135m`, a .gguf file, or an HF directory or hub name."""
    from xlit_jax.io.gguf import GGUFFile, smollm2_gguf_path

    if src == "smollm2-135m" or str(src).endswith(".gguf"):
        return tokenizer_from_gguf(GGUFFile(smollm2_gguf_path() if src == "smollm2-135m" else src))
    return load_hf_tokenizer(src)


def tokenizer_from_gguf(f) -> PreTrainedTokenizerBase:
    """`f` is an io.gguf.GGUFFile."""
    if f.value("tokenizer.ggml.model") != "gpt2":
        return AutoTokenizer.from_pretrained(str(f.path.parent), gguf_file=f.path.name)
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = f.require("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in f.require("tokenizer.ggml.merges")]
    types = f.value("tokenizer.ggml.token_type", [1] * len(tokens))
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False,
                                   continuing_subword_prefix="", end_of_word_suffix=""))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind in CONTROL_TOKEN_TYPES])

    def token(key):
        index = f.value(key)
        return tokens[index] if index is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"),
        chat_template=f.value("tokenizer.chat_template"),
    )
