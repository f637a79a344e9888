"""lm-evaluation-harness's own tasks through our engine: `xlit-eval --eval_set=lm_eval:TASK` (item scores and
report beside the native benchmarks), lm-eval's own CLI with `--model xlit` (xlit-lm-eval), and agreement with
lm-eval's HF backend on the same model. The tasks are local YAMLs over ../shared/data (support.harness_tasks):
lm-eval's hub datasets are not reachable here. Indexing lm-eval's ~15k task configs takes 10-30 s, so every
test that names a task is slow."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from xlit_jax.errors import InputError

from support import REPO, harness_tasks

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[harness]')")

from xlit_jax.evaluate.harness.lm_eval_lm import XlitLM  # noqa: E402
from xlit_jax.evaluate.harness.lm_eval_tasks import LmEvalConfig, LmEvalEvaluation  # noqa: E402

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture
def tasks(tmp_path, shared_data, monkeypatch):
    for var, value in OFFLINE.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    return harness_tasks(tmp_path / "tasks", shared_data, items=6)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mixed_kinds_are_refused_before_lm_eval_loads(tmp_path):
    done = subprocess.run([sys.executable, "-m", "launch.evaluate", "--model=smollm2-135m", "--eval_set=mmlu,lm_eval:x",
                           f"--out_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert done.stderr.strip().splitlines() == [
        "xlit-eval: --eval_set: benchmarks (xquad, mlqa, mmlu, bbh), lm_eval:TASK and eval sets go to different "
        "--out_dir runs; name only one kind"]


@pytest.mark.slow  # ~2 min on 2 cores: indexing lm-eval's tasks, SmolLM2 on 4 + 3 docs, then 1 doc again
def test_smollm2_lm_eval_tasks_score_per_doc_and_resume(tmp_path, tasks, smollm2):
    """Each doc's row holds lm-eval's per-doc metric, which is its own verdict on Model.loglikelihood (to 1e-4:
    the same fp32 math in another pack; MMLU-style) and on the engine's greedy text (XQuAD-style); the report's
    means are lm-eval's aggregates; a rerun after a lost row scores that doc alone; other settings are refused."""
    out = tmp_path / "out"
    evaluation = LmEvalEvaluation(out, LmEvalConfig(tasks=("xlit_mmlu_tiny", "xlit_xquad_tiny"),
                                                    include_path=str(tasks), limit=4, batch_size=4))
    written = evaluation.run(smollm2)
    first = rows(written["item_scores"])
    mmlu = sorted((r for r in first if r["set"] == "xlit_mmlu_tiny"), key=lambda r: int(r["id"]))
    xquad = [r for r in first if r["set"] == "xlit_xquad_tiny"]
    assert [r["id"] for r in mmlu] == ["0", "1", "2", "3"] and len(xquad) == 3  # the task has 3 docs
    assert all(r["language"] == "-" and r["scorer"] == "lm_eval" for r in first)
    docs = [json.loads(line) for line in (tasks / "mmlu.jsonl").read_text().splitlines()]
    for row, doc in zip(mmlu, docs):
        prompt = (f"{doc['question'].strip()}\nA. {doc['choices'][0]}\nB. {doc['choices'][1]}\nC. "
                  f"{doc['choices'][2]}\nD. {doc['choices'][3]}\nAnswer:")
        logliks = [v for v, _ in smollm2.loglikelihood([(prompt, f" {c}") for c in "ABCD"])]
        np.testing.assert_allclose([v for v, _ in row["responses"]["none"]], logliks, atol=1e-4)
        assert row["scores"] == {"acc": float(np.argmax(logliks) == doc["answer"])} and row["target"] == doc["answer"]
    for row in xquad:
        text = row["responses"]["none"][0]
        assert "\n" not in text and row["scores"] == {"exact_match": float(text.strip() == row["target"])}
    results = {r["task"]: r["results"] for r in rows(out / "lm_eval_results.jsonl")}
    table = written["markdown"].read_text()
    for task, metric, mine in (("xlit_mmlu_tiny", "acc", mmlu), ("xlit_xquad_tiny", "exact_match", xquad)):
        assert results[task][f"{metric},none"] == pytest.approx(np.mean([r["scores"][metric] for r in mine]))
        assert f"| {smollm2.name} | {task} |" in table
    # interrupted after all but the last row: a rerun does that doc again, through lm-eval's `samples`
    written["item_scores"].write_text("".join(json.dumps(r) + "\n" for r in first[:-1]))
    evaluation.run(smollm2)
    again = rows(written["item_scores"])
    assert again[:-1] == first[:-1] and len(again) == len(first)
    redone, lost = again[-1], first[-1]  # scored again in another pack: the same verdict, the same values to 1e-4
    assert {k: v for k, v in redone.items() if k != "responses"} == {k: v for k, v in lost.items() if k != "responses"}
    if xquad[-1] is lost:  # (lm-eval's task order) a greedy text is the same text
        assert redone["responses"] == lost["responses"]
    else:
        np.testing.assert_allclose(np.array(redone["responses"]["none"], float),
                                   np.array(lost["responses"]["none"], float), atol=1e-4)
    assert sorted(r["docs"] for r in rows(out / "lm_eval_results.jsonl")) == [1, 3, 4]
    evaluation.config = dataclasses.replace(evaluation.config, num_fewshot=1)
    with pytest.raises(InputError, match="scored with"):
        evaluation.run(smollm2)


@pytest.mark.slow  # ~2 min on 2 cores: two binaries, each indexing lm-eval's tasks, one loading SmolLM2
def test_binaries_name_a_typo_and_run_lm_evals_cli_with_model_xlit(tmp_path, tasks):
    env = {**subprocess.os.environ, **OFFLINE}
    typo = subprocess.run([sys.executable, "-m", "launch.evaluate", "--model=smollm2-135m",
                           "--eval_set=lm_eval:xlit_mmlu_tiny,xlit_xquad_tny", f"--include_path={tasks}",
                           f"--out_dir={tmp_path / 'out'}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert typo.returncode == 2 and not (tmp_path / "out").exists()
    [line] = [line for line in typo.stderr.splitlines() if line.startswith("xlit-eval: ")]  # lm-eval logs too
    assert "Traceback" not in typo.stderr
    assert line.startswith("xlit-eval: --eval_set: no lm-eval task, group or tag 'xlit_xquad_tny' (did you mean "
                           "lm_eval:xlit_xquad_tiny")
    done = subprocess.run([sys.executable, "-m", "launch.lm_eval_cli", "--model", "xlit", "--model_args",
                           "pretrained=smollm2-135m", "--tasks", "xlit_mmlu_tiny", "--include_path", str(tasks),
                           "--limit", "2", "--batch_size", "4", "--output_path", str(tmp_path / "cli")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    [found] = (tmp_path / "cli").rglob("results_*.json")
    report = json.loads(found.read_text())
    assert report["config"]["model"] == "xlit" and report["n-samples"]["xlit_mmlu_tiny"]["effective"] == 2
    assert report["results"]["xlit_mmlu_tiny"]["acc,none"] in (0.0, 0.5, 1.0)
    assert "|xlit_mmlu_tiny|" in done.stdout.replace(" ", "")


@pytest.mark.slow  # ~2-3 min on 2 cores: transformers loads the GGUF; both backends score 6 + 3 docs
def test_xlit_lm_agrees_with_lm_evals_hf_backend(tasks, smollm2):
    """The same model (SmolLM2's GGUF, fp32 both sides) through XlitLM and lm-eval's `hf` backend, on an
    MMLU-style log-likelihood task and an XQuAD-style generate_until task: every log-likelihood within 1e-4
    (the same fp32 math in other orders; docs/performance.md's MMLU run measured 6.6e-5 at most over 800),
    the same is-greedy flags and choices, and the same greedy texts."""
    from xlit_jax.io.gguf import smollm2_gguf_path

    manager = lm_eval.tasks.TaskManager(include_path=str(tasks))
    names = ["xlit_mmlu_tiny", "xlit_xquad_tiny"]
    path = smollm2_gguf_path()
    hf = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(path.parent), "gguf_file": path.name,
                                                         "dtype": "float32", "device": "cpu"},
                                 tasks=names, task_manager=manager, batch_size=4, log_samples=True)
    ours = lm_eval.simple_evaluate(model=XlitLM(smollm2, batch_size=4), tasks=names, task_manager=manager,
                                   log_samples=True)
    for name in names:
        assert ([s["doc_id"] for s in ours["samples"][name]] == [s["doc_id"] for s in hf["samples"][name]])
    pick = lambda samples: [s["resps"] for s in samples]  # noqa: E731
    mine, theirs = pick(ours["samples"]["xlit_mmlu_tiny"]), pick(hf["samples"]["xlit_mmlu_tiny"])
    assert len(mine) == 6
    np.testing.assert_allclose([r[0][0] for doc in mine for r in doc], [r[0][0] for doc in theirs for r in doc],
                               atol=1e-4)
    assert [r[0][1] for doc in mine for r in doc] == [r[0][1] for doc in theirs for r in doc]
    assert [np.argmax([r[0][0] for r in doc]) for doc in mine] == [np.argmax([r[0][0] for r in doc]) for doc in theirs]
    texts = [r[0][0] for doc in pick(ours["samples"]["xlit_xquad_tiny"]) for r in doc]
    assert len(texts) == 3 and texts == [r[0][0] for doc in pick(hf["samples"]["xlit_xquad_tiny"]) for r in doc]
    for name, metric in zip(names, ("acc,none", "exact_match,none")):
        assert ours["results"][name][metric] == hf["results"][name][metric]
