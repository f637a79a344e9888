"""The paper's figures and tables from a study folder: every cell's per-response scores, aggregated with
their n and a 95% percentile-bootstrap interval; and differences between cells, which answer the same
items, by a paired bootstrap over those items.

- Fig. 2: each metric (surface metrics and the judge's criteria) against the learning rate, one line
  per data set and method, English and the other languages (pooled) apart; baselines as dashed lines.
- Fig. 3: the judge's criteria by cell, English and the other languages apart.
- Table 1: modifier fulfilment (and the judge's helpfulness) by modifier type.
- Benchmarks: any other evaluation set, by language.
- Differences: each trained cell against its model's baseline and against the next lower learning rate.

Written to WORKDIR/report: summary.csv (every aggregate, also per language), differences.csv, report.md
and PNGs.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import functools
import math
from pathlib import Path

import numpy as np

from xlit_jax.evaluate.instructions.modifiers import family
from xlit_jax.evaluate.items import ITEM_SCORES_FILE, read_item_scores
from xlit_jax.evaluate.report import (
    FRACTION_METRICS,
    JUDGE_METRICS,
    SURFACE_METRICS,
    markdown_table,
    ordered,
    save_figure,
)
from xlit_jax.io.files import atomic_write_text, csv_text
from xlit_jax.study import grid
from xlit_jax.train.probes import read_rounds

MAIN_SET, MODIFIER_SET = "chirkova", "chirkova_modifiers"
ENGLISH, OTHERS = "en", "non-en"  # the paper's two groups: English, and fr/pt/ru pooled
BOOTSTRAP_SAMPLES = 1000
STYLES, MARKERS = ("-", "--", "-."), ("o", "s", "^")  # per method in Fig. 2
FIG3_MAX_CELLS = 12  # more bars than this are unreadable: pick cells with the config's report.fig3
FIELDS = ("cell", "model", "data", "method", "lr", "set", "language", "modifier", "metric", "mean", "ci_low",
          "ci_high", "n")
MODIFIER_BLANK = ""  # the modifier column of aggregates over every item (xlit-eval's scores.csv writes "all")
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
    """{(set, language, modifier family or MODIFIER_BLANK, metric): {(language, id): value per response}} of one cell."""
    values = collections.defaultdict(dict)
    for row in read_item_scores(item_scores):
        modifiers = (MODIFIER_BLANK,) + ((family(row["modifier"]),) if row.get("modifier") else ())
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
        path = grid.cell_paths(workdir, cell).eval / ITEM_SCORES_FILE
        if not path.is_file():
            missing.append(cell.name)
            continue
        by_cell[cell.name] = cell_values(path)
        for (eval_set, language, modifier, metric), by_item in sorted(by_cell[cell.name].items()):
            values = list(by_item.values())
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
    """(cell, reference) pairs: each trained cell against its model's baselines and against the same model,
    data and method at the next lower learning rate."""
    pairs = []
    for cell in (c for c in cells if c.trains):
        pairs += [(cell, base) for base in cells if not base.trains and base.model == cell.model]
        lower = [c for c in cells if c.trains and (c.model, c.data, c.method) == (cell.model, cell.data, cell.method)
                 and _lr_value(c.lr) < _lr_value(cell.lr)]
        if lower:
            pairs.append((cell, max(lower, key=lambda c: _lr_value(c.lr))))
    return pairs


def differences(cells: list[grid.Cell], by_cell: dict[str, dict]) -> list[dict]:
    """Paired differences (cell - reference) on the main set, per metric, in English and fr/pt/ru."""
    rows = []
    for cell, reference in comparisons(cells):
        if cell.name not in by_cell or reference.name not in by_cell:
            continue
        mine, theirs = by_cell[cell.name], by_cell[reference.name]
        for metric in SURFACE_METRICS + JUDGE_METRICS:
            for group in (ENGLISH, OTHERS):
                key = (MAIN_SET, group, MODIFIER_BLANK, metric)
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
        body.append([r["cell"], r["against"], r["metric"], "fr/pt/ru" if r["language"] == OTHERS else r["language"],
                     f"{k * r['difference']:+.{digits}f} [{k * r['ci_low']:+.{digits}f}, {k * r['ci_high']:+.{digits}f}] "
                     f"n={r['n']}", holds])
    return ["## Differences between cells (paired bootstrap over items)", "",
            "cell minus the cell it is compared with, on the items both scored (n), 95% percentile-bootstrap "
            "interval of 1,000 resamples of those items; holds: the interval excludes 0. Percentage points for "
            "fractions.", "", markdown_table(["cell", "against", "metric", "languages", "difference", "holds"], body),
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
    for metric in [m for m in SURFACE_METRICS + JUDGE_METRICS if m in present]:
        body = [[c.name, cell_text(index.get((c.name, MAIN_SET, ENGLISH, MODIFIER_BLANK, metric))),
                 cell_text(index.get((c.name, MAIN_SET, OTHERS, MODIFIER_BLANK, metric)))]
                for c in cells if (c.name, metric) in cell_metrics]
        unit = "%" if metric in FRACTION_METRICS else "0-2"
        parts += [f"### {metric} ({unit})", "", markdown_table(["cell", ENGLISH, "fr/pt/ru"], body), ""]
    return parts


def modifier_table(stats: list[Stat], cells: list[grid.Cell]) -> list[str]:
    """Table 1: per cell and modifier type, fulfilment and helpfulness in en and the other languages."""
    mine = [s for s in stats if s.set == MODIFIER_SET and s.modifier != MODIFIER_BLANK]
    if not mine:
        return []
    index = _index(mine)
    metrics = [m for m in ("fulfilled", "judge_helpfulness") if any(s.metric == m for s in mine)]
    header = ["cell", "modifier"] + [f"{m} {g}" for m in metrics for g in (ENGLISH, "fr/pt/ru")]
    body = [[c.name, mod] + [cell_text(index.get((c.name, MODIFIER_SET, g, mod, m)))
                             for m in metrics for g in (ENGLISH, OTHERS)]
            for c in cells for mod in ordered(s.modifier for s in mine if s.labels["cell"] == c.name)]
    return ["## Table 1: modifier fulfilment by type", "",
            "fulfilled: % of responses meeting the modifier's rule-checkable condition; judge_helpfulness: "
            "0-2.", "", markdown_table(header, body), ""]


def benchmark_table(stats: list[Stat]) -> list[str]:
    mine = [s for s in stats if s.set not in (MAIN_SET, MODIFIER_SET) and s.modifier == MODIFIER_BLANK]
    if not mine:
        return []
    languages = ordered(s.language for s in mine if s.language != OTHERS)
    index = {(s.labels["cell"], s.set, s.metric, s.language): s for s in mine}
    rows = ordered((s.labels["cell"], s.set, s.metric) for s in mine)
    body = [[*row] + [cell_text(index.get((*row, lang))) for lang in languages] for row in rows]
    return ["## Benchmarks by language", "", markdown_table(["cell", "set", "metric"] + languages, body), ""]


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
    metrics = [m for m in SURFACE_METRICS + JUDGE_METRICS
               if any((c.name, MAIN_SET, ENGLISH, MODIFIER_BLANK, m) in index for c in mine)]
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
                                and (key := (c.name, MAIN_SET, group, MODIFIER_BLANK, metric)) in index)
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
                stat = index.get((base.name, MAIN_SET, group, MODIFIER_BLANK, metric))
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
    return [c for c in cells if any((c.name, MAIN_SET, ENGLISH, MODIFIER_BLANK, m) in index for m in JUDGE_METRICS)]


def plot_criteria(stats: list[Stat], judged: list[grid.Cell], path: Path) -> bool:
    """Fig. 3: the judge's 6 criteria, a bar per cell, en | non-en panels, 95% intervals."""
    index = _index(stats)
    if not judged:
        return False
    criteria = [m for m in JUDGE_METRICS if any((c.name, MAIN_SET, g, MODIFIER_BLANK, m) in index
                                                for c in judged for g in (ENGLISH, OTHERS))]
    plt, fig, axes = _figure(1, 2, legend_rows=math.ceil(len(judged) / 3))
    width = 0.8 / len(judged)
    for ax, group, title in zip(axes[0], (ENGLISH, OTHERS), ("English", "fr / pt / ru")):
        for j, cell in enumerate(judged):
            x, y, err = [], [], []
            for i, metric in enumerate(criteria):
                stat = index.get((cell.name, MAIN_SET, group, MODIFIER_BLANK, metric))
                if stat is not None:
                    x.append(i + (j - (len(judged) - 1) / 2) * width)
                    y.append(stat.mean)
                    err.append((stat.mean - stat.ci_low, stat.ci_high - stat.mean))
            ax.bar(x, y, width, yerr=np.array(err).T if err else None, capsize=2, label=cell.name)
        ax.set_xticks(range(len(criteria)), [m.removeprefix("judge_") for m in criteria], rotation=30)
        ax.set_ylim(0, 2.05)
        ax.set_ylabel("mean score (0-2)")
        ax.set_title(title)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(judged), 3),
               fontsize="small")
    fig.suptitle("LLM judge's criteria by model (95% bootstrap intervals)")
    save_figure(plt, fig, path, dpi=110)
    return True


def plot_probe_curves(cells: list[grid.Cell], workdir: Path, path: Path) -> bool:
    """The drift curves logged while training (train.eval_every): probe language correctness vs step, a row
    per model / data / method, a column per probe language, a line per learning rate."""
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
                points = [(r["step"], 100 * r[key]) for r in rounds[c] if (key := f"probe/{lang}{suffix}") in r]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, label=f"lr {c.lr}")
            ax.set_ylim(-5, 105)
            ax.set_title(f"{' / '.join(group)}: {lang}", fontsize="medium")
            ax.set_xlabel("step")
            ax.set_ylabel("% answers in the prompt's language")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle("Language correctness of the probe prompts while training")
    save_figure(plt, fig, path, dpi=110)
    return True


def write(cells: list[grid.Cell], workdir: Path, study_name: str, fig3_patterns=None) -> dict[str, Path]:
    """Aggregate every evaluated cell into WORKDIR/report; returns the files written. Fig. 3 shows the
    judged cells matching `fig3_patterns` (globs; default: all of them, if there are not too many)."""
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
    elif plot_criteria(stats, judged, out / "fig3_criteria.png"):
        written["fig3"] = out / "fig3_criteria.png"
        figures.append(written["fig3"])
    done = len(cells) - len(missing)
    parts = [f"# Study {study_name}: report", "",
             f"{done} of {len(cells)} cells have scores" + (f"; not yet: {', '.join(missing)}." if missing else "."),
             "Cells: mean [95% percentile-bootstrap interval over responses] n=responses; fr/pt/ru pooled. "
             "language_correct, spelling, relevance and fulfilment in %, judge criteria on 0-2 (responses in "
             "the wrong language left out of every criterion but language).", "", *notes]
    parts += [f"![{p.stem}]({p.name})" for p in figures] + [""]
    parts += ["## Main evaluation by metric (Fig. 2, Fig. 3)", ""] + metric_tables(stats, cells)
    parts += modifier_table(stats, cells) + benchmark_table(stats) + difference_table(diffs)
    atomic_write_text(written["csv"], to_csv(stats))
    atomic_write_text(written["differences"], csv_text(diffs, DIFFERENCE_FIELDS))
    atomic_write_text(written["markdown"], "\n".join(parts).rstrip() + "\n")
    return written
