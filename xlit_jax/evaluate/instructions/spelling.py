"""Spelling correctness (the paper's second surface metric): the share of correctly spelled words."""

from __future__ import annotations

from xlit_jax.data.spelling import SpellChecker
from xlit_jax.evaluate.instructions.scorer import Scorer


class SpellingScorer(Scorer):
    """Share of correctly spelled words, for responses in the language they should be in; for a language
    other than English, given an English dictionary, also the share of words code-switched into English
    (rejected by the language's dictionary, accepted by English's).

    A response in another language is left out: the expected language's dictionary would count
    every word of it as misspelled, measuring language, not spelling.
    """

    name = "spelling"
    chunk_size = 256
    listed = 20  # misspelled words kept per response, for a person reading the scores

    def __init__(self, checker: SpellChecker, lid):
        self._checker = checker
        self._lid = lid

    def _one(self, item, text: str, detected: str | None) -> dict:
        if detected != item.expected_language:
            return {"scores": {}, "details": {"skipped": f"response identified as {detected}"}}
        checked, bad = self._checker.misspelled(text, item.expected_language)
        if not checked:
            return {"scores": {}, "details": {"skipped": "no words to check"}}
        result = {"scores": {"spelling": 1.0 - len(bad) / checked},
                  "details": {"words": checked, "misspelled": bad[:self.listed]}}
        english = self._checker.english_only(bad) if item.expected_language != "en" else None
        if english is not None:  # code switching: the share of words only English's dictionary takes
            result["scores"]["code_switching"] = len(english) / checked
            result["details"]["english"] = english[:self.listed]
        return result

    def score(self, items, responses) -> list[dict]:
        detected = self._lid.predict(responses)
        return [self._one(item, text, language) for item, text, (language, _) in zip(items, responses, detected)]
