"""What a data mix will feed the trainer: counts, tokens, detected languages, lengths and packing.

`compute_stats` runs the same loading, templating, truncation and packing as training (pipeline.py) and
returns a JSON-able dict and the example lengths per language; `write_stats` puts stats.json, stats.md
(tables) and lengths.png (a histogram of example lengths per language) into one directory, atomically.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xlit_jax.data.langid import LanguageIdentifier
from xlit_jax.data.pipeline import PackedBatches, batch_size_for, load_mix, tokenize
from xlit_jax.data.records import Record, Source
from xlit_jax.data.templates import get_template
from xlit_jax.io.files import atomic_directory

PERCENTILES = (0, 50, 90, 99, 100)


def detect_languages(texts: list[str], lid_model: str | None = None) -> list[str | None]:
    """fastText lid.176's language per text (None for a text without words)."""
    return [lang for lang, _ in LanguageIdentifier(lid_model).predict(texts)]


def packing(examples, seq_len: int, batch_size: int, seed: int = 0, mixing: str = "none",
            weights: dict[str, float] | None = None) -> dict:
    """One epoch packed as training would: micro-batches, and the share of positions holding tokens."""
    batches = PackedBatches(examples, seq_len, batch_size, seed, mixing, weights, epochs=1)
    count = filled = targets = 0
    for batch in batches:
        count += 1
        filled += int((batch["segment_ids"] > 0).sum())
        targets += int(batch["loss_mask"].sum())
    capacity = count * batch_size * seq_len
    return {"micro_batches": count, "efficiency": filled / capacity, "target_share": targets / capacity}


def compute_stats(sources: Sequence[Source | str], tokenizer, template: str = "llama2", seq_len: int = 2048,
                  tokens_per_batch: int = 4096, seed: int = 0, mixing: str = "none",
                  weights: dict[str, float] | None = None, truncation: str = "truncate",
                  skip_invalid: bool = False, langid: bool = True,
                  lid_model: str | None = None) -> tuple[dict, dict[str, list[int]]]:
    records, per_source = load_mix(sources, seed, skip_invalid)
    examples, counts = tokenize(records, get_template(template, tokenizer), tokenizer, seq_len, truncation)
    by_lang: dict[str, dict] = defaultdict(lambda: {"examples": 0, "tokens": 0, "target_tokens": 0})
    lengths: dict[str, list[int]] = defaultdict(list)
    for ex in examples:
        lengths[ex.lang].append(len(ex.ids))
        row = by_lang[ex.lang]
        row["examples"] += 1
        row["tokens"] += len(ex.ids)
        row["target_tokens"] += int(ex.target.sum())
    stats = {
        "settings": {"template": template, "seq_len": seq_len, "tokens_per_batch": tokens_per_batch,
                     "seed": seed, "mixing": mixing, "weights": weights, "truncation": truncation},
        "sources": per_source,
        "records": len(records), "examples": len(examples),
        "truncated": counts["truncated"], "dropped": counts["dropped"],
        "languages": dict(sorted(by_lang.items())),
        "length_percentiles": {lang: dict(zip(PERCENTILES, np.percentile(lengths[lang], PERCENTILES).round().tolist()))
                               for lang in sorted(lengths)},
        "packing": packing(examples, seq_len, batch_size_for(tokens_per_batch, seq_len), seed, mixing, weights),
    }
    if langid:
        stats["detected_languages"] = _detected(records, lid_model)
    return stats, dict(lengths)


def _detected(records: list[Record], lid_model: str | None) -> dict[str, dict[str, int]]:
    """Per declared language, how many records' answers fastText assigns to each language."""
    answers = ["\n".join(t.content for t in r.turns if t.role == "assistant") for r in records]
    table: dict[str, Counter] = defaultdict(Counter)
    for record, lang in zip(records, detect_languages(answers, lid_model)):
        table[record.lang][lang or "none"] += 1
    return {lang: dict(c.most_common()) for lang, c in sorted(table.items())}


def markdown(stats: dict) -> str:
    s = stats["settings"]
    lines = [f"# Data mix: {stats['records']} records -> {stats['examples']} examples",
             "", f"template {s['template']}, seq_len {s['seq_len']}, {s['tokens_per_batch']} tokens per "
             f"micro-batch, mixing {s['mixing']}; {stats['truncated']} truncated, {stats['dropped']} dropped",
             "", "| source | loaded | kept | skipped (invalid) |", "|---|---:|---:|---:|"]
    lines += [f"| {path} | {c['loaded']} | {c['kept']} | {c['skipped']} |" for path, c in stats["sources"].items()]
    lines += ["", "| language | examples | tokens | target tokens | median length | 99th percentile |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {lang} | {r['examples']} | {r['tokens']} | {r['target_tokens']} | "
              f"{stats['length_percentiles'][lang][50]:.0f} | {stats['length_percentiles'][lang][99]:.0f} |"
              for lang, r in stats["languages"].items()]
    p = stats["packing"]
    lines += ["", f"Packing (one epoch): {p['micro_batches']} micro-batches, {p['efficiency']:.1%} of positions "
                  f"hold tokens, {p['target_share']:.1%} are training targets."]
    if "detected_languages" in stats:
        lines += ["", "| declared | detected by fastText (answers) |", "|---|---|"]
        lines += [f"| {lang} | {', '.join(f'{k} {v}' for k, v in found.items())} |"
                  for lang, found in stats["detected_languages"].items()]
    return "\n".join(lines) + "\n"


def histogram(lengths: dict[str, list[int]], seq_len: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    top = seq_len + 1
    bins = np.linspace(0, top, 41)
    for lang, values in sorted(lengths.items()):
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{lang} ({len(values)})")
    ax.axvline(top, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="tokens per example (after truncation)", ylabel="examples", title="Example lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_stats(stats: dict, lengths: dict[str, list[int]], directory: str | Path, overwrite: bool = False) -> Path:
    with atomic_directory(directory, overwrite) as tmp:
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "stats.md").write_text(markdown(stats), encoding="utf-8")
        histogram(lengths, stats["settings"]["seq_len"], tmp / "lengths.png")
    return Path(directory)
