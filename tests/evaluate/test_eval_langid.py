import pytest

from xlit_jax.data.langid import LanguageIdentifier, bundled_lid_model
from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.evalsets import EvalItem
from xlit_jax.evaluate.instructions.langid import LanguageScorer

NTREX = {"en": "newstest2019-src.eng.txt", "fr": "newstest2019-ref.fra.txt", "pt": "newstest2019-ref.por.txt",
         "ru": "newstest2019-ref.rus.txt", "de": "newstest2019-ref.deu.txt"}


@pytest.fixture(scope="module")
def lid():
    return LanguageIdentifier()


def test_the_bundled_model_is_lid176(lid):
    assert bundled_lid_model().name == "lid.176.ftz"
    assert len(lid.languages) == 176 and {"en", "fr", "pt", "ru", "de"} <= lid.languages


@pytest.mark.parametrize("language", sorted(NTREX))
def test_identifies_news_sentences(lid, shared_data, language):
    lines = (shared_data / "ntrex128" / NTREX[language]).read_text(encoding="utf-8").splitlines()[:20]
    predicted = [lang for lang, _ in lid.predict([line.strip() for line in lines])]
    assert sum(p == language for p in predicted) >= 19


def test_multiline_and_empty_texts(lid):
    # fastText's predict refuses newlines; an empty response has no language at all.
    (fr, p_fr), (none, p_none), (ru, _) = lid.predict(
        ["Voici la recette.\n\n1. Mélangez la farine\n2. Ajoutez les œufs", "  \n ", "Привет!\nКак дела?"])
    assert (fr, none, ru) == ("fr", None, "ru")
    assert 0.5 < p_fr <= 1.0 and p_none == 0.0


def test_missing_or_bad_model_and_unknown_language(lid, tmp_path):
    with pytest.raises(InputError, match="no fastText language-id model"):
        LanguageIdentifier(tmp_path / "lid.176.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a fastText model"):
        LanguageIdentifier(junk)
    with pytest.raises(InputError, match="does not know xx"):
        lid.check_languages(["fr", "xx"])


def test_language_correctness_follows_the_expected_language(lid):
    asked_in_french = EvalItem("s", "en", "1", ({"role": "user", "content": "x"},), "fr", modifier="lang_fr")
    plain = EvalItem("s", "en", "2", ({"role": "user", "content": "x"},), "en")
    answer = "La capitale de la France est Paris, une très grande ville."
    results = LanguageScorer(lid).score([asked_in_french, plain], [answer, answer])
    assert [r["scores"]["language_correct"] for r in results] == [1.0, 0.0]
    assert results[1]["details"]["detected"] == "fr"
