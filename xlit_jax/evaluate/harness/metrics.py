"""Metrics as lm-evaluation-harness 0.4 computes them: exact match / F1 with SQuAD's English normalisation
against the first gold answer (its XQuAD tasks, through transformers' squad_metrics) or with MLQA's official
per-language normalisation, best over the gold answers (its MLQA tasks; an option for XQuAD), accuracy from
log-likelihoods (MMLU), and BBH's exact match with the strict and the flexible extraction. Our code,
written from the published definitions.
"""

from __future__ import annotations

import collections
import re
import string
import sys
import unicodedata

PUNCTUATION = frozenset(chr(i) for i in range(sys.maxunicode + 1)
                        if unicodedata.category(chr(i)).startswith("P")) | frozenset(string.punctuation)
# mlqa_evaluation_v1.py's articles; Italian is not an MLQA language, its articles are our addition.
ARTICLES = {"en": r"\b(a|an|the)\b", "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
            "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
            "it": r"\b(il|lo|la|i|gli|le|un|uno|una)\b",
            "ar": r"\sال^|ال"}  # the official rule as written: every "ال" goes, not only the prefix
CJK = re.compile(r"[\u4e00-\u9fa5]")


def segment(text: str, language: str) -> list[str]:
    """Whitespace tokens; in Chinese every CJK character and punctuation mark is a token of its own."""
    if language != "zh":
        return text.split()
    tokens, run = [], ""
    for char in text:
        if CJK.match(char) or char in PUNCTUATION:
            tokens += run.split() + [char]
            run = ""
        else:
            run += char
    return tokens + run.split()


def normalize_answer(text: str, language: str) -> str:
    """MLQA's normalisation: lower case, Unicode punctuation removed, articles removed, re-tokenized."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    if language in ARTICLES:
        text = re.sub(ARTICLES[language], " ", text)
    return " ".join(t for t in segment(text, language) if t.strip())


def exact_match(prediction: str, gold: str, language: str) -> float:
    return float(normalize_answer(prediction, language) == normalize_answer(gold, language))


def _token_f1(predicted: list[str], reference: list[str]) -> float:
    same = sum((collections.Counter(predicted) & collections.Counter(reference)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(reference)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, gold: str, language: str) -> float:
    return _token_f1(normalize_answer(prediction, language).split(), normalize_answer(gold, language).split())


def qa_scores(prediction: str, golds, language: str) -> dict[str, float]:
    """MLQA's: exact match and F1, each the best over the gold answers."""
    return {"exact_match": max(exact_match(prediction, g, language) for g in golds),
            "f1": max(f1(prediction, g, language) for g in golds)}


def squad_normalize(text: str) -> str:
    """SQuAD's normalisation, the same in every language: lower case, ASCII punctuation removed, the English
    articles a/an/the removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_scores(prediction: str, gold: str) -> dict[str, float]:
    """SQuAD's exact match and F1 against one gold answer (the harness's XQuAD: the first); when either side
    normalises to nothing, F1 is whether both do."""
    predicted, reference = squad_normalize(prediction).split(), squad_normalize(gold).split()
    f1_score = float(predicted == reference) if not (predicted and reference) else _token_f1(predicted, reference)
    return {"exact_match": float(predicted == reference), "f1": f1_score}


def cut_at_stop(text: str, stops) -> str:
    """The text before the first of the stop sequences (how `until` ends a harness generation)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def choice_scores(logliks, gold_index: int, lengths) -> dict[str, float]:
    """acc: the likeliest choice is the gold one; acc_norm: the same with log-likelihood per character of
    the choice (the harness's length normalisation)."""
    best = max(range(len(logliks)), key=lambda i: logliks[i])
    best_norm = max(range(len(logliks)), key=lambda i: logliks[i] / lengths[i])
    return {"acc": float(best == gold_index), "acc_norm": float(best_norm == gold_index)}


# BBH zero-shot: exact match ignoring case, a trailing period, commas, newlines, backslashes and quotes.
_IGNORED = (r"\.$", ",", "\n", r"\\", '"')
_YES_NO_TASKS = ("causal_judgement", "navigate", "sports_understanding", "web_of_lies")
_NUMBER_TASKS = ("multistep_arithmetic_two", "object_counting")


def bbh_normalize(text: str) -> str:
    text = text.strip()
    for pattern in _IGNORED:
        text = re.sub(pattern, "", text)
    return text.strip().lower()


def bbh_extract(prediction: str, task: str, options, aliases: dict[str, str]) -> str:
    """The flexible extraction: the first answer-shaped span of the response for the task's kind (an
    option label, or an option's text mapped to its label; True/False; Yes/No; valid/invalid; a number),
    with translated labels and words mapped to English through `aliases`. "[invalid]" when none."""
    if options:
        labels = "|".join(re.escape(label) for label, _ in options)
        spans = [re.escape(a) for a in aliases if a.startswith("(")]
        match = re.search(rf"({labels}|\([A-Z]\)" + "".join(f"|{s}" for s in spans) + ")", prediction)
        if match:
            return aliases.get(match.group(1), match.group(1))
        for label, text in options:
            if text and text.lower() in prediction.lower():
                return aliases.get(label, label)
        return "[invalid]"
    if task in _NUMBER_TASKS:
        match = re.search(r"-?\d+", prediction)
        return match.group(0) if match else "[invalid]"
    english = {"boolean_expressions": ("True", "False"), "formal_fallacies": ("invalid", "valid")}.get(
        task, ("Yes", "No") if task in _YES_NO_TASKS else ())
    if english:
        candidates = sorted({*english, *(a for a, e in aliases.items() if e in english)}, key=len, reverse=True)
        match = re.search(r"(?<!\w)(" + "|".join(map(re.escape, candidates)) + r")(?!\w)", prediction, re.I)
        if not match:
            return "[invalid]"
        found = match.group(1).lower()
        return next(aliases.get(a, a) for a in candidates if a.lower() == found)
    return prediction.strip()


def bbh_scores(prediction: str, target: str, task: str, options, aliases: dict[str, str]) -> dict[str, float]:
    """strict: the whole response against the file's target; flexible: the extracted answer against the
    target mapped to English (the translated files name some answers in English, some translated)."""
    strict = bbh_normalize(prediction) == bbh_normalize(target)
    extracted = bbh_extract(prediction, task, options, aliases)
    flexible = bbh_normalize(extracted) == bbh_normalize(aliases.get(target, target))
    return {"exact_match_strict": float(strict), "exact_match_flexible": float(flexible)}
