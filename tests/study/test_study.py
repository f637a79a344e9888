"""xlit-study: the grid, the runner (kill and resume, a failing cell), printed commands, the report."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ml_collections import ConfigDict
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from xlit_jax.errors import InputError, UserError
from xlit_jax.evaluate.report import MODIFIER_ALL
from xlit_jax.study import grid, report

from support import REPO

TINY_STUDY = '''
from ml_collections import ConfigDict


def get_config():
    return ConfigDict({
        "name": "tiny", "experiment": "configs/experiments/tiny_{method}.py",
        "models": ("tiny",), "datasets": ("lima-en",), "methods": ("ft", "lora"), "learning_rates": ("1e-3",),
        "model_sources": {},
        "train": {"data": {"seq_len": 128, "tokens_per_batch": 256, "grad_accum": 1},
                  "train": {"max_steps": 6, "save_every": 2, "log_every": 1, "tensorboard": False,
                            "export_peft": False, "async_checkpoint": False}},
        "eval": {"eval_set": "chirkova", "languages": "en,fr", "limit": 2, "seed": 0,
                 "metrics": "language,spelling", "max_new_tokens": 6, "batch_size": 4},
        "baselines": {"broken": "/nonexistent/model.gguf"},
    })
'''
FT = "tiny.lima-en.ft.lr1e-3"
LORA = "tiny.lima-en.lora.lr1e-3"


def study(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.study", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_paper_study_has_the_72_cells():
    from configs.studies import chirkova2024

    cells = grid.expand(chirkova2024.get_config())
    assert len(cells) == 72 and len({c.name for c in cells}) == 72
    assert cells[0].name == "llama2-13b.dolly-en.ft.lr1e-6"
    assert cells[0].experiment == "configs/experiments/paper.py:llama2-13b,dolly-en,ft,1e-6"
    assert [c.name for c in grid.select(cells, ["tower-7b.*.lora.lr1e-4"])] == [
        f"tower-7b.{d}.lora.lr1e-4" for d in ("dolly-en", "lima-en", "dolly-lima-size", "dolly-dt")]
    with pytest.raises(InputError, match="--only=nothing.* matches no cell"):
        grid.select(cells, ["nothing*"])


def test_commands_carry_overrides_sources_and_eval_flags(tmp_path):
    config = ConfigDict({"name": "s", "experiment": "x.py:{model},{lr}", "models": ("m",), "datasets": ("d",),
                         "methods": ("ft",), "learning_rates": ("1e-4",), "model_sources": {"m": "/w/m"},
                         "train": {"train": {"max_steps": 3}, "data": {"sources": ("a:1", "b:2")}},
                         "eval": {"languages": ("en", "fr"), "judge_model": ""}, "baselines": {"base": "smollm2-135m"}})
    base, cell = grid.expand(config)
    paths = grid.cell_paths(tmp_path, cell)
    argv = grid.commands(cell, paths, config.eval, "xlit")
    assert argv["train"] == ["xlit-train", "--config=x.py:m,1e-4", f"--workdir={paths.train}",
                             "--config.data.sources=('a:1', 'b:2')", "--config.train.max_steps=3",
                             "--config.model.source=/w/m"]
    assert argv["eval"] == ["xlit-eval", f"--model={paths.train}", "--model_name=m.d.ft.lr1e-4",
                            f"--out_dir={paths.eval}", "--languages=en,fr"]  # an empty flag keeps its default
    assert list(grid.commands(base, grid.cell_paths(tmp_path, base), config.eval)) == ["eval"]
    assert grid.commands(base, grid.cell_paths(tmp_path, base), config.eval)["eval"][3] == "--model=smollm2-135m"


def test_bad_study_config_is_one_line_with_status_2(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(TINY_STUDY.replace('"methods": ("ft", "lora")', '"methods": ()'))
    result = study(f"--config={bad}", f"--workdir={tmp_path / 'w'}", "--status")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "xlit-study: study config: the grid axis 'methods' is empty"


def test_any_experiment_field_can_be_overridden_and_a_bad_cadence_is_refused_before_the_baseline(tmp_path):
    """--config.train.* reaches every experiment field (docs/study.md), only the fields set are passed on, and
    a training setting xlit-train would refuse (eval_every > max_steps) stops the study before any stage."""
    from configs.studies import smollm2_mini

    config = smollm2_mini.get_config()
    config.train.data.seq_len, config.train.train.seed = 256, 3
    cell = next(c for c in grid.expand(config) if c.trains)
    given = {"data.seq_len": "256", "train.seed": "3", "train.max_steps": "20"}
    assert given.items() <= dict(cell.train_overrides).items()
    assert "optim.lr" not in dict(cell.train_overrides)  # unset: the experiment's own
    experiment = grid.experiment_config(cell)
    assert (experiment.data.seq_len, experiment.train.seed, experiment.optim.lr) == (256, 3, float(cell.lr))
    result = study("--config=configs/studies/smollm2_mini.py", f"--workdir={tmp_path / 'w'}",
                   "--config.train.train.eval_every=50", "--config.train.data.seq_len=256")
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (
        2, "xlit-study: cell smollm2-135m.lima-en.ft.lr1e-5: train.eval_every=50 must be between 1 and the run's "
           "train.max_steps=20 (0 turns evaluation off)")
    assert not (tmp_path / "w").exists()


def test_a_bad_data_setting_is_refused_for_the_training_cells_before_any_stage():
    from configs.studies import smollm2_mini

    config = smollm2_mini.get_config()
    config.train.data.mixing = "bogus"
    with pytest.raises(InputError, match=r"^cell smollm2-135m\.lima-en\.\S+: mixing='bogus' is not one of none, "
                                         r"uniform, weights$"):
        grid.check_training_settings(grid.expand(config))


def test_a_cell_another_runner_holds_is_left_alone(tmp_path):
    import fcntl

    from xlit_jax.study import runner

    config = ConfigDict({"name": "s", "experiment": "x.py", "models": ("m",), "datasets": ("d",),
                         "methods": ("ft",), "learning_rates": ("1e-4",), "eval": {}})
    (cell,) = grid.expand(config)
    paths = grid.cell_paths(tmp_path, cell)
    paths.root.mkdir(parents=True)
    with open(paths.root / runner.LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another runner process would
        assert runner.run_cell(cell, tmp_path, {}) == runner.RUNNING
        assert runner.cell_state(cell, paths) == (runner.RUNNING, "checkpoint step 0, 0 responses generated")
    assert not paths.log("train").exists()  # nothing was started
    assert runner.cell_state(cell, paths)[0] == runner.PARTIAL


def _done(cells: list, workdir: Path, eval_flags, monkeypatch) -> None:
    """Run `cells` with every stage a stub that succeeds: status.json records them as a real run does."""
    from xlit_jax.study import runner

    monkeypatch.setattr(runner, "_run_stage", lambda *args: (0, ""))
    assert set(runner.run(cells, workdir, eval_flags).values()) == {runner.DONE}


def test_a_rerun_with_other_settings_than_done_cells_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    """Cells done with 2 steps and 1 item each, then the study rerun as written (6 steps, 2 items): exit 2
    naming the stages, flags and cells, study.json and status.json as they were. The same settings, a
    setting xlit-train may change on resume, and a moved study folder pass."""
    from xlit_jax.study import runner

    path, workdir = tmp_path / "tiny_study.py", tmp_path / "study"
    path.write_text(TINY_STUDY)
    namespace = {}
    exec(TINY_STUDY, namespace)
    config = namespace["get_config"]()
    config.train.train.max_steps, config.eval.limit = 2, 1
    cells = grid.expand(config)
    _done(cells, workdir, config.eval, monkeypatch)
    (workdir / "study.json").write_text(config.to_json_best_effort(indent=2))  # as that run wrote it
    config.train.train.log_every = 2
    for folder in (workdir, shutil.copytree(workdir, tmp_path / "moved")):
        runner.check_recorded(grid.expand(config), folder, config.eval)
    records = {p: p.read_bytes() for p in workdir.rglob("*.json")}
    result = study(f"--config={path}", f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"xlit-study: {workdir}: done stages were run with other settings: eval (--limit 1 -> 2) in broken.base, "
        f"{FT}, {LORA}; train (--config.train.max_steps 2 -> 6) in {FT}, {LORA}; rerun with the settings they record "
        "(cells/NAME/status.json, data/DATASET/status.json), use a new --workdir, or remove those folders to redo them")
    assert {p: p.read_bytes() for p in workdir.rglob("*.json")} == records


def test_a_data_set_prepared_with_other_flags_is_named_once(tmp_path, monkeypatch):
    from xlit_jax.study import runner

    def config(n: int) -> ConfigDict:
        return ConfigDict({"name": "s", "experiment": "x.py", "models": ("m",), "datasets": ("d",),
                           "methods": ("ft", "lora"), "learning_rates": ("1e-4",), "eval": {},
                           "data_prep": {"d": {"steps": ({"program": "demos", "n": n, "output": "{prep}/d.jsonl"},),
                                               "sources": ("chat:{prep}/d.jsonl",)}}})

    _done(grid.expand(config(5)), tmp_path, {}, monkeypatch)
    assert runner.read_status(grid.data_paths(tmp_path, "d"))["settings"] == {
        "demos": ["--n=5", "--output={workdir}/data/d/d.jsonl"]}
    with pytest.raises(UserError, match=r": done stages were run with other settings: demos \(--n 5 -> 7\) "
                                                  r"in data set d; rerun"):
        runner.check_recorded(grid.expand(config(7)), tmp_path, {})


def test_a_failing_stage_logs_and_records_the_reason_its_log_ends_with(tmp_path, caplog):
    from xlit_jax.study import runner

    paths = grid.CellPaths(tmp_path / "cell")
    paths.root.mkdir()
    paths.log("train").write_text("=== an earlier attempt\nxlit-train: an earlier reason\n")
    refused = "import sys; print('step 1', end='\\r'); print('xlit-train: the reason', file=sys.stderr); sys.exit(2)"
    stages = {"train": [sys.executable, "-c", refused]}
    with caplog.at_level("ERROR"):
        assert runner._run_stages("c", stages, paths, tmp_path, {"train": []}) == runner.FAILED
    assert runner.read_status(paths)["failed"]["reason"] == "xlit-train: the reason"
    assert f"c: train failed (exit 2): xlit-train: the reason; its log: {paths.log('train')}" in caplog.text
    stages = {"train": [sys.executable, "-c", "raise SystemExit(3)"]}  # no line of its own: not an earlier one
    assert runner._run_stages("c", stages, paths, tmp_path, {"train": []}) == runner.FAILED
    assert runner.read_status(paths)["failed"]["reason"] == ""


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the study ended before the checkpoint appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.2)


def _responses(workdir: Path, cell: str) -> list:
    lines = (workdir / "cells" / cell / "eval" / "generations.jsonl").read_text().splitlines()
    return sorted((r["language"], r["id"], r["response"]) for r in map(json.loads, lines))


@pytest.mark.manual
def test_two_tiny_cells_killed_resumed_and_printed_commands_agree(tmp_path, shared_data):
    """Kill the study mid-training, rerun it to the end; a failing cell does not stop the others; the
    printed commands, run as printed, give the same responses as the killed and resumed cell."""
    config = tmp_path / "tiny_study.py"
    config.write_text(TINY_STUDY)
    workdir = tmp_path / "study"
    flags = [f"--config={config}", f"--workdir={workdir}"]
    process = subprocess.Popen([sys.executable, "-m", "launch.study", *flags], cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(workdir / "cells" / FT / "train" / "checkpoints" / "2", process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    status = study(*flags, "--status").stdout
    assert "broken.base" in status and "failed" in status.split("broken.base")[1].splitlines()[0]
    assert f"{FT}" in status and "partial" in status.split(FT)[1].splitlines()[0]

    finished = study(*flags)
    assert finished.returncode == 1, finished.stderr  # the broken baseline failed
    assert "resumed from step" in (workdir / "cells" / FT / "train.log").read_text()
    assert "/nonexistent/model.gguf" in (workdir / "cells" / "broken.base" / "eval.log").read_text()
    table = study(*flags, "--status").stdout
    assert "2 done, 0 running, 0 partial, 1 failed, 0 not started" in table
    rows = list(csv.DictReader((workdir / "report" / "summary.csv").open()))
    assert {r["cell"] for r in rows} == {FT, LORA}
    assert {(r["language"], r["metric"]) for r in rows if r["cell"] == FT} >= {("en", "language_correct"),
                                                                                ("non-en", "language_correct")}
    assert (workdir / "report" / "fig2_learning_rate.tiny.png").stat().st_size > 10_000
    assert "2 of 3 cells have scores; not yet: broken.base." in (workdir / "report" / "report.md").read_text()

    printed = study(*flags[:1], f"--workdir={tmp_path / 'printed'}", "--print_commands", "--launcher=python",
                    f"--only={FT}").stdout
    assert printed.splitlines()[0] == f"# {FT}" and len(printed.splitlines()) == 3
    ran = subprocess.run(["bash", "-e", "-c", printed], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert _responses(tmp_path / "printed", FT) == _responses(workdir, FT)


def _synthetic_study(workdir: Path, cells: list, rng: np.random.Generator, n: int = 100) -> dict:
    """item_scores.jsonl per cell with Bernoulli language correctness and judge helpfulness; returns the
    values drawn, by (cell, group, metric)."""
    drawn = {}
    for k, cell in enumerate(cells):
        p = 0.2 + 0.6 * k / max(len(cells) - 1, 1)
        path = grid.cell_paths(workdir, cell).eval / "item_scores.jsonl"
        path.parent.mkdir(parents=True)
        rows = []
        for language in ("en", "fr", "pt", "ru"):
            correct = rng.random(n) < (p if language == "en" else p / 2)
            helpful = rng.integers(0, 3, n)
            group = "en" if language == "en" else "non-en"
            drawn.setdefault((cell.name, group, "language_correct"), []).extend(correct.astype(float))
            drawn.setdefault((cell.name, group, "judge_helpfulness"), []).extend(helpful.astype(float))
            for i in range(n):
                rows.append({"model": cell.name, "set": "chirkova", "language": language, "id": str(i),
                             "scorer": "language", "modifier": None, "scores": {"language_correct": float(correct[i])}})
                rows.append({"model": cell.name, "set": "chirkova", "language": language, "id": str(i),
                             "scorer": "judge", "modifier": None, "scores": {"judge_helpfulness": float(helpful[i])}})
                rows.append({"model": cell.name, "set": "chirkova_modifiers", "language": language, "id": str(i),
                             "scorer": "modifiers", "modifier": "num_items_5" if i % 2 else "short",
                             "scores": {"fulfilled": float(i % 4 == 1)}})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return drawn


def test_report_on_synthetic_scores_has_known_means_and_intervals(tmp_path):
    from configs.studies import chirkova2024

    cells = grid.select(grid.expand(chirkova2024.get_config()), ["llama2-7b.lima-en.*"])
    drawn = _synthetic_study(tmp_path, cells, np.random.default_rng(0))
    benchmark = [{"model": cells[0].name, "set": "mmlu", "language": lang, "id": str(i), "scorer": "mmlu",
                  "modifier": None, "scores": {"accuracy": float(i < 3)}} for lang in ("de", "it") for i in range(4)]
    with (grid.cell_paths(tmp_path, cells[0]).eval / "item_scores.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in benchmark)
    written = report.write(cells, tmp_path, "synthetic")
    rows = {(r["cell"], r["language"], r["modifier"], r["metric"]): r
            for r in csv.DictReader(written["csv"].open())}
    for (cell, group, metric), values in drawn.items():
        row = rows[(cell, group, MODIFIER_ALL, metric)]
        mean, n = np.mean(values), len(values)
        assert int(row["n"]) == n == (100 if group == "en" else 300)
        assert float(row["mean"]) == pytest.approx(mean, abs=1e-12)
        half = 1.96 * np.std(values) / np.sqrt(n)  # the bootstrap's interval is close to the normal one
        assert float(row["ci_low"]) == pytest.approx(mean - half, abs=0.25 * half)
        assert float(row["ci_high"]) == pytest.approx(mean + half, abs=0.25 * half)
    # Table 1: every other modifier prompt is a list of 5 and fulfilled 1 time in 2 (i % 4 == 1).
    assert float(rows[(cells[0].name, "en", "num_items", "fulfilled")]["mean"]) == 0.5
    assert float(rows[(cells[0].name, "fr", "short", "fulfilled")]["mean"]) == 0.0
    text = written["markdown"].read_text()
    assert "6 of 6 cells have scores." in text and "## Table 1" in text
    assert "### judge_helpfulness (0-2)" in text and "### language_correct (%)" in text
    assert f"| {cells[0].name} | mmlu | accuracy | 0.75 [0.25, 1.00] n=4 | 0.75 [0.25, 1.00] n=4 |" in text
    for key in ("fig2.llama2-7b", "fig3"):
        assert written[key].stat().st_size > 10_000


def test_bootstrap_interval_is_seeded_and_degenerate_cases_are_defined():
    values = np.r_[np.zeros(50), np.ones(50)]
    assert report.bootstrap_interval(values) == report.bootstrap_interval(values)
    assert report.bootstrap_interval([1.0]) == (1.0, 1.0)
    assert report.bootstrap_interval(np.ones(10)) == (1.0, 1.0)


@pytest.mark.parametrize("study_name", ["chirkova2024", "crossalpaca", "smollm2_mini", "crossalpaca_mini"])
def test_every_cell_of_the_shipped_studies_has_a_valid_training_config(study_name):
    import importlib

    study_config = importlib.import_module(f"configs.studies.{study_name}").get_config()
    for cell in grid.expand(study_config):
        if cell.trains:
            path, _, arg = cell.experiment.partition(":")
            module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
            config = module.get_config(arg) if arg else module.get_config()
            assert dict(cell.train_overrides).get("data.name", config.data.name) == cell.data
            assert (config.lora.rank > 0) == (cell.method == "lora")
            assert config.optim.lr == float(cell.lr), cell.name


def test_paired_bootstrap_over_items_sees_what_unpaired_intervals_miss():
    rng = np.random.default_rng(0)
    a = rng.random(100) < 0.5
    b = a.copy()
    b[np.flatnonzero(~a)[:10]] = True  # the same items, ten answered better
    before = {("fr", str(i)): float(v) for i, v in enumerate(a)}
    after = {("fr", str(i)): float(v) for i, v in enumerate(b)} | {("fr", "extra"): 1.0}  # one item only in b
    difference, low, high, n = report.paired_difference(before, after)
    assert (difference, n) == (pytest.approx(0.1), 100)
    assert 0.03 < low < 0.1 < high < 0.17  # excludes 0 ...
    assert report.bootstrap_interval(b.astype(float))[0] < report.bootstrap_interval(a.astype(float))[1]  # ... overlap
    assert report.paired_difference(before, {}) [3] == 0


def test_report_compares_each_cell_with_its_baseline_and_the_next_lower_learning_rate(tmp_path):
    from configs.studies import smollm2_mini

    cells = grid.expand(smollm2_mini.get_config())
    pairs = {(c.name, r.name) for c, r in report.comparisons(cells)}
    assert ("smollm2-135m.lima-en.ft.lr1e-3", "smollm2-135m.lima-en.ft.lr1e-4") in pairs
    assert ("smollm2-135m.lima-en.lora.lr1e-5", "smollm2-135m.base") in pairs
    assert len(pairs) == 6 + 4  # every trained cell vs the baseline; each lr above the lowest vs the one below
    _synthetic_study(tmp_path, cells, np.random.default_rng(1), n=20)
    written = report.write(cells, tmp_path, "mini")
    rows = list(csv.DictReader(written["differences"].open()))
    assert len(rows) == 10 * 2 * 2  # pairs x (language_correct, judge_helpfulness) x (en, non-en)
    assert {r["n"] for r in rows if r["language"] == "non-en"} == {"60"}
    assert "## Differences between cells (paired bootstrap over items)" in written["markdown"].read_text()


def test_a_findings_study_compares_each_data_set_with_the_first_at_the_same_learning_rate():
    from configs.studies import smollm2_multilingual

    pairs = {(c.name, r.name) for c, r in report.comparisons(grid.expand(smollm2_multilingual.get_config()))}
    for lr in ("1e-4", "1e-3"):
        assert (f"smollm2-135m.lima-fr-ru.ft.lr{lr}", f"smollm2-135m.lima-en.ft.lr{lr}") in pairs
    assert len(pairs) == 4 + 2 + 2  # vs the baseline, vs the lower lr, vs LIMA


def test_table1_has_each_language_and_the_average_over_types(tmp_path):
    from configs.studies import chirkova2024

    cells = grid.select(grid.expand(chirkova2024.get_config()), ["llama2-7b.lima-en.ft.lr1e-5"])
    _synthetic_study(tmp_path, cells, np.random.default_rng(0), n=8)
    text = report.write(cells, tmp_path, "synthetic")["markdown"].read_text()
    table = text[text.index("### fulfilled"):]
    assert table.splitlines()[2] == "| cell | modifier | en | fr | pt | ru | fr/pt/ru |"
    # short is never fulfilled (i % 4 == 1 only for odd i, the lists of 5), num_items 1 time in 2: Average 25%.
    assert f"| {cells[0].name} | Average | " + " | ".join(["25.0 (2 types)"] * 5) + " |" in table


def test_fig3_is_the_papers_seven_models_and_figs_4_and_5_are_drawn(tmp_path):
    from configs.studies import chirkova2024
    from xlit_jax.evaluate.instructions.judge import CRITERIA
    from xlit_jax.io.files import csv_text

    config = chirkova2024.get_config()
    cells = grid.expand(config)
    picked = grid.select(cells, list(config.report.fig3))
    assert sorted(c.name for c in picked) == sorted([
        "llama2-13b.dolly-en.ft.lr1e-5", "llama2-7b.dolly-en.ft.lr1e-5", "llama2-13b.lima-en.ft.lr1e-5",
        "llama2-13b.dolly-en.lora.lr1e-4", "llama2-13b.dolly-dt.ft.lr1e-5", "tower-7b.dolly-en.ft.lr1e-5",
        "tower-7b.dolly-dt.ft.lr1e-5"])  # not the 13B on down-sampled Dolly; TowerBase-7B on Dolly-DT in
    shown = picked[:2] + grid.select(cells, ["llama2-13b.dolly-lima-size.ft.lr1e-5"])
    _synthetic_study(tmp_path, shown, np.random.default_rng(0), n=6)
    written = report.write(shown, tmp_path, "synthetic", config.report.fig3)
    assert {"fig3", "fig4"} <= set(written) and "fig5" not in written  # no human evaluation yet
    human = tmp_path / "human" / "results"
    human.mkdir(parents=True)
    rows = [{"who": who, "criterion": c, "n": 30, "exact_pct": 70.0, "kappa_w": 0.4, "spearman": 0.5}
            for who in ("anna vs judge", "anna vs ben") for c in CRITERIA]
    (human / "agreement.csv").write_text(csv_text(rows, ("who", "criterion", "n", "exact_pct", "kappa_w", "spearman")))
    assert [r["who"] for r in report.read_agreement(human / "agreement.csv")] == ["anna vs judge"] * 6
    written = report.write(shown, tmp_path, "synthetic", config.report.fig3)
    for key in ("fig3", "fig4", "fig5"):
        assert written[key].read_bytes()[:4] == b"\x89PNG" and written[key].stat().st_size > 10_000
    assert "![fig5_agreement](fig5_agreement.png)" in written["markdown"].read_text()


def test_data_preparation_and_benchmark_stage_commands(tmp_path):
    from configs.studies import crossalpaca

    config = crossalpaca.get_config()
    cells = {c.name: c for c in grid.expand(config)}
    demos, plain = cells["llama2-7b.alpaca-demos.lora.lr1e-4"], cells["llama2-7b.alpaca-en.lora.lr1e-4"]
    folder = tmp_path / "data" / "alpaca-demos"
    [(step, argv)] = grid.prep_commands(demos, tmp_path, "xlit").items()
    assert step == "demos" and argv[0] == "xlit-demos"
    assert f"--output={folder}/alpaca_demos.jsonl" in argv and "--langs=ar,de,es,it,zh" in argv
    assert grid.prep_commands(plain, tmp_path) == {}
    stages = grid.commands(demos, grid.cell_paths(tmp_path, demos), config.eval, "xlit")
    assert list(stages) == ["train", "eval", "bench"] and demos.last_stage == "bench"
    assert f"--config.data.sources=('chat:{folder}/alpaca_demos.jsonl',)" in stages["train"]
    assert "--eval_set=xquad,mlqa,mmlu,bbh" in stages["bench"]
    assert stages["bench"][-1] == "--languages=ar,de,en,es,it,zh"
    assert stages["bench"][3].endswith(f"cells/{demos.name}/bench")
    # The translated arms: xlit-translate into alpaca-mt's folder (one translation for both), then for
    # alpaca-mt-demos one --mix_with per source; alpaca-mt trains on Alpaca and the translations.
    mt, mt_demos = cells["llama2-7b.alpaca-mt.lora.lr1e-4"], cells["llama2-7b.alpaca-mt-demos.lora.lr1e-4"]
    [translate] = grid.prep_commands(mt, tmp_path, "xlit").values()
    translate_again, mixed = grid.prep_commands(mt_demos, tmp_path, "xlit").values()
    output = lambda argv: Path(next(a for a in argv if a.startswith("--output_dir=")).split("=", 1)[1])  # noqa: E731
    assert translate[0] == translate_again[0] == "xlit-translate"
    shared = (tmp_path / "data/alpaca-mt/mt").resolve()
    assert output(translate).resolve() == output(translate_again).resolve() == shared
    assert sum(a.startswith("--mix_with=") for a in mixed) == 6
    assert len(dict(mt.train_overrides)["data.sources"].split(",")) == 6
    printed = grid.command_lines(list(cells.values()), tmp_path, config.eval, "xlit")
    assert printed.count("xlit-demos") == 2 and printed.index("# data set alpaca-demos") < printed.index(demos.name)
    bad = ConfigDict({**config.to_dict(), "data_prep": {"alpaca-demos": {"steps": ({"program": "rm"},),
                                                                          "sources": ("a",)}}})
    with pytest.raises(InputError, match="program must be one of demos, translate, each once"):
        grid.expand(bad)


def test_benchmark_differences_from_the_reference_cell(tmp_path):
    cells = grid.expand(ConfigDict({"name": "s", "experiment": "x.py", "models": ("m",), "datasets": ("a", "b"),
                                    "methods": ("ft",), "learning_rates": ("1e-4",)}))
    for cell, right in zip(cells, (2, 3)):
        path = grid.cell_paths(tmp_path, cell).bench / "item_scores.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({"model": cell.name, "set": "mmlu", "language": lang, "id": str(i),
                                            "scorer": "harness", "modifier": None, "scores": {"acc": float(i < right)}})
                                + "\n" for lang in ("ar", "zh") for i in range(4)))
    text = report.write(cells, tmp_path, "s")["markdown"].read_text()
    assert "## Benchmark differences from m.a.ft.lr1e-4 (points)" in text
    assert "| m.b.ft.lr1e-4 | mmlu acc | +25.0 | +25.0 |" in text
    assert "| m.b.ft.lr1e-4 | mmlu | acc | 75.0 [" in text


TINY_CROSSALPACA = '''
from ml_collections import ConfigDict

from xlit_jax.resources import shared_data


def get_config():
    return ConfigDict({
        "name": "tiny-crossalpaca", "experiment": "configs/experiments/tiny_lora.py",
        "models": ("tiny",), "datasets": ("lima-en", "lima-demos"), "methods": ("lora",),
        "learning_rates": ("1e-3",),
        "train": {"data": {"seq_len": 128, "tokens_per_batch": 256, "grad_accum": 1},
                  "train": {"max_steps": 2, "save_every": 2, "log_every": 1, "tensorboard": False,
                            "export_peft": False, "async_checkpoint": False}},
        "data_prep": {"lima-demos": {
            "steps": ({"program": "demos", "ntrex_dir": str(shared_data("ntrex128")), "langs": "ar,zh",
                       "max_pairs": 3, "ratio": 0.01, "mix_with": f"lima:{shared_data('lima/lima.en.jsonl')}",
                       "output": "{prep}/lima_demos.jsonl"},),
            "sources": ("chat:{prep}/lima_demos.jsonl",)}},
        "eval": {"eval_set": "chirkova", "languages": "en", "limit": 1, "metrics": "language", "max_new_tokens": 4},
        "bench": {"eval_set": "mmlu", "languages": "ar,zh", "limit": 2},
    })
'''


@pytest.mark.manual
def test_tiny_crossalpaca_prepares_data_once_and_runs_the_benchmark_stage(tmp_path, shared_data):
    config = tmp_path / "tiny_crossalpaca.py"
    config.write_text(TINY_CROSSALPACA)
    workdir = tmp_path / "study"
    flags = [f"--config={config}", f"--workdir={workdir}"]
    done = study(*flags)
    assert done.returncode == 0, done.stderr[-3000:]
    prepared = workdir / "data" / "lima-demos"
    assert json.loads((prepared / "status.json").read_text())["demos"] == "done"
    demos = [json.loads(line) for line in (prepared / "lima_demos.jsonl").read_text().splitlines()]
    assert len(demos) == 1030 + 10 and {d["lang"] for d in demos} == {"en", "ar", "zh"}
    cell = "tiny.lima-demos.lora.lr1e-3"
    status = json.loads((workdir / "cells" / cell / "status.json").read_text())
    assert [status.get(s) for s in ("train", "eval", "bench")] == ["done"] * 3
    trained_on = json.loads((workdir / "cells" / cell / "train" / "experiment.json").read_text())
    assert trained_on["data"]["sources"] == [f"chat:{prepared}/lima_demos.jsonl"]
    text = (workdir / "report" / "report.md").read_text()
    assert "## Benchmark differences from tiny.lima-en.lora.lr1e-3 (points)" in text
    assert f"| {cell} | mmlu acc |" in text
    again = study(*flags, "--status")
    assert "2 done" in again.stdout
    assert study(*flags).returncode == 0
    assert (prepared / "demos.log").read_text().count("\n=== ") == 1  # prepared once


@pytest.mark.parametrize("name", ["smollm2_small_data", "smollm2_multilingual", "smollm2_modifiers", "smollm2_lcb"])
def test_the_findings_studies_expand_to_the_experiments_they_name(name):
    """Each finding's study (docs/results.md) gives its cells the data set and learning rate in their names,
    and the experiment each cell's xlit-train would run says the same."""
    study_config = ConfigFileFlagParser("config").parse(f"configs/studies/{name}.py")
    cells = [c for c in grid.expand(study_config) if c.trains]
    assert cells and len({c.name for c in cells}) == len(cells)
    for cell in cells:
        experiment = grid.experiment_config(cell)
        assert (experiment.data.name, experiment.optim.lr) == (cell.data, float(cell.lr)), cell.name
        assert not set(experiment.data.eval_sources) & set(experiment.data.sources)
