"""Language confusion as the Language Confusion Benchmark measures it (LCB; Marchisio et al. 2024,
"Understanding and Mitigating Language Confusion in LLMs"), as an xlit-eval scorer: the per-response
line- and word-level verdicts (data/confusion.py has LCB's rules), with LCB's grouping and tables. LCB
reports the word level for non-Latin scripts only. Per (task, source, language): LPR and WPR; then LCB's
averages over sources, over languages, and overall (the mean of the per-language averages).
"""

from __future__ import annotations

import collections

from xlit_jax.data.confusion import MIN_TOKENS, Detector
from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.evaluate.instructions.scorer import Scorer

NAME = "language_confusion"
METRICS = ("line_pass", "line_share", "word_pass")  # per response; their means are LPR, LCB's acc, WPR
WORD_LEVEL_LANGUAGES = frozenset({"ar", "hi", "ja", "ko", "ru", "zh"})  # LCB: WPR misleads for Latin scripts
ALL = "all"  # the source or language of LCB's averages
LISTED = 10  # wrong lines and English words kept per response, for a person reading the scores


def task_and_source(item) -> tuple[str, str]:
    """LCB's grouping of an item: cross-lingual when the answer is asked in another language than the
    prompt's (LCB's cross-lingual set, the paper's `lang_X` modifiers); the source is LCB's where the item
    has one, else the eval set."""
    crosslingual = item.set == "lcb_crosslingual" or item.expected_language != item.language
    return ("crosslingual" if crosslingual else "monolingual"), item.source or item.set


def verdict_scores(verdict: dict | None, language: str) -> dict:
    """The scorer's result for one response's verdict."""
    if verdict is None:
        return {"scores": {}, "details": {"skipped": f"no line of {MIN_TOKENS} tokens or more"}}
    wrong, lines = verdict["wrong"], verdict["lines"]
    scores = {"line_pass": float(not wrong), "line_share": 1 - len(wrong) / lines}
    if language in WORD_LEVEL_LANGUAGES and not wrong:
        scores["word_pass"] = float(not verdict["english"])
    wrong_lines = [[line[:120], detected] for line, detected in wrong[:LISTED]]
    return {"scores": scores,
            "details": {"lines": lines, "wrong_lines": wrong_lines, "english_words": verdict["english"][:LISTED]}}


class LanguageConfusionScorer(Scorer):
    """LCB's line- and word-level verdicts per response, with what the report groups them by (task, source,
    the wanted language) in `details`."""

    name = NAME
    chunk_size = 256

    def __init__(self, lid: LanguageIdentifier, words: frozenset[str]):
        self._detector = Detector(lid, words)

    def score(self, items, responses) -> list[dict]:
        languages = [it.expected_language for it in items]
        results = []
        for item, verdict in zip(items, self._detector.verdicts(responses, languages)):
            result = verdict_scores(verdict, item.expected_language)
            task, source = task_and_source(item)
            result["details"].update(task=task, source=source, language=item.expected_language)
            results.append(result)
        return results


def _rates(scores: list[dict], language: str) -> dict:
    """LPR (and WPR where LCB reports it) of one (task, source, language), with LCB's arithmetic: a rate is
    1 - failures / max(1, responses counted), so a cell with no counted response reads 100%."""
    counted = [s for s in scores if "line_pass" in s]
    line_errors = sum(s["line_pass"] == 0 for s in counted)
    rates = {"lpr": 1 - line_errors / max(1, len(counted)), "wpr": None}
    if language in WORD_LEVEL_LANGUAGES:
        word_errors = sum(s.get("word_pass") == 0 for s in counted)
        rates["wpr"] = 1 - word_errors / max(1, len(counted) - line_errors)
    return rates


def _average(cells: list[dict]) -> dict:
    """LCB's average of rates, each over the cells that have it."""
    averages = {}
    for key in ("lpr", "wpr"):
        values = [c[key] for c in cells if c[key] is not None]
        averages[key] = sum(values) / len(values) if values else None
    return averages


def lcb_table(rows: list[dict]) -> list[dict]:
    """LCB's table from language_confusion item rows: per (model, task) the rate of each (source, language),
    then the averages per source, per language, and overall, in the order LCB's script prints them (its
    summation order too, so the averages agree to the last bit)."""
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rows:
        if row["scorer"] == NAME and "error" not in row and "task" in row.get("details", {}):
            d = row["details"]
            groups[(row["model"], d["task"])][(d["source"], d["language"])].append(row["scores"])
    table = []
    for (model, task), cells in sorted(groups.items()):
        rates = {key: _rates(cells[key], key[1]) for key in sorted(cells)}
        by_source, by_language = collections.defaultdict(list), collections.defaultdict(list)
        for (source, language), r in rates.items():
            by_source[source].append(r)
            by_language[language].append(r)
        rates |= {(source, ALL): _average(r) for source, r in by_source.items()}
        language_averages = {(ALL, language): _average(r) for language, r in by_language.items()}
        rates |= language_averages | {(ALL, ALL): _average(list(language_averages.values()))}
        table += [{"model": model, "task": task, "source": source, "language": language, **r}
                  for (source, language), r in rates.items()]
    return table


CSV_FIELDS = ("model", "task", "source", "language", "lpr", "wpr")


def percent(value: float | None) -> str:
    """As LCB's script prints a rate (`.2%`, without the sign); empty where it reports none."""
    return "" if value is None else f"{value:.2%}".removesuffix("%")


def csv_rows(table: list[dict]) -> list[dict]:
    return [{**r, "lpr": percent(r["lpr"]), "wpr": percent(r["wpr"])} for r in table]
