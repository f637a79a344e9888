"""xlit-data-stats: the numbers a user checks before training."""

import json
import os
import subprocess
import sys

import pytest

from xlit_jax.data.stats import compute_stats, markdown, write_stats

from support import REPO


@pytest.fixture(scope="module")
def seed_task_mix(shared_data):
    return [f"alpaca:{shared_data}/seed_tasks_parallel/seed_tasks.{lang}.jsonl,n=60" for lang in ("en", "fr", "ru")]


def test_stats_of_a_three_language_mix(tok, seed_task_mix, tmp_path):
    stats, lengths = compute_stats(seed_task_mix, tok, "chat", seq_len=256, tokens_per_batch=1024, mixing="uniform")
    assert stats["records"] == 180 and stats["examples"] + stats["dropped"] == 180
    assert {lang: row["examples"] for lang, row in stats["languages"].items()} == {
        lang: len(lengths[lang]) for lang in ("en", "fr", "ru")}
    for lang, row in stats["languages"].items():
        assert row["tokens"] == sum(lengths[lang]) and 0 < row["target_tokens"] < row["tokens"]
        assert max(lengths[lang]) <= 257 and stats["length_percentiles"][lang][100] == max(lengths[lang])
    # fastText sees mostly the declared language in each part of the mix (seed-task answers hold some code).
    for lang, found in stats["detected_languages"].items():
        assert max(found, key=found.get) == lang and found[lang] > 0.75 * sum(found.values())
    assert 0.8 < stats["packing"]["efficiency"] <= 1 and stats["packing"]["target_share"] < stats["packing"][
        "efficiency"]
    directory = write_stats(stats, lengths, tmp_path / "stats")
    assert json.loads((directory / "stats.json").read_text()) == json.loads(json.dumps(stats))
    assert (directory / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (directory / "stats.md").read_text()
    assert table == markdown(stats) and f"| fr | {stats['languages']['fr']['examples']} |" in table


def test_truncation_shows_in_the_counts(tok, shared_data):
    stats, _ = compute_stats([f"lima:{shared_data}/lima/lima.en.jsonl,n=200"], tok, "llama2", seq_len=512,
                             tokens_per_batch=2048, langid=False)
    assert stats["truncated"] > 0 and "detected_languages" not in stats
    assert stats["sources"][f"{shared_data}/lima/lima.en.jsonl"] == {"loaded": 1030, "kept": 200, "skipped": 0}


@pytest.mark.slow  # ~6 s (the binary): CI runs it; make test keeps the statistics' own tests above
def test_cli(shared_data, tmp_path):
    done = subprocess.run([sys.executable, "-m", "launch.data_stats",
                           f"--data=lima:{shared_data}/lima/lima.en.jsonl,n=50",
                           f"--data=alpaca:{shared_data}/seed_tasks_parallel/seed_tasks.fr.jsonl,n=50",
                           "--mixing=weights", "--weights=en=1,fr=1", "--seq_len=1024", f"--output_dir={tmp_path}/s"],
                          capture_output=True, text=True, cwd=REPO, env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "# Data mix: 100 records" in done.stdout
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["lengths.png", "stats.json", "stats.md"]
