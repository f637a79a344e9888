"""Tokenizers: from an HF directory, or built straight from a GGUF file's vocabulary.

For byte-level BPE GGUFs (SmolLM2, LLaMA-3) we build the `tokenizers` object from the vocab and merges
ourselves, which takes a fraction of a second; transformers' general GGUF conversion (used for other
tokenizer types) takes several seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from xlit_jax.errors import WeightsError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")  # the first present is named
CONTROL_TOKEN_TYPES = (3, 4)  # GGUF token types CONTROL and USER_DEFINED: never split, kept whole


def load_hf_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of an HF directory; one that cannot be read (a truncated or edited tokenizer.json) is a
    WeightsError naming its file."""
    # transformers (and torch with it, ~3 s) is imported only when a tokenizer is read, here and in
    # tokenizer_from_gguf: `import xlit_jax` and the modules that import this one stay light
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - JSON, tokenizers and sentencepiece errors alike
        files = [Path(directory) / name for name in TOKENIZER_FILES if (Path(directory) / name).exists()]
        where = files[0] if files else directory
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"{where}: cannot read the tokenizer ({reason}); restore it from the model's "
                           "source") from e


def load_tokenizer(src: str) -> PreTrainedTokenizerBase:
    """A tokenizer without its model: `smollm2-135m`, a .gguf file, or an HF directory or hub name."""
    from xlit_jax.io.gguf import GGUFFile, smollm2_gguf_path  # here: io.gguf imports this module

    if src == "smollm2-135m" or str(src).endswith(".gguf"):
        return tokenizer_from_gguf(GGUFFile(smollm2_gguf_path() if src == "smollm2-135m" else src))
    return load_hf_tokenizer(src)


def tokenizer_from_gguf(f) -> PreTrainedTokenizerBase:
    """`f` is an io.gguf.GGUFFile."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # deferred: see load_hf_tokenizer

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


# Refusing a prompt too long for the model before tokenizing it (a 4 MB prompt takes seconds to tokenize):
# one token never stands for more characters than the tokenizer's longest vocabulary entry has (in a
# byte-level vocabulary each character of an entry is one byte, at least as many as the characters they
# spell; the normalizers of LLaMA-family tokenizers never shorten text), so a text longer than positions x
# that length has more tokens than the model has positions. Where no tokenizer is loaded yet (the binaries
# check their input files before loading a model), MAX_TOKEN_CHARS stands for it: above the longest entry
# of every tokenizer we load (SmolLM2's is 81 characters, LLaMA-2's 16).
MAX_TOKEN_CHARS = 256


def longest_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters of text one token of `tokenizer` can stand for (its longest vocabulary entry)."""
    return max(map(len, tokenizer.get_vocab()), default=1)


def prompt_chars(prompt) -> int:
    """The characters of a prompt's text: a string's, or the contents of its chat messages (a chat template
    only adds tokens to them)."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m["content"]) for m in prompt)


def prompt_too_long(prompt, tokens: int, token_chars: int = MAX_TOKEN_CHARS) -> str | None:
    """Why `prompt` cannot fit in `tokens` tokens, found without tokenizing it, or None (when it may fit:
    its token count is checked once tokenized)."""
    chars = prompt_chars(prompt)
    if chars <= tokens * token_chars:
        return None
    return (f"the prompt has {chars} characters: more than the model's {tokens} positions can hold at "
            f"{token_chars} characters per token at most")
