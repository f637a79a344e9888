"""Modifier fulfilment: did a response do what its prompt's modifier asked (the paper's Table 1)?

A rule checks 8 of the 11 types here. `short` and `long` compare the response with the same model's
answer to the base prompt (the modifier prompt without its suffix, an item of the `chirkova` set in the
same language): `short` is fulfilled by fewer words than that answer, `long` by more (words split on
whitespace). They are scored once the run holds the base prompt's answer. `scientific_style`,
`simple_style` and `complex_inst` need judgement: judge.FulfilmentJudge asks the LLM judge.
"""

from __future__ import annotations

import operator
import re

from xlit_jax.data.spelling import NOT_PROSE
from xlit_jax.evaluate.instructions.evalsets import instruction_text
from xlit_jax.evaluate.instructions.scorer import Scorer

# A list item: a bullet or a number (possibly bold or in a markdown heading), then text.
LIST_ITEM = re.compile(r"^([ \t]*)(?:#{1,6}[ \t]+)?(?:[-*+\u2022]|(?:\*\*)?\d{1,2}[.)])[ \t]+\S", re.MULTILINE)
ARROW = "-->"
LETTER_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
CAPITALISED_SHARE = 0.9  # a few lower-case words (slips, units) still count as fulfilling cap_template
MARKDOWN = re.compile(
    r"^[ \t]*#{1,6}[ \t]+\S"  # heading
    r"|\*\*[^*\n]+\*\*|__[^_\n]+__"  # bold
    r"|^[ \t]*[-*+][ \t]+\S"  # bullet list
    r"|^[ \t]*\|.*\|[ \t]*$"  # table row
    r"|^[ \t]*```"  # fenced code
    r"|\[[^\]\n]+\]\([^)\s]+\)",  # link
    re.MULTILINE)
HTML_PAGE = re.compile(r"<!doctype\s+html|<html[\s>]", re.IGNORECASE)
HTML_ELEMENT = re.compile(r"<(body|head|title|h[1-6]|p|ul|ol|li|div|table|tr|td|span|strong|em)\b[^>]*>"
                          r".*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def family(modifier: str) -> str:
    """`num_items_5` -> `num_items`, `lang_fr` -> `lang`; other types are their own family."""
    for prefix in ("num_items", "lang"):
        if modifier.startswith(prefix + "_"):
            return prefix
    return modifier


def count_list_items(text: str) -> int:
    """Items of the outermost list level (nested sub-points are not counted)."""
    indents = [len(m.group(1).expandtabs(4)) for m in LIST_ITEM.finditer(text)]
    return indents.count(min(indents)) if indents else 0


def _all_points_arrowed(text: str) -> bool:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    arrowed = [line for line in lines if line.startswith(ARROW)]
    other_points = [line for line in lines if not line.startswith(ARROW) and LIST_ITEM.match(line)]
    return bool(arrowed) and not other_points


def _capitalised(text: str) -> bool:
    words = LETTER_WORD.findall(NOT_PROSE.sub(" ", text).replace("\u2019", "'"))
    return bool(words) and sum(w[0].isupper() for w in words) >= CAPITALISED_SHARE * len(words)


def _html(text: str) -> bool:
    return bool(HTML_PAGE.search(text) or HTML_ELEMENT.search(text))


RULES = {
    "num_items": lambda text, modifier: count_list_items(text) == int(modifier.rsplit("_", 1)[1]),
    "cap_template": lambda text, modifier: _capitalised(text),
    "arrow_template": lambda text, modifier: _all_points_arrowed(text),
    "markdown_template": lambda text, modifier: bool(MARKDOWN.search(text)),
    "html_template": lambda text, modifier: _html(text),
}
# `lang_X` is checked by language identification (ModifierScorer), not by a text rule.
CHECKABLE = frozenset(RULES) | {"lang"}
# Fewer / more words than the model's answer to the base prompt.
LENGTH_RULES = {"short": operator.lt, "long": operator.gt}


def word_count(text: str) -> int:
    return len(text.split())


class ModifierScorer(Scorer):
    """Did the response do what the modifier asked? 1.0 or 0.0 per response, for the rule-checked types;
    `prepare` must have seen the base prompts' answers for `short` and `long`."""

    name = "modifiers"
    chunk_size = 256

    def __init__(self, lid):
        self._lid = lid
        self._base_answers: dict[str, list[tuple[str, str]]] = {}  # language -> [(base prompt, response)]

    def prepare(self, generated: dict) -> None:
        """Takes the run's generations (rows by item key), whose prompts without a modifier are the base
        prompts that `short` and `long` answers are compared with."""
        self._base_answers = {}
        for row in generated.values():
            if row.get("modifier") is None:
                self._base_answers.setdefault(row["language"], []).append(
                    (instruction_text(row["messages"]), row["response"]))

    def base_answer(self, item) -> str | None:
        """The model's answer to the prompt that `item`'s prompt extends by its modifier, if generated."""
        text = instruction_text(item.messages)
        return next((response for prompt, response in self._base_answers.get(item.language, ())
                     if text.startswith(prompt + " ")), None)

    def applies(self, item) -> bool:
        if item.modifier is None:
            return False
        kind = family(item.modifier)
        return kind in CHECKABLE or (kind in LENGTH_RULES and self.base_answer(item) is not None)

    def score(self, items, responses) -> list[dict]:
        detected = self._lid.predict(responses)
        results = []
        for item, text, (language, _) in zip(items, responses, detected):
            kind = family(item.modifier)
            if kind == "lang":
                ok, details = language == item.expected_language, {"detected": language}
            elif kind in LENGTH_RULES:
                words, base_words = word_count(text), word_count(self.base_answer(item))
                ok, details = LENGTH_RULES[kind](words, base_words), {"words": words, "base_words": base_words}
            else:
                ok, details = RULES[kind](text, item.modifier), {}
            results.append({"scores": {"fulfilled": float(ok)}, "details": details})
        return results
