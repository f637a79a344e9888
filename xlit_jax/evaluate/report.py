"""Aggregate per-response scores by model x set x language x metric (and modifier type); write
scores.jsonl, scores.csv, scores.md and PNG figures (each metric per language, models side by side), and
language_confusion.csv (LCB's table) where responses were scored for language confusion.

The aggregates are derived from item_scores.jsonl and rewritten whole (atomically) on every report.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
from pathlib import Path

from xlit_jax.errors import InputError
from xlit_jax.evaluate.instructions import confusion
from xlit_jax.evaluate.instructions.judge import CRITERIA
from xlit_jax.evaluate.instructions.modifiers import family
from xlit_jax.evaluate.items import ITEM_SCORES_FILE, read_item_scores
from xlit_jax.io.files import atomic_write_text, csv_text, markdown_table, reported_write

SCORES_FILE = "scores.jsonl"
MODIFIER_ALL = "all"  # the modifier column of aggregates over every item: scores.csv and the study's summary.csv
SURFACE_METRICS = ("language_correct", "spelling", "relevance")
JUDGE_METRICS = tuple(f"judge_{c}" for c in CRITERIA)
# The score table's columns: LCB's line-level verdicts beside the whole-response language, code switching
# beside spelling.
TABLE_METRICS = ("language_correct", *confusion.METRICS, "spelling", "code_switching", "relevance")
CONFUSION_FILE = "language_confusion.csv"
PANELS_PER_ROW = 3
# (file stem, metrics, y label, value scale, y-axis top): one PNG of each kind per eval set.
FIGURES = (("surface_metrics", SURFACE_METRICS, "% of responses", 100, 100),
           ("judge", JUDGE_METRICS, "mean score (0-2)", 1, 2))
# Benchmarks (xlit_jax.evaluate.harness.run): (benchmark, metric) columns; the plotted ones are each one's main.
BENCHMARK_SCORER = "harness"
BENCHMARK_COLUMNS = (("xquad", "exact_match"), ("xquad", "f1"), ("mlqa", "exact_match"), ("mlqa", "f1"),
                     ("mmlu", "acc"), ("mmlu", "acc_norm"), ("bbh", "exact_match_strict"),
                     ("bbh", "exact_match_flexible"))
BENCHMARK_PLOTTED = (("xquad", "f1"), ("mlqa", "f1"), ("mmlu", "acc"), ("bbh", "exact_match_flexible"))
BENCHMARK_METRICS = frozenset(m for _, m in BENCHMARK_COLUMNS)
# lm-evaluation-harness's own tasks (xlit_jax.evaluate.harness.lm_eval_tasks): set = task, any metric it averages.
LM_EVAL_SCORER = "lm_eval"
NATIVE_SCORERS = (BENCHMARK_SCORER, LM_EVAL_SCORER)  # not instruction sets: no per-set table of their own
DEFECTS_FILE = "data_defects.csv"
FRACTION_METRICS = frozenset(TABLE_METRICS + ("fulfilled",)) | BENCHMARK_METRICS  # shown as percentages
AGGREGATE_FIELDS = ("model", "set", "language", "modifier", "scorer", "metric", "mean", "n", "items", "errors")


def aggregate(rows: list[dict]) -> list[dict]:
    """Means per (model, set, language, modifier family or `all`, metric), with counts.

    `n` is the number of responses with that metric, `items` the number the scorer covered (a
    scorer can leave a response out, e.g. spelling for one in the wrong language), `errors` how
    many of those have only an error (e.g. the judge never answered usably).
    """
    sums, counts = collections.defaultdict(float), collections.Counter()
    items, errors = collections.Counter(), collections.Counter()
    for row in rows:
        for modifier in (MODIFIER_ALL,) + ((family(row["modifier"]),) if row.get("modifier") else ()):
            group = (row["model"], row["set"], row["language"], modifier, row["scorer"])
            items[group] += 1
            errors[group] += "error" in row
            for metric, value in row.get("scores", {}).items():
                sums[group + (metric,)] += value
                counts[group + (metric,)] += 1
    return [dict(zip(AGGREGATE_FIELDS, key + (sums[key] / counts[key], counts[key], items[key[:5]],
                                              errors[key[:5]])))
            for key in sorted(counts)]


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    mean = 100 * row["mean"] if row["metric"] in FRACTION_METRICS else row["mean"]
    digits = 1 if row["metric"] in FRACTION_METRICS else 2
    return f"{mean:.{digits}f} ({row['n']})"


def ordered(values) -> list:
    """The distinct values in first-seen order."""
    return list(dict.fromkeys(values))


def _metric_table(rows: list[dict], eval_set: str) -> str:
    """Rows model x language, a column per metric, over all items of the set."""
    mine = [r for r in rows if r["set"] == eval_set and r["modifier"] == MODIFIER_ALL and r["metric"] != "fulfilled"]
    order = TABLE_METRICS + JUDGE_METRICS
    metrics = [m for m in order if any(r["metric"] == m for r in mine)]
    cells = {(r["model"], r["language"], r["metric"]): r for r in mine}
    body = [[model, lang] + [_cell(cells.get((model, lang, m))) for m in metrics]
            for model in ordered(r["model"] for r in mine) for lang in ordered(r["language"] for r in mine)
            if any((model, lang, m) in cells for m in metrics)]
    return markdown_table(["model", "language"] + metrics, body) if metrics else ""


AVERAGE = "Average"  # the modifier table's last row per model: the mean over types, as the paper's Table 1


def type_average(means: list[float], metric: str) -> str:
    """The Average cell: the unweighted mean over modifier types (each type counts once, as in Table 1)."""
    if not means:
        return ""
    k, digits = (100, 1) if metric in FRACTION_METRICS else (1, 2)
    return f"{k * sum(means) / len(means):.{digits}f} ({len(means)} types)"


def _modifier_table(rows: list[dict], eval_set: str, metric: str) -> str:
    """Rows model x modifier family and the Average over families, a column per language."""
    mine = [r for r in rows if r["set"] == eval_set and r["modifier"] != MODIFIER_ALL and r["metric"] == metric]
    if not mine:
        return ""
    languages = ordered(r["language"] for r in mine)
    cells = {(r["model"], r["modifier"], r["language"]): r for r in mine}
    body = []
    for model in ordered(r["model"] for r in mine):
        modifiers = ordered(r["modifier"] for r in mine if r["model"] == model)
        body += [[model, mod] + [_cell(cells.get((model, mod, lang))) for lang in languages] for mod in modifiers]
        body.append([model, AVERAGE] + [type_average([cells[key]["mean"] for mod in modifiers
                                                      if (key := (model, mod, lang)) in cells], metric)
                                        for lang in languages])
    return markdown_table(["model", "modifier"] + languages, body)


def markdown(rows: list[dict]) -> str:
    parts = ["# Evaluation scores", "",
             "Cells: mean (responses scored). language_correct (the whole response), line_pass, line_share "
             "and word_pass (LCB's line and word level), spelling, code_switching (words only English's "
             "dictionary takes), relevance and modifier fulfilment in %; judge criteria on 0-2, responses in the "
             "wrong language (by the judge's "
             "Language; for an answer asked in another language, by language identification) left out of every "
             "criterion but language."]
    table = benchmark_markdown(rows)
    if table:
        parts += ["", "## Benchmarks (lm-evaluation-harness 0.4 scoring)", "", table]
    table = lm_eval_markdown(rows)
    if table:
        parts += ["", "## lm-evaluation-harness tasks (their own configs, through our engine)", "", table]
    for eval_set in ordered(r["set"] for r in rows if r["scorer"] not in NATIVE_SCORERS):
        parts += ["", f"## {eval_set}", "", _metric_table(rows, eval_set)]
        for metric, title in (("fulfilled", "Modifier fulfilment (rules, length against the base prompt's "
                                             "answer, LLM judge for styles), %"),
                              ("judge_helpfulness", "Helpfulness under each modifier (LLM judge, 0-2)")):
            table = _modifier_table(rows, eval_set, metric)
            if table:
                parts += ["", f"### {title}", "", table]
    return "\n".join(parts) + "\n"


def confusion_markdown(table: list[dict]) -> str:
    """LCB's table (confusion.lcb_table) per task: rows model x source (and LCB's averages), a column per
    language (and the average); cells LPR, or LPR / WPR where LCB reports WPR."""
    if not table:
        return ""
    parts = ["", "## Language confusion (LCB's line-level pass rate / word-level pass rate, %)", "",
             "A response passes the line level when every line of 5 tokens or more is in the wanted language "
             "(fastText, probability > 0.3), the word level when, besides, it has no English word; responses "
             "without such a line are not counted. `all`: LCB's averages."]
    for task in ordered(r["task"] for r in table):
        mine = [r for r in table if r["task"] == task]
        languages = ordered(r["language"] for r in mine if r["language"] != confusion.ALL) + [confusion.ALL]
        cells = {(r["model"], r["source"], r["language"]): r for r in mine}
        body = [[model, source] + [_confusion_cell(cells.get((model, source, lang))) for lang in languages]
                for model, source in ordered((r["model"], r["source"]) for r in mine)]
        parts += ["", f"### {task}", "", markdown_table(["model", "source", *languages], body)]
    return "\n".join(parts) + "\n"


def _confusion_cell(row: dict | None) -> str:
    if row is None:
        return ""
    lpr = confusion.percent(row["lpr"])
    return lpr if row["wpr"] is None else f"{lpr} / {confusion.percent(row['wpr'])}"


def to_csv(rows: list[dict]) -> str:
    return csv_text(rows, AGGREGATE_FIELDS)


def plot(rows: list[dict], eval_set: str, metrics, path: Path, ylabel: str, scale: float, top: float) -> bool:
    """One panel per metric: languages on the x axis, a bar per model. False when nothing to draw."""
    mine = [r for r in rows if r["set"] == eval_set and r["modifier"] == MODIFIER_ALL and r["metric"] in metrics]
    panels = [(m, {(r["model"], r["language"]): scale * r["mean"] for r in mine if r["metric"] == m})
              for m in metrics]
    return _bar_panels([(title, cells) for title, cells in panels if cells], path, ylabel, top, eval_set)


def _bar_panels(panels: list[tuple[str, dict]], path: Path, ylabel: str, top: float, title: str) -> bool:
    """Panels of bars, each from {(model, language): value}: languages on the x axis, a bar per model."""
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = ordered(model for _, cells in panels for model, _ in cells)
    languages = ordered(lang for _, cells in panels for _, lang in cells)
    width = 0.8 / len(models)
    columns = min(len(panels), PANELS_PER_ROW)
    panel_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(panel_rows, columns, figsize=(3.2 * columns + 1, 2.8 * panel_rows + 0.8),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (panel, cells) in zip(axes.flat, panels):
        for k, model in enumerate(models):
            heights = [cells.get((model, lang), math.nan) for lang in languages]
            bars = ax.bar([i + (k - (len(models) - 1) / 2) * width for i in range(len(languages))], heights,
                          width, label=model)
            ax.bar_label(bars, ["" if math.isnan(h) else f"{h:.3g}" for h in heights], fontsize="x-small")
        ax.set_xticks(range(len(languages)), languages)
        ax.set_ylim(0, top)
        ax.set_title(panel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(models), 4),
               fontsize="small")
    fig.suptitle(title)
    save_figure(plt, fig, path, dpi=120)
    return True


def save_figure(plt, fig, path: Path, dpi: int) -> None:
    """Write `fig` as a PNG atomically (a reader never sees half a file) and close it."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        with reported_write(path):  # a full disk: one line, and no half figure left behind
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(tmp, dpi=dpi)
            tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _benchmark_cells(rows: list[dict]) -> tuple[list[tuple[str, str]], dict]:
    """The (benchmark, metric) columns present and {(model, language, benchmark, metric): aggregate row}."""
    mine = {(r["model"], r["language"], r["set"], r["metric"]): r for r in rows
            if r["scorer"] == BENCHMARK_SCORER and r["modifier"] == MODIFIER_ALL}
    columns = [c for c in BENCHMARK_COLUMNS if any(key[2:] == c for key in mine)]
    return columns, mine


def benchmark_markdown(rows: list[dict]) -> str:
    """Rows model x language, a column per benchmark metric (% of items; items scored in brackets)."""
    columns, cells = _benchmark_cells(rows)
    keys = ordered((model, lang) for model, lang, _, _ in cells)
    return markdown_table(["model", "language"] + [f"{b} {m}" for b, m in columns],
                  [[model, lang] + [_cell(cells.get((model, lang, b, m))) for b, m in columns]
                   for model, lang in keys]) if columns else ""


def lm_eval_markdown(rows: list[dict]) -> str:
    """Rows model x task, a column per metric: the mean of its per-doc values as lm-eval prints it (4 digits;
    docs scored in brackets)."""
    mine = [r for r in rows if r["scorer"] == LM_EVAL_SCORER and r["modifier"] == MODIFIER_ALL]
    metrics = ordered(r["metric"] for r in mine)
    cells = {(r["model"], r["set"], r["metric"]): r for r in mine}
    body = [[model, task] + [f"{cells[key]['mean']:.4f} ({cells[key]['n']})" if (key := (model, task, m)) in cells
                             else "" for m in metrics]
            for model, task in ordered((r["model"], r["set"]) for r in mine)]
    return markdown_table(["model", "task"] + metrics, body) if mine else ""


def benchmark_csv(rows: list[dict]) -> str:
    columns, cells = _benchmark_cells(rows)
    benchmarks = ordered(b for b, _ in columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "language"] + [f"{b}_{m}" for b, m in columns] + [f"{b}_n" for b in benchmarks])
    for model, lang in ordered((model, lang) for model, lang, _, _ in cells):
        found = [cells.get((model, lang, b, m)) for b, m in columns]
        counts = {b: r["n"] for (b, _), r in zip(columns, found) if r}
        writer.writerow([model, lang] + [f"{100 * r['mean']:.2f}" if r else "" for r in found]
                        + [counts.get(b, "") for b in benchmarks])
    return buffer.getvalue()


def plot_benchmarks(rows: list[dict], path: Path) -> bool:
    """One panel per benchmark (its main metric), languages on the x axis, a bar per model."""
    columns, cells = _benchmark_cells(rows)
    panels = [(f"{b} {m}", {(model, lang): 100 * r["mean"] for (model, lang, b2, m2), r in cells.items()
                            if (b2, m2) == (b, m)}) for b, m in columns if (b, m) in BENCHMARK_PLOTTED]
    return _bar_panels(panels, path, "% of items", 100, "benchmarks (lm-evaluation-harness scoring)")


def _defects_markdown(run_dirs) -> str:
    """The data defects the benchmark runs counted (the same data in every run, so each row once)."""
    found = {}
    for run_dir in run_dirs:
        path = Path(run_dir) / DEFECTS_FILE
        if path.is_file():
            for row in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))):
                found[(row["benchmark"], row["language"], row["defect"])] = row
    if not found:
        return ""
    body = [[r["benchmark"], r["language"], r["rows"], r["defect"], r["count"]] for r in found.values()]
    return ("\n## Data defects found while loading (counted over whole files)\n\n"
            + markdown_table(["benchmark", "language", "rows", "defect", "count"], body) + "\n")


def write_report(run_dirs, out_dir) -> dict[str, Path]:
    """Aggregate the item scores of one or more runs (one model each) into `out_dir`; returns the files."""
    rows, owners = [], {}
    for run_dir in dict.fromkeys(Path(d).resolve() for d in run_dirs):  # a run named twice counts once
        path = run_dir / ITEM_SCORES_FILE
        if not path.is_file():
            raise InputError(f"{path}: no such file; evaluate a model into {run_dir} first")
        for row in read_item_scores(path):
            if owners.setdefault(row["model"], run_dir) != run_dir:
                raise InputError(f"model {row['model']!r} is in both {owners[row['model']]} and {run_dir}; "
                                 "give the runs distinct model names")
            rows.append(row)
    aggregates = aggregate(rows)
    lcb = confusion.lcb_table(rows)
    out_dir = Path(out_dir)
    written = {"scores": out_dir / SCORES_FILE, "csv": out_dir / "scores.csv", "markdown": out_dir / "scores.md"}
    atomic_write_text(written["scores"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in aggregates))
    atomic_write_text(written["csv"], to_csv(aggregates))
    atomic_write_text(written["markdown"], markdown(aggregates) + confusion_markdown(lcb) + _defects_markdown(run_dirs))
    if lcb:
        written["language_confusion"] = out_dir / CONFUSION_FILE
        atomic_write_text(written["language_confusion"], csv_text(confusion.csv_rows(lcb), confusion.CSV_FIELDS))
    if any(r["scorer"] == BENCHMARK_SCORER for r in aggregates):
        written["benchmarks_csv"] = out_dir / "benchmarks.csv"
        atomic_write_text(written["benchmarks_csv"], benchmark_csv(aggregates))
        if plot_benchmarks(aggregates, out_dir / "benchmarks.png"):
            written["benchmarks_png"] = out_dir / "benchmarks.png"
    for eval_set in ordered(r["set"] for r in aggregates if r["scorer"] not in NATIVE_SCORERS):
        for stem, metrics, ylabel, scale, top in FIGURES:
            path = out_dir / f"{stem}.{eval_set}.png"
            if plot(aggregates, eval_set, metrics, path, ylabel, scale, top):
                written[f"{stem}.{eval_set}"] = path
    return written
