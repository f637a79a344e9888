"""The line- and word-level language verdicts of the Language Confusion Benchmark (LCB; Marchisio et al.
2024, "Understanding and Mitigating Language Confusion in LLMs"): the rules of its released
compute_metrics.py, in our code. The scorer and LCB's tables are evaluate/instructions/confusion.py; the
training probes use the line level too (train/probes.py).

Per response: LCB's normalisation (the text before a first "\\nQ:", stripped, ASCII punctuation removed, em
dashes made spaces, Arabic commas removed), then its lines; a line counts when it has at least 5 tokens
(whitespace tokens; Chinese by jieba, Japanese by MeCab through fugashi). A response with no such line is
left out, as LCB leaves it out of both rates. It passes the line level when fastText identifies every
counted line as the wanted language with probability > 0.3, and the word level when, besides, no token of
those lines is in LCB's English word list (lower-case words longer than 3 letters).
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.errors import InputError

MIN_TOKENS = 5
MIN_PROBABILITY = 0.3  # a line identified with this probability or less is "unknown", a wrong line
ENGLISH_WORDS_FILE = Path("language_confusion/english_words.txt")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """LCB's normalisation. LCB reads its CSV files with Python's universal newlines, so a CR or CRLF in
    a completion reaches it as a line break: done here, so responses from any source are read alike."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.split("\nQ:")[0].strip()  # a base model's next turn of a Q/A pattern is no answer
    text = text.translate(_PUNCTUATION)
    return text.replace("\u2014", " ").replace("\u060c", "")


def english_words(path: Path) -> frozenset[str]:
    """LCB's word list as its script keeps it: lower-case entries longer than 3 letters."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (LCB's English word list, in the shared data)") from None
    return frozenset(w for w in (line.strip() for line in lines) if w.islower() and len(w) > 3)


class Tokenizer:
    """LCB's tokens of a line: jieba for Chinese, MeCab (fugashi, `-O wakati`) for Japanese, else whitespace.
    The segmenters load on first use, so a run without zh or ja needs neither."""

    def __init__(self):
        self._jieba = None
        self._tagger = None

    def __call__(self, line: str, language: str) -> list[str]:
        if language == "zh":
            if self._jieba is None:
                import jieba  # loads on first use: a dictionary, needed for Chinese only

                jieba.setLogLevel(logging.WARNING)  # its dictionary-building chatter
                jieba.initialize()
                self._jieba = jieba
            return self._jieba.lcut(line)
        if language == "ja":
            if self._tagger is None:
                from fugashi import Tagger  # loads on first use: MeCab's dictionary, needed for Japanese only

                self._tagger = Tagger("-O wakati -b 50000")  # LCB's options: space-separated, a large buffer
            return self._tagger.parse(line).split()
        return line.split()


class Detector:
    """LCB's line- and word-level verdicts on responses (without `words`, LCB's English list, the line level
    only)."""

    def __init__(self, lid: LanguageIdentifier, words: frozenset[str] = frozenset()):
        self._lid = lid
        self._words = words
        self._tokenize = Tokenizer()

    def counted_lines(self, text: str, language: str) -> list[tuple[str, list[str]]]:
        """(line, its tokens) for each line of at least MIN_TOKENS tokens, after normalisation."""
        tokenized = ((line, self._tokenize(line, language)) for line in normalize(text).split("\n"))
        return [(line, tokens) for line, tokens in tokenized if len(tokens) >= MIN_TOKENS]

    def verdicts(self, texts: list[str], languages: list[str]) -> list[dict | None]:
        """Per response None (no counted line: LCB leaves it out) or {lines, wrong: [(line, detected)],
        english: [words]} (English words are looked for only when no line is wrong, as LCB does)."""
        counted = [self.counted_lines(text, lang) for text, lang in zip(texts, languages)]
        # One fastText call for the chunk; lines are passed as they are, as LCB's script passes them.
        found = iter(self._lid.predict_lines([line for lines in counted for line, _ in lines]))
        results = []
        for lines, lang in zip(counted, languages):
            detected = [label if p > MIN_PROBABILITY else "unknown" for label, p in (next(found) for _ in lines)]
            if not lines:
                results.append(None)
                continue
            wrong = [(line, d) for (line, _), d in zip(lines, detected) if d != lang]
            english = [] if wrong else [t.strip() for _, tokens in lines for t in tokens if t.strip() in self._words]
            results.append({"lines": len(lines), "wrong": wrong, "english": english})
        return results
