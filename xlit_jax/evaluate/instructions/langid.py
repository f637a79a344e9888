"""Language correctness (the paper's first surface metric): is the response in the language it should be in?"""

from __future__ import annotations

from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.evaluate.instructions.scorer import Scorer


class LanguageScorer(Scorer):
    """Language correctness: 1.0 when the response is identified as the language it should be in."""

    name = "language"
    chunk_size = 256

    def __init__(self, lid: LanguageIdentifier):
        self._lid = lid

    def score(self, items, responses) -> list[dict]:
        return [{"scores": {"language_correct": float(language == item.expected_language)},
                 "details": {"detected": language, "probability": round(probability, 4)}}
                for item, (language, probability) in zip(items, self._lid.predict(responses))]
