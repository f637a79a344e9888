import pytest

from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.data.spelling import SpellChecker, words
from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions.evalsets import EvalItem
from xlit_jax.evaluate.instructions.spelling import SpellingScorer

CLEAN = {
    "en": "The weather was lovely yesterday, so we walked along the river and didn't want to go home.",
    "fr": "Aujourd'hui, l'école est fermée parce qu'il neige beaucoup dans notre petite ville.",
    "pt": "Ontem fomos à praia com os nossos amigos e comemos peixe grelhado num restaurante.",
    "ru": "Вчера мы гуляли в парке с друзьями, а потом пили чай у бабушки.",
    "de": "Gestern sind wir mit unseren Freunden in den Bergen gewandert und haben viel gelacht.",
}


@pytest.fixture(scope="module")
def checker():
    return SpellChecker(CLEAN)


def test_words_leave_out_code_urls_numbers_and_acronyms():
    text = ("See https://example.org/a_b?c=1 or mail me@host.com. In the 1920s, NASA's `x_1 = f(y)` "
            "ran on <b>iPhone</b> at 3.5 GHz, e.g. well-known \u201cquoted\u201d don\u2019t\n"
            "```python\nprint('hello wrold')\n```\nDone.")
    assert words(text) == ["See", "or", "mail", "In", "the", "ran", "on", "at", "well-known", "quoted", "don't",
                           "Done"]


@pytest.mark.parametrize("language", sorted(CLEAN))
def test_clean_text_passes_and_typos_are_caught(checker, language):
    checked, bad = checker.misspelled(CLEAN[language], language)
    assert checked >= 10 and bad == []
    first, second, *rest = CLEAN[language].split()
    typo = second[:-1] + second[-1] * 3  # e.g. "weather" -> "weatherrr"
    checked, bad = checker.misspelled(" ".join([first, typo, *rest]), language)
    assert bad == [typo.strip(",")]


def test_missing_dictionaries_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match=r"fr.dic: missing Hunspell dictionary for 'fr' \(install hunspell-fr\)"):
        SpellChecker(["fr"], directory=tmp_path)
    with pytest.raises(InputError, match="no Hunspell dictionary is set for language 'ja'"):
        SpellChecker(["ja"])


def test_portuguese_accepts_either_variant_and_one_can_be_chosen():
    both, european = SpellChecker(["pt"]), SpellChecker(["pt"], dictionaries={"pt": "pt_PT"})
    text = "Eu gosto de ônibus, de fato, e da política económica, de facto."  # Brazilian, then European
    assert both.misspelled(text, "pt")[1] == []
    assert european.misspelled(text, "pt")[1] == ["ônibus"]
    assert both.misspelled("Eu gosto de ônibuss.", "pt")[1] == ["ônibuss"]


def test_spelling_score_leaves_out_wrong_language(checker):
    scorer = SpellingScorer(checker, LanguageIdentifier())
    item = EvalItem("s", "fr", "1", ({"role": "user", "content": "x"},), "fr")
    right, wrong, typo = scorer.score([item] * 3, [CLEAN["fr"], CLEAN["en"], CLEAN["fr"].replace("école", "écolle")])
    assert right["scores"] == {"spelling": 1.0, "code_switching": 0.0}
    assert wrong["scores"] == {} and "identified as en" in wrong["details"]["skipped"]
    assert typo["scores"]["spelling"] == pytest.approx(1 - 1 / right["details"]["words"])
    assert typo["details"]["misspelled"] == ["l'écolle"] and typo["scores"]["code_switching"] == 0.0


def test_code_switching_counts_words_only_english_takes(checker):
    """A typo is misspelled French, not English; an English word in a French answer is code switching."""
    scorer = SpellingScorer(checker, LanguageIdentifier())
    item = EvalItem("s", "fr", "1", ({"role": "user", "content": "x"},), "fr")
    mixed = "Aujourd'hui nous avons parlé du weather, puis du garden et des flowers de notre petite ville."
    (result,) = scorer.score([item], [mixed])
    assert result["details"]["english"] == ["weather", "garden", "flowers"]
    assert result["scores"]["code_switching"] == pytest.approx(3 / result["details"]["words"])
    english = EvalItem("s", "en", "1", ({"role": "user", "content": "x"},), "en")
    assert "code_switching" not in scorer.score([english], [CLEAN["en"]])[0]["scores"]
