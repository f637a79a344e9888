import json

import pytest

from xlit_jax.evaluate.items import read_item_scores
from xlit_jax.evaluate.report import aggregate, markdown


def row(id_, scorer, scores=None, language="fr", modifier=None, error=None):
    r = {"model": "m", "set": "chirkova_modifiers", "language": language, "id": id_, "scorer": scorer,
         "modifier": modifier, "scores": scores or {}, "details": {}}
    if error:
        del r["scores"], r["details"]
        r["error"] = error
    return r


def test_latest_success_stands_over_errors(tmp_path):
    path = tmp_path / "item_scores.jsonl"
    rows = [row("1", "judge", error="garbage"), row("1", "judge", {"judge_language": 2.0}),
            row("1", "judge", error="garbage again"), row("2", "judge", error="first"),
            row("2", "judge", error="second")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"model": "m", "se')
    standing = {r["id"]: r for r in read_item_scores(path)}
    assert standing["1"]["scores"] == {"judge_language": 2.0}
    assert standing["2"]["error"] == "second"


def test_aggregate_counts_and_modifier_families():
    rows = [row("1", "spelling", {"spelling": 0.9}, modifier="num_items_3"),
            row("2", "spelling", {"spelling": 0.7}, modifier="num_items_5"),
            row("3", "spelling", {}, modifier="lang_en"),  # left out: wrong language
            row("1", "judge", {"judge_language": 2.0, "judge_helpfulness": 1.0}, modifier="num_items_3"),
            row("2", "judge", {"judge_language": 0.0}, modifier="num_items_5"),
            row("3", "judge", error="no JSON", modifier="lang_en")]
    got = {(r["modifier"], r["metric"]): r for r in aggregate(rows)}
    spelling = got[("all", "spelling")]
    assert (spelling["mean"], spelling["n"], spelling["items"], spelling["errors"]) == (pytest.approx(0.8), 2, 3, 0)
    assert got[("num_items", "spelling")]["n"] == 2 and ("lang", "spelling") not in got
    helpful = got[("all", "judge_helpfulness")]
    assert (helpful["mean"], helpful["n"], helpful["items"], helpful["errors"]) == (1.0, 1, 3, 1)
    assert got[("all", "judge_language")]["mean"] == 1.0
    table = markdown(aggregate(rows))
    assert "| m | fr | 80.0 (2) | 1.00 (2) | 1.00 (1) |" in table
    assert "### Helpfulness under each modifier (LLM judge, 0-2)" in table
    assert "| m | num_items | 1.00 (1) |" in table
