"""What the two evaluation pipelines (instructions/, harness/) share about their items: which ids a run
takes, and how each item's scores are keyed in item_scores.jsonl, the append-only file every scorer
writes and every report reads (one model per out_dir)."""

from __future__ import annotations

import random
from pathlib import Path

from xlit_jax.errors import InputError
from xlit_jax.io.files import read_output_jsonl

ITEM_SCORES_FILE = "item_scores.jsonl"


def choose_ids(ids: list[str], limit: int | None, seed: int | None) -> set[str]:
    """All ids, the first `limit` of the sorted ids, or a seeded sample of `limit`."""
    ids = sorted(set(ids))
    if limit is None or limit >= len(ids):
        return set(ids)
    if seed is None:
        return set(ids[:limit])
    return set(random.Random(seed).sample(ids, limit))


def score_key(row: dict) -> tuple:
    return (row["model"], row["set"], row["language"], row["id"], row["scorer"])


def check_model(where: str, row: dict, model_name: str) -> None:
    """A resumed out_dir holds one model's results: refuse another's."""
    if row.get("model") != model_name:
        raise InputError(f"{where}: holds results of model {row.get('model')!r}, but this run "
                         f"evaluates {model_name!r}; use another --out_dir (one model per out_dir)")


def read_item_scores(path: Path) -> list[dict]:
    """The standing row per (model, set, language, id, scorer): the latest success, else the latest error."""
    standing = {}
    for row in read_output_jsonl(path):
        key = score_key(row)
        if "error" not in row or "error" in standing.get(key, {"error": None}):
            standing[key] = row
    return list(standing.values())
