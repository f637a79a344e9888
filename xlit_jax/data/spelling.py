"""Spell checking with Hunspell (pyhunspell) and the Debian dictionaries: the words of a text a dictionary
can judge, and which of them it rejects."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from xlit_jax.errors import InputError

DEFAULT_DICTIONARY_DIR = Path("/usr/share/hunspell")
# language code -> Hunspell dictionary name, or names joined by "+" (a word is right when one of them accepts
# it); the Debian package that ships each is named in errors. Portuguese takes both variants: the paper's pt
# prompts are mostly Brazilian (of their 1,078 distinct lower-case words pt_PT rejects 46, pt_BR 25, both 23)
# and an answer in either variant is well spelled (docs/evaluation.md); --dictionaries=pt=pt_PT restores one.
DEFAULT_DICTIONARIES = {"en": "en_US", "fr": "fr", "pt": "pt_BR+pt_PT", "ru": "ru_RU", "de": "de_DE"}
DEBIAN_PACKAGES = {"en_US": "hunspell-en-us", "fr": "hunspell-fr", "pt_PT": "hunspell-pt-pt",
                   "pt_BR": "hunspell-pt-br", "ru_RU": "hunspell-ru", "de_DE": "hunspell-de-de"}

# Spans that are not prose: fenced and inline code, URLs, e-mail addresses, HTML tags and entities.
NOT_PROSE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`|\b(?:https?://|ftp://|www\.)\S+|\S+@\S+\.\w+"
                       r"|</?[A-Za-z][^>]*>|&#?\w+;", re.DOTALL)
APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})
# Characters that mark a token as code, a path, a formula or markup rather than a word.
CODE_CHARS = set("_/\\@#$%&=<>{}[]|~^*+")


def _strip_punctuation(token: str) -> str:
    is_edge = lambda ch: unicodedata.category(ch)[0] in "PS"  # noqa: E731
    start, end = 0, len(token)
    while start < end and is_edge(token[start]):
        start += 1
    while end > start and is_edge(token[end - 1]):
        end -= 1
    return token[start:end]


def _is_word(token: str) -> bool:
    """Letters with at most inner apostrophes and hyphens (`l'école`, `well-known`).

    Numbers, tokens mixing letters and digits, code-like tokens, tokens with inner dots
    (abbreviations, file names), acronyms (all capitals) and inner capitals (`iPhone`,
    `camelCase`) are left out: a dictionary cannot judge them.
    """
    if not token or not any(ch.isalpha() for ch in token):
        return False
    if any(ch.isdigit() or ch in CODE_CHARS for ch in token):
        return False
    if len(token) > 1 and (token.isupper() or any(ch.isupper() for ch in token[1:])):
        return False
    return "." not in token.rstrip(".")


def words(text: str) -> list[str]:
    """The tokens of `text` a spelling dictionary should judge."""
    prose = NOT_PROSE.sub(" ", text).translate(APOSTROPHES)
    return [w for w in map(_strip_punctuation, prose.split()) if _is_word(w)]


class SpellChecker:
    """One Hunspell per language; a missing dictionary is an error when this is built."""

    def __init__(self, languages, directory: str | Path = DEFAULT_DICTIONARY_DIR, dictionaries=None):
        directory = Path(directory)
        names = {**DEFAULT_DICTIONARIES, **(dictionaries or {})}
        self._spellers = {}
        for lang in sorted(set(languages)):
            if lang not in names:
                raise InputError(f"no Hunspell dictionary is set for language {lang!r}; "
                                 f"give one with --dictionaries={lang}=NAME")
            self._spellers[lang] = [_hunspell(directory, name, lang) for name in names[lang].split("+")]

    def _correct(self, spellers, word: str) -> bool:
        if any(s.spell(word) for s in spellers):
            return True
        # A hyphenated compound the dictionary lacks is still correct when each part is.
        parts = [p for p in word.split("-") if p]
        return len(parts) > 1 and all(any(s.spell(p) for s in spellers) for p in parts)

    def english_only(self, rejected: list[str]) -> list[str] | None:
        """Of words another language's dictionary rejected, those English's accepts (code switching); None
        without an English dictionary."""
        speller = self._spellers.get("en")
        return None if speller is None else [w for w in rejected if self._correct(speller, w)]

    def misspelled(self, text: str, language: str) -> tuple[int, list[str]]:
        """(number of words checked, the misspelled ones) for `text` in `language`."""
        spellers = self._spellers[language]
        checked = words(text)
        return len(checked), [w for w in checked if not self._correct(spellers, w)]


def _hunspell(directory: Path, name: str, lang: str):
    """The Hunspell of dictionary `name`; a missing one is an InputError naming its Debian package."""
    import hunspell

    dic, aff = directory / f"{name}.dic", directory / f"{name}.aff"
    for path in (dic, aff):
        if not path.is_file():
            hint = DEBIAN_PACKAGES.get(name, f"the hunspell dictionary {name}")
            raise InputError(f"{path}: missing Hunspell dictionary for {lang!r} (install {hint})")
    return hunspell.HunSpell(str(dic), str(aff))
