"""The paper's figures and tables from a study folder: every cell's per-response scores, aggregated with
their n and a 95% percentile-bootstrap interval; and differences between cells, which answer the same
items, by a paired bootstrap over those items.

- Fig. 2: each metric (surface metrics and the judge's criteria) against the learning rate, one line
  per data set and method, English and the other languages (pooled) apart; baselines as dashed lines.
- Fig. 3: the judge's criteria by cell, English and the other languages apart; Fig. 4 the same per language.
- Fig. 5: human vs judge agreement per criterion, from xlit-human-eval's agreement.csv when it is in
  WORKDIR/human/results (`xlit-human-eval import --out_dir=WORKDIR/human/results`).
- Table 1: modifier fulfilment (and the judge's helpfulness) by modifier type.
- Benchmarks: any other evaluation set (a cell's eval/ and bench/ stages), by language, and each cell's
  main benchmark scores minus a reference cell's (CrossAlpaca's comparison).
- Differences: each trained cell against its model's baseline and against the next lower learning rate.

Written to WORKDIR/report: summary.csv (every aggregate, also per language), differences.csv, report.md
and PNGs.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import fnmatch
import functools
import itertools
import math
from pathlib import Path

import numpy as np

from xlit_jax.evaluate.instructions.judge import CRITERIA
from xlit_jax.evaluate.instructions.modifiers import family
from xlit_jax.evaluate.items import ITEM_SCORES_FILE, read_item_scores
from xlit_jax.evaluate.report import (
    AVERAGE,
    BENCHMARK_PLOTTED,
    FRACTION_METRICS,
    JUDGE_METRICS,
    MODIFIER_ALL,
    SURFACE_METRICS,
    TABLE_METRICS,
    ordered,
    save_figure,
    type_average,
)
from xlit_jax.io.files import atomic_write_text, csv_text, markdown_table
from xlit_jax.study import grid
from xlit_jax.train.probes import read_rounds

MAIN_SET, MODIFIER_SET = "chirkova", "chirkova_modifiers"
ENGLISH, OTHERS = "en", "non-en"  # the paper's two groups: English, and fr/pt/ru pooled
BOOTSTRAP_SAMPLES = 1000
STYLES, MARKERS = ("-", "--", "-."), ("o", "s", "^")  # per method in Fig. 2
# Fig. 2's panels: the paper's surface metrics with LCB's line-level pass rate beside the whole-response one
# (language confusion as the field measures it), then the judge's criteria.
FIG2_METRICS = ("language_correct", "line_pass", *SURFACE_METRICS[1:], *JUDGE_METRICS)
FIG3_MAX_CELLS = 12  # more bars than this are unreadable: pick cells with the config's report.fig3
FIELDS = ("cell", "model", "data", "method", "lr", "set", "language", "modifier", "metric", "mean", "ci_low",
          "ci_high", "n")
DIFFERENCE_FIELDS = ("cell", "against", "set", "language", "modifier", "metric", "difference", "ci_low", "ci_high",
                     "n")


@functools.lru_cache(maxsize=64)
def _draws(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_interval(values, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean (the same seed for every group: reproducible, and
    groups of one size share their resampling indices)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return (float(values.mean()),) * 2 if len(values) else (math.nan, math.nan)
    draws = _draws(len(values), samples, seed)
    low, high = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Stat:
    labels: dict  # the cell's labels (cell, model, data, method, lr)
    set: str
    language: str
    modifier: str
    metric: str
    mean: float
    ci_low: float
    ci_high: float
    n: int

    def row(self) -> dict:
        return {**self.labels, "set": self.set, "language": self.language, "modifier": self.modifier,
                "metric": self.metric, "mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "n": self.n}


def cell_values(item_scores: Path) -> dict[tuple, dict[tuple, float]]:
    """{(set, language, modifier family or MODIFIER_ALL, metric): {(language, id): value per response}} of one
    cell."""
    values = collections.defaultdict(dict)
    for row in read_item_scores(item_scores):
        modifiers = (MODIFIER_ALL,) + ((family(row["modifier"]),) if row.get("modifier") else ())
        for metric, value in row.get("scores", {}).items():
            for modifier in modifiers:
                for language in (row["language"],) + ((OTHERS,) if row["language"] != ENGLISH else ()):
                    values[(row["set"], language, modifier, metric)][(row["language"], row["id"])] = value
    return values


def collect(cells: list[grid.Cell], workdir: Path) -> tuple[list[Stat], list[str], dict[str, dict]]:
    """Stats of every evaluated cell, the names of cells without scores yet, and each evaluated cell's
    values by item (cell_values)."""
    stats, missing, by_cell = [], [], {}
    for cell in cells:
        paths = grid.cell_paths(workdir, cell)
        found = [path for folder in (paths.eval, paths.bench) if (path := folder / ITEM_SCORES_FILE).is_file()]
        if not found:
            missing.append(cell.name)
            continue
        by_item = collections.defaultdict(dict)
        for path in found:  # the instruction and benchmark stages score different sets
            for key, values in cell_values(path).items():
                by_item[key].update(values)
        by_cell[cell.name] = by_item
        for (eval_set, language, modifier, metric), scored in sorted(by_item.items()):
            values = list(scored.values())
            stats.append(Stat(cell.labels(), eval_set, language, modifier, metric, float(np.mean(values)),
                              *bootstrap_interval(values), len(values)))
    return stats, missing, by_cell


def paired_difference(a: dict[tuple, float], b: dict[tuple, float]) -> tuple[float, float, float, int]:
    """b - a over the items both scored: (mean difference, 95% percentile-bootstrap interval, items). The
    items are resampled together, so what the cells share (an item's difficulty) cancels out."""
    common = sorted(a.keys() & b.keys())
    if not common:
        return math.nan, math.nan, math.nan, 0
    differences = np.array([b[k] - a[k] for k in common])
    return (float(differences.mean()), *bootstrap_interval(differences), len(common))


def comparisons(cells: list[grid.Cell]) -> list[tuple[grid.Cell, grid.Cell]]:
    """(cell, reference) pairs: each trained cell against its model's baselines, against the same model,
    data and method at the next lower learning rate, and against the same model, method and learning rate on
    the study's first data set (the data set is what a findings study varies)."""
    pairs = []
    for cell in (c for c in cells if c.trains):
        pairs += [(cell, base) for base in cells if not base.trains and base.model == cell.model]
        setting = (cell.model, cell.method, cell.lr)
        first_data = next(c for c in cells if c.trains and (c.model, c.method, c.lr) == setting)
        if first_data is not cell:
            pairs.append((cell, first_data))
        lower = [c for c in cells if c.trains and (c.model, c.data, c.method) == (cell.model, cell.data, cell.method)
                 and _lr_value(c.lr) < _lr_value(cell.lr)]
        if lower:
            pairs.append((cell, max(lower, key=lambda c: _lr_value(c.lr))))
    return pairs


def differences(cells: list[grid.Cell], by_cell: dict[str, dict]) -> list[dict]:
    """Paired differences (cell - reference) on every instruction set both scored, per metric, in English and
    fr/pt/ru."""
    rows = []
    for cell, reference in comparisons(cells):
        if cell.name not in by_cell or reference.name not in by_cell:
            continue
        mine, theirs = by_cell[cell.name], by_cell[reference.name]
        for metric, group, eval_set in itertools.product(TABLE_METRICS + JUDGE_METRICS, (ENGLISH, OTHERS),
                                                         sorted({key[0] for key in mine})):
            key = (eval_set, group, MODIFIER_ALL, metric)
            if key in mine and key in theirs:
                rows.append(dict(zip(DIFFERENCE_FIELDS, (cell.name, reference.name, *key,
                                                         *paired_difference(theirs[key], mine[key])))))
    return rows


def difference_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    body = []
    for r in rows:
        k, digits = _scale(r["metric"]), 1 if r["metric"] in FRACTION_METRICS else 2
        holds = "yes" if r["ci_low"] > 0 or r["ci_high"] < 0 else "no"
        languages = "fr/pt/ru" if r["language"] == OTHERS else r["language"]
        body.append([r["cell"], r["against"], r["set"], r["metric"], languages,
                     f"{k * r['difference']:+.{digits}f} "
                     f"[{k * r['ci_low']:+.{digits}f}, {k * r['ci_high']:+.{digits}f}] "
                     f"n={r['n']}", holds])
    return ["## Differences between cells (paired bootstrap over items)", "",
            "cell minus the cell it is compared with, on the items both scored (n), 95% percentile-bootstrap "
            "interval of 1,000 resamples of those items; holds: the interval excludes 0. Percentage points for "
            "fractions.", "", markdown_table(["cell", "against", "set", "metric", "languages", "difference", "holds"],
                                        body),
            ""]


def to_csv(stats: list[Stat]) -> str:
    return csv_text([s.row() for s in stats], FIELDS)


def _scale(metric: str) -> float:
    return 100.0 if metric in FRACTION_METRICS else 1.0


def cell_text(stat: Stat | None) -> str:
    """`mean [low, high] n=N`, percentages for fractions."""
    if stat is None:
        return ""
    k, digits = _scale(stat.metric), 1 if stat.metric in FRACTION_METRICS else 2
    return f"{k * stat.mean:.{digits}f} [{k * stat.ci_low:.{digits}f}, {k * stat.ci_high:.{digits}f}] n={stat.n}"


def _index(stats: list[Stat]) -> dict[tuple, Stat]:
    return {(s.labels["cell"], s.set, s.language, s.modifier, s.metric): s for s in stats}


def _lr_value(lr: str) -> float:
    return float(lr) if lr else math.nan


def metric_tables(stats: list[Stat], cells: list[grid.Cell]) -> list[str]:
    """Per metric of the main set: a row per cell, en and non-en columns (Fig. 2 and 3 as numbers)."""
    index = _index(stats)
    cell_metrics = {(key[0], key[4]) for key in index}
    present = {s.metric for s in stats if s.set == MAIN_SET}
    parts = []
    for metric in [m for m in TABLE_METRICS + JUDGE_METRICS if m in present]:
        body = [[c.name, cell_text(index.get((c.name, MAIN_SET, ENGLISH, MODIFIER_ALL, metric))),
                 cell_text(index.get((c.name, MAIN_SET, OTHERS, MODIFIER_ALL, metric)))]
                for c in cells if (c.name, metric) in cell_metrics]
        unit = "%" if metric in FRACTION_METRICS else "0-2"
        parts += [f"### {metric} ({unit})", "", markdown_table(["cell", ENGLISH, "fr/pt/ru"], body), ""]
    return parts


def modifier_table(stats: list[Stat], cells: list[grid.Cell]) -> list[str]:
    """Table 1: per cell and modifier type, fulfilment and the judge's helpfulness in each language (the
    paper shows en and ru apart) and fr/pt/ru pooled, with each cell's Average over the types."""
    mine = [s for s in stats if s.set == MODIFIER_SET and s.modifier != MODIFIER_ALL]
    if not mine:
        return []
    index = _index(mine)
    groups = ordered(s.language for s in mine if s.language != OTHERS) + [OTHERS]
    parts = ["## Table 1: modifier fulfilment by type", "",
             "fulfilled: % of responses doing what the modifier asked (rules; short/long against the answer "
             "to the base prompt; the LLM judge for the styles and two-hop tasks); judge_helpfulness: 0-2. "
             f"{AVERAGE}: the unweighted mean over the types, as the paper's.", ""]
    for metric in [m for m in ("fulfilled", "judge_helpfulness") if any(s.metric == m for s in mine)]:
        body = []
        for c in cells:
            modifiers = ordered(s.modifier for s in mine if s.labels["cell"] == c.name and s.metric == metric)
            body += [[c.name, mod] + [cell_text(index.get((c.name, MODIFIER_SET, g, mod, metric))) for g in groups]
                     for mod in modifiers]
            if modifiers:
                body.append([c.name, AVERAGE] + [type_average(
                    [index[key].mean for mod in modifiers if (key := (c.name, MODIFIER_SET, g, mod, metric)) in index],
                    metric) for g in groups])
        header = ["cell", "modifier"] + [g if g != OTHERS else "fr/pt/ru" for g in groups]
        parts += [f"### {metric}", "", markdown_table(header, body), ""]
    return parts


def benchmark_table(stats: list[Stat]) -> list[str]:
    mine = [s for s in stats if s.set not in (MAIN_SET, MODIFIER_SET) and s.modifier == MODIFIER_ALL]
    if not mine:
        return []
    languages = ordered(s.language for s in mine if s.language != OTHERS)
    index = {(s.labels["cell"], s.set, s.metric, s.language): s for s in mine}
    rows = ordered((s.labels["cell"], s.set, s.metric) for s in mine)
    body = [[*row] + [cell_text(index.get((*row, lang))) for lang in languages] for row in rows]
    return ["## Benchmarks by language", "", markdown_table(["cell", "set", "metric"] + languages, body), ""]


def benchmark_differences(stats: list[Stat], cells: list[grid.Cell], reference: str | None = None) -> list[str]:
    """CrossAlpaca's comparison: each cell's main benchmark scores (F1, accuracy, flexible exact match)
    minus the reference cell's (default: the first cell with benchmark scores), per language, in points."""
    mine = [s for s in stats
            if (s.set, s.metric) in BENCHMARK_PLOTTED and s.modifier == MODIFIER_ALL and s.language != OTHERS]
    scored = [c.name for c in cells if any(s.labels["cell"] == c.name for s in mine)]
    reference = reference or (scored[0] if scored else None)
    if len(scored) < 2 or reference not in scored:
        return []
    index = {(s.labels["cell"], s.set, s.metric, s.language): s for s in mine}
    languages = ordered(s.language for s in mine)
    body = []
    for name in (n for n in scored if n != reference):
        for benchmark, metric in ordered((s.set, s.metric) for s in mine):
            cells_here = [(index.get((name, benchmark, metric, lang)), index.get((reference, benchmark, metric, lang)))
                          for lang in languages]
            if any(a and b for a, b in cells_here):
                body.append([name, f"{benchmark} {metric}"] + [f"{100 * (a.mean - b.mean):+.1f}" if a and b else ""
                                                               for a, b in cells_here])
    return [f"## Benchmark differences from {reference} (points)", "",
            "Each cell's score minus the reference cell's on the same items (points of %); the scores "
            "with their intervals are in the table above.", "",
            markdown_table(["cell", "benchmark"] + languages, body), ""]


def _figure(rows: int, columns: int, legend_rows: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = (4.2 * columns + 1.2, 2.9 * rows + 0.8 + 0.2 * legend_rows)
    fig, axes = plt.subplots(rows, columns, figsize=size, squeeze=False, layout="constrained")
    return plt, fig, axes


def plot_learning_rates(stats: list[Stat], cells: list[grid.Cell], model: str, path: Path) -> bool:
    """Fig. 2 for one model: a row per metric, en | non-en columns, value vs lr with 95% intervals."""
    index = _index(stats)
    mine = [c for c in cells if c.model == model and c.trains]
    metrics = [m for m in FIG2_METRICS if any((c.name, MAIN_SET, ENGLISH, MODIFIER_ALL, m) in index for c in mine)]
    if not metrics:
        return False
    baselines = [c for c in cells if not c.trains]
    lines = ordered((c.data, c.method) for c in mine)
    methods = ordered(m for _, m in lines)  # a line style and marker each; a colour per line
    plt, fig, axes = _figure(len(metrics), 2, legend_rows=math.ceil((len(lines) + len(baselines)) / 4))
    for row, metric in zip(axes, metrics):
        k = _scale(metric)
        for ax, group, title in zip(row, (ENGLISH, OTHERS), ("English", "fr / pt / ru")):
            for data, method in lines:
                m = methods.index(method) % len(STYLES)
                style = {"color": f"C{lines.index((data, method)) % 10}", "linestyle": STYLES[m], "marker": MARKERS[m]}
                points = sorted((_lr_value(c.lr), index[key]) for c in mine if (c.data, c.method) == (data, method)
                                and (key := (c.name, MAIN_SET, group, MODIFIER_ALL, metric)) in index)
                if not points:
                    continue
                x = [p[0] for p in points]
                y = np.array([k * p[1].mean for p in points])
                err = np.array([[y[i] - k * p[1].ci_low, k * p[1].ci_high - y[i]] for i, p in enumerate(points)]).T
                ax.errorbar(x, y, yerr=err, capsize=3, label=f"{data} / {method}", **style)
                for xi, yi, (_, stat) in zip(x, y, points):
                    ax.annotate(f"n={stat.n}", (xi, yi), textcoords="offset points", fontsize=7, color=style["color"],
                                xytext=(5, 3 - 9 * lines.index((data, method))))  # lines apart where they meet
            for base in baselines:
                stat = index.get((base.name, MAIN_SET, group, MODIFIER_ALL, metric))
                if stat is not None:
                    ax.axhline(k * stat.mean, linestyle=":", color="gray", label=f"{base.name} (untrained)")
                    ax.annotate(f"n={stat.n}", (1, k * stat.mean), xycoords=("axes fraction", "data"), ha="right",
                                va="bottom", fontsize=7, color="gray")
            ax.set_xscale("log")
            ax.margins(x=0.15)
            ax.set_ylim(0, 105 if k == 100 else 2.05)
            ax.set_title(f"{metric}: {title}", fontsize="medium")
            ax.set_xlabel("learning rate")
            ax.set_ylabel("% of responses" if k == 100 else "mean score (0-2)")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="small")
    fig.suptitle(f"{model}: metrics vs learning rate (95% bootstrap intervals)")
    save_figure(plt, fig, path, dpi=110)
    return True


def judged_cells(stats: list[Stat], cells: list[grid.Cell]) -> list[grid.Cell]:
    index = _index(stats)
    return [c for c in cells if any((c.name, MAIN_SET, ENGLISH, MODIFIER_ALL, m) in index for m in JUDGE_METRICS)]


def plot_criteria(stats: list[Stat], judged: list[grid.Cell], path: Path, groups=((ENGLISH, "English"),
                  (OTHERS, "fr / pt / ru")), title: str = "LLM judge's criteria by model") -> bool:
    """Fig. 3 (en | non-en) and Fig. 4 (a panel per language): the judge's 6 criteria, a bar per cell, 95%
    intervals. `groups` are (language or OTHERS, panel title)."""
    index = _index(stats)
    if not judged:
        return False
    criteria = [m for m in JUDGE_METRICS if any((c.name, MAIN_SET, g, MODIFIER_ALL, m) in index
                                                for c in judged for g, _ in groups)]
    columns = min(len(groups), 2)
    plt, fig, axes = _figure(math.ceil(len(groups) / columns), columns, legend_rows=math.ceil(len(judged) / 3))
    width = 0.8 / len(judged)
    for ax, (group, panel) in zip(axes.flat, groups):
        for j, cell in enumerate(judged):
            x, y, err = [], [], []
            for i, metric in enumerate(criteria):
                stat = index.get((cell.name, MAIN_SET, group, MODIFIER_ALL, metric))
                if stat is not None:
                    x.append(i + (j - (len(judged) - 1) / 2) * width)
                    y.append(stat.mean)
                    err.append((stat.mean - stat.ci_low, stat.ci_high - stat.mean))
            ax.bar(x, y, width, yerr=np.array(err).T if err else None, capsize=2, label=cell.name)
        ax.set_xticks(range(len(criteria)), [m.removeprefix("judge_") for m in criteria], rotation=30)
        ax.set_ylim(0, 2.05)
        ax.set_ylabel("mean score (0-2)")
        ax.set_title(panel)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(judged), 3),
               fontsize="small")
    fig.suptitle(f"{title} (95% bootstrap intervals)")
    save_figure(plt, fig, path, dpi=110)
    return True


def plot_languages(stats: list[Stat], judged: list[grid.Cell], path: Path) -> bool:
    """Fig. 4: Fig. 3 with a panel per language."""
    languages = ordered(s.language for s in stats if s.set == MAIN_SET and s.language != OTHERS
                        and s.labels["cell"] in {c.name for c in judged} and s.metric in JUDGE_METRICS)
    return plot_criteria(stats, judged, path, [(lang, lang) for lang in languages],
                         "LLM judge's criteria by model and language")


HUMAN_RESULTS = Path("human") / "results"  # xlit-human-eval import --out_dir, under the study's workdir
AGREEMENT_FILE = "agreement.csv"


def read_agreement(path: Path) -> list[dict]:
    """The human-vs-judge rows of xlit-human-eval's agreement.csv (annotator pairs left out)."""
    with path.open(encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row["who"].endswith(" vs judge")]


def plot_agreement(rows: list[dict], path: Path) -> bool:
    """Fig. 5: agreement of human and judge per criterion: exact agreement (%) and linearly weighted kappa,
    a bar per annotator (and all annotators pooled), n rated items on each bar."""
    if not rows:
        return False
    criteria = [c for c in CRITERIA if any(r["criterion"] == c for r in rows)]
    raters = ordered(r["who"] for r in rows)
    found = {(r["who"], r["criterion"]): r for r in rows}
    plt, fig, axes = _figure(1, 2, legend_rows=math.ceil(len(raters) / 3))
    width = 0.8 / len(raters)
    for ax, (field, label, top) in zip(axes[0], (("exact_pct", "exact agreement (%)", 100),
                                                 ("kappa_w", "Cohen's kappa, linear weights", 1))):
        for j, who in enumerate(raters):
            x = [i + (j - (len(raters) - 1) / 2) * width for i, c in enumerate(criteria) if (who, c) in found]
            picked = [found[(who, c)] for c in criteria if (who, c) in found]
            bars = ax.bar(x, [float(r[field]) for r in picked], width, label=who)
            ax.bar_label(bars, [f"n={r['n']}" for r in picked], fontsize=6)
        ax.set_xticks(range(len(criteria)), criteria, rotation=30)
        ax.set_ylim(min(0, ax.get_ylim()[0]), top * 1.08)
        ax.set_title(label)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(raters), 3),
               fontsize="small")
    fig.suptitle("Human vs LLM judge agreement per criterion")
    save_figure(plt, fig, path, dpi=110)
    return True


def plot_probe_curves(cells: list[grid.Cell], workdir: Path, path: Path) -> bool:
    """The drift curves logged while training (train.eval_every): probe language correctness vs step (solid)
    and LCB's line-level pass rate (dashed, the same colour), a row per model / data / method, a column per
    probe language, a line per learning rate."""
    rounds = {c: read_rounds(grid.cell_paths(workdir, c).train) for c in cells if c.trains}
    rounds = {c: rows for c, rows in rounds.items() if rows}
    suffix = "/language_correct"
    langs = ordered(k.split("/")[1] for rows in rounds.values() for r in rows for k in r if k.endswith(suffix))
    if not langs:
        return False
    groups = ordered((c.model, c.data, c.method) for c in rounds)
    plt, fig, axes = _figure(len(groups), len(langs))
    for row, group in zip(axes, groups):
        mine = sorted((c for c in rounds if (c.model, c.data, c.method) == group), key=lambda c: _lr_value(c.lr))
        for ax, lang in zip(row, langs):
            for c in mine:
                colour = {}
                for metric, style, label in (("language_correct", "-", ""), ("line_pass", "--", " LPR")):
                    points = [(r["step"], 100 * r[key]) for r in rounds[c] if (key := f"probe/{lang}/{metric}") in r]
                    if points:
                        (line,) = ax.plot(*zip(*points), style, marker="o", markersize=3, label=f"lr {c.lr}{label}",
                                          **colour)
                        colour = {"color": line.get_color()}
            ax.set_ylim(-5, 105)
            ax.xaxis.get_major_locator().set_params(integer=True)  # steps, not 2.5
            ax.set_title(f"{' / '.join(group)}: {lang}", fontsize="medium")
            ax.set_xlabel("step")
            ax.set_ylabel("% in the prompt's language")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle("Language correctness of the probe prompts while training")
    save_figure(plt, fig, path, dpi=110)
    return True


def write(cells: list[grid.Cell], workdir: Path, study_name: str, fig3_patterns=None,
          reference: str | None = None) -> dict[str, Path]:
    """Aggregate every evaluated cell into WORKDIR/report; returns the files written. Fig. 3 shows the
    judged cells matching `fig3_patterns` (globs; default: all of them, if there are not too many);
    benchmark differences are from the `reference` cell (default: the first with benchmark scores)."""
    out = Path(workdir) / "report"
    stats, missing, by_cell = collect(cells, workdir)
    diffs = differences(cells, by_cell)
    written = {"csv": out / "summary.csv", "differences": out / "differences.csv", "markdown": out / "report.md"}
    figures = []
    for model in ordered(c.model for c in cells if c.trains):
        path = out / f"fig2_learning_rate.{model}.png"
        if plot_learning_rates(stats, cells, model, path):
            written[f"fig2.{model}"] = path
            figures.append(path)
    if plot_probe_curves(cells, workdir, out / "probe_curves.png"):
        written["probe_curves"] = out / "probe_curves.png"
        figures.append(written["probe_curves"])
    judged = [c for c in judged_cells(stats, cells)
              if not fig3_patterns or any(fnmatch.fnmatchcase(c.name, p) for p in fig3_patterns)]
    notes = []
    if len(judged) > FIG3_MAX_CELLS:
        notes.append(f"Fig. 3 is left out: {len(judged)} judged cells are too many bars; name up to "
                     f"{FIG3_MAX_CELLS} with report.fig3 (globs) in the study config.")
    else:
        for key, draw, name in (("fig3", plot_criteria, "fig3_criteria.png"),
                                ("fig4", plot_languages, "fig4_languages.png")):
            if draw(stats, judged, out / name):
                written[key] = out / name
                figures.append(written[key])
    agreement = Path(workdir) / HUMAN_RESULTS / AGREEMENT_FILE
    if agreement.is_file() and plot_agreement(read_agreement(agreement), out / "fig5_agreement.png"):
        written["fig5"] = out / "fig5_agreement.png"
        figures.append(written["fig5"])
    done = len(cells) - len(missing)
    parts = [f"# Study {study_name}: report", "",
             f"{done} of {len(cells)} cells have scores" + (f"; not yet: {', '.join(missing)}." if missing else "."),
             "Cells: mean [95% percentile-bootstrap interval over responses] n=responses; fr/pt/ru pooled. "
             "language_correct, spelling, relevance and fulfilment in %, judge criteria on 0-2 (responses in "
             "the wrong language left out of every criterion but language).", "", *notes]
    parts += [f"![{p.stem}]({p.name})" for p in figures] + [""]
    parts += ["## Main evaluation by metric (Fig. 2, Fig. 3)", ""] + metric_tables(stats, cells)
    parts += (modifier_table(stats, cells) + benchmark_table(stats) + benchmark_differences(stats, cells, reference)
              + difference_table(diffs))
    atomic_write_text(written["csv"], to_csv(stats))
    atomic_write_text(written["differences"], csv_text(diffs, DIFFERENCE_FIELDS))
    atomic_write_text(written["markdown"], "\n".join(parts).rstrip() + "\n")
    return written
