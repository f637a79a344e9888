import pytest

from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.evaluate.instructions.evalsets import EvalItem
from xlit_jax.evaluate.instructions.modifiers import RULES, ModifierScorer, count_list_items, family

LIST_OF_THREE = """Here are some options:

1. **Tennis**: a racket sport.
   - played on courts
   - singles or doubles
2. Swimming, good for the joints.
3) Cycling

Have fun!"""


def test_family():
    assert [family(m) for m in ("num_items_5", "lang_fr", "cap_template", "short")] == [
        "num_items", "lang", "cap_template", "short"]


def test_list_items_count_only_the_outer_level():
    assert count_list_items(LIST_OF_THREE) == 3
    assert count_list_items("- a\n- b\n* c\n• d") == 4
    assert count_list_items("### 1. First\ntext\n### 2. Second\ntext") == 2
    assert count_list_items("No list here, although 2. appears mid-line.") == 0


@pytest.mark.parametrize("modifier, text, expected", [
    ("num_items_3", LIST_OF_THREE, True),
    ("num_items_4", LIST_OF_THREE, False),
    ("cap_template", "Paris Is The Capital Of France, And It's Lovely In Spring.", True),
    ("cap_template", "Paris is the capital of France.", False),
    ("cap_template", "Москва — Столица России, Большой Город.", True),
    ("arrow_template", "Some tips:\n--> Sleep well\n--> Eat vegetables", True),
    ("arrow_template", "Some tips:\n--> Sleep well\n- Eat vegetables", False),
    ("arrow_template", "Sleep well and eat vegetables.", False),
    ("markdown_template", "# Title\nSome text", True),
    ("markdown_template", "Use **bold** words.", True),
    ("markdown_template", "| a | b |\n|---|---|\n| 1 | 2 |", True),
    ("markdown_template", "Plain prose, with 1. a number.", False),
    ("html_template", "<!DOCTYPE html>\n<html><body>Hi</body></html>", True),
    ("html_template", "<h1>Recipe</h1>\n<p>Mix the flour.</p>", True),
    ("html_template", "Use the <br> tag, or write a <p> element yourself.", False),
])
def test_rules(modifier, text, expected):
    assert RULES[family(modifier)](text, modifier) is expected


def test_scorer_covers_checkable_types_and_uses_language_id():
    scorer = ModifierScorer(LanguageIdentifier())
    prompt = ({"role": "user", "content": "x"},)
    lang = EvalItem("m", "en", "1", prompt, "fr", modifier="lang_fr")
    items = [lang, EvalItem("m", "en", "2", prompt, "en", modifier="num_items_3")]
    assert not scorer.applies(EvalItem("m", "en", "3", prompt, "en", modifier="short"))
    assert not scorer.applies(EvalItem("m", "en", "4", prompt, "en"))
    assert all(scorer.applies(it) for it in items)
    results = scorer.score(items, ["Le chat dort sur le canapé depuis ce matin.", LIST_OF_THREE])
    assert [r["scores"]["fulfilled"] for r in results] == [1.0, 1.0]
    assert scorer.score([lang], ["The cat has been sleeping on the sofa."])[0]["scores"]["fulfilled"] == 0.0


def test_short_and_long_against_the_base_prompts_answer():
    scorer = ModifierScorer(LanguageIdentifier())
    base = "How do I wrap a present neatly?"
    short = EvalItem("m", "en", "1", ({"role": "user", "content": base + " Answer briefly in just a few sentences."},),
                     "en", modifier="short")
    long = EvalItem("m", "en", "2", ({"role": "user", "content": base + " Give a detailed answer."},), "en",
                    modifier="long")
    other = EvalItem("m", "fr", "3", ({"role": "user", "content": base + " Give a detailed answer."},), "fr",
                     modifier="long")
    assert not scorer.applies(short)  # no base answer seen yet
    scorer.prepare({("chirkova", "en", "0007"): {"language": "en", "modifier": None, "response": "Fold it well.",
                                                  "messages": [{"role": "user", "content": base}]},
                    ("m", "en", "1"): {"language": "en", "modifier": "short", "response": "x",
                                       "messages": list(short.messages)}})
    assert scorer.applies(short) and scorer.applies(long) and not scorer.applies(other)  # fr has no base answer
    results = scorer.score([short, long, short, long], ["Fold.", "Fold it well, then tape it.", "Fold it well.",
                                                        "Fold it."])
    assert [r["scores"]["fulfilled"] for r in results] == [1.0, 1.0, 0.0, 0.0]  # equal length fulfils neither
    assert results[0]["details"] == {"words": 1, "base_words": 3}
