"""lm-evaluation-harness tasks while training (train.eval_harness, xlit_jax/evaluate/harness/training.py) on the
tiny preset with LoRA: a round's scores are XlitLM's on the checkpoint of the same step, scored separately; two
processes (jax.distributed on localhost) evaluate like one; bad settings and unknown task names are one line
before anything is compiled."""

import json
from pathlib import Path

import pytest

import xlit_jax
from xlit_jax.errors import InputError
from xlit_jax.evaluate.harness import training
from xlit_jax.train import probes
from xlit_jax.train.loop import train

from support import OVERRIDES, launch, tiny_config, train_in_two_processes, write_chats

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[harness]')")

TASKS = "xlit_tiny_mc,xlit_tiny_ll"
DOCS = [("the cat sat on the", ["mat", "tree", "dog", "blue"], 0),
        ("the dog ran under the", ["red", "tree", "quickly", "and"], 1),
        ("a red cat and a blue", ["then", "sat", "dog", "slowly"], 2),
        ("then the cat ran", ["the", "a", "on", "quickly"], 3)]
# a multiple-choice task (acc, acc_norm) and a log-likelihood one on the same documents (perplexity: a
# continuous score, so agreement is more than a tie of accuracies)
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{{{{question}}}}"
{target}
metric_list:
{metrics}
"""
MC = dict(output_type="multiple_choice", target='doc_to_choice: "{{choices}}"\ndoc_to_target: answer',
          metrics="  - metric: acc\n  - metric: acc_norm")
LL = dict(output_type="loglikelihood", target="doc_to_target: \"{{' ' + choices[answer]}}\"",
          metrics="  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
                  "  - metric: acc\n    aggregation: mean\n    higher_is_better: true")
# a round: held-out loss, 2 probe prompts per language answered in 8 tokens, both tasks
EVAL = {"train.eval_every": 4, "train.eval_batches": 1, "train.probe_limit": 2, "train.probe_max_new_tokens": 8,
        "train.eval_harness": TASKS}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(training data, held-out data, the task folder)."""
    folder = tmp_path_factory.mktemp("data")
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in DOCS))
    tasks = folder / "tasks"
    tasks.mkdir()
    for name, kind in (("xlit_tiny_mc", MC), ("xlit_tiny_ll", LL)):
        (tasks / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, **kind))
    return write_chats(folder / "chats.en.jsonl"), write_chats(folder / "held.en.jsonl", 12), tasks


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "datasets_cache"))


def lora_config(setup, **changes):
    from configs.experiments import tiny_lora

    cfg = tiny_config(setup[0], **{**EVAL, "train.harness_include_path": str(setup[2]), **changes})
    cfg.lora = tiny_lora.get_config().lora
    cfg.data.eval_sources = (f"chat:{setup[1]}",)
    return cfg


def eval_rows(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "eval"]


@pytest.fixture(scope="module")
def run(setup, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cfg = lora_config(setup)
    train(cfg, str(workdir), training.harness_round(cfg))
    return workdir


@pytest.mark.slow  # ~110 s on 2 busy cores: a LoRA run with three rounds, then lm-eval on two checkpoints
def test_round_scores_are_xlit_lms_on_the_checkpoint_of_that_step(run, setup):
    """The row of each round holds every task's metrics, equal to lm-eval's simple_evaluate with XlitLM on the
    checkpoint of that step (LoRA merged there, unmerged in training: perplexity to 1e-5, accuracies equal)."""
    from lm_eval.tasks import TaskManager

    from xlit_jax.evaluate.harness.lm_eval_lm import XlitLM

    rows = {r["step"]: r for r in eval_rows(run)}
    assert sorted(rows) == [0, 4, 8]
    assert all("eval/loss" in r and "probe/fr/language_correct" in r for r in rows.values())
    manager = TaskManager(include_path=str(setup[2]), include_defaults=False)
    for step in (4, 8):
        model = xlit_jax.load(run / "checkpoints" / str(step))
        results = lm_eval.simple_evaluate(model=XlitLM(model), tasks=TASKS.split(","), task_manager=manager,
                                          limit=16, bootstrap_iters=0)["results"]
        row = rows[step]
        assert row["harness/xlit_tiny_mc/acc"] == results["xlit_tiny_mc"]["acc,none"]
        assert row["harness/xlit_tiny_mc/acc_norm"] == results["xlit_tiny_mc"]["acc_norm,none"]
        assert row["harness/xlit_tiny_ll/acc"] == results["xlit_tiny_ll"]["acc,none"]
        assert row["harness/xlit_tiny_ll/perplexity"] == pytest.approx(results["xlit_tiny_ll"]["perplexity,none"],
                                                                       rel=1e-5)
    # the adapters moved the scores: an evaluation that ignored them would give step 0's at every round
    assert abs(rows[8]["harness/xlit_tiny_ll/perplexity"] / rows[0]["harness/xlit_tiny_ll/perplexity"] - 1) > 1e-3


@pytest.mark.slow  # ~4 min on 2 busy cores: two xlit-train processes, each compiling its rounds
def test_two_processes_evaluate_like_one(run, setup, tmp_path):
    """xlit-train in two processes with one CPU device each (fsdp over both): every round's held-out loss,
    probe scores and harness scores are the single-process run's (1e-5), and so are the probe answers; process
    0 wrote them."""
    workdir = tmp_path / "run"
    changes = {**OVERRIDES, **EVAL, "train.harness_include_path": setup[2],
               "data.eval_sources": f"('chat:{setup[1]}',)"}
    flags = ["--config=configs/experiments/tiny_lora.py", f"--workdir={workdir}",
             f"--config.data.sources=('chat:{setup[0]}',)", *(f"--config.{k}={v}" for k, v in changes.items())]
    train_in_two_processes(flags, tmp_path / "cache")
    ours, single = eval_rows(workdir), eval_rows(run)
    assert [sorted(r) for r in ours] == [sorted(r) for r in single]
    for mine, theirs in zip(ours, single):
        scores = [{k: v for k, v in row.items() if k != "kind" and not k.endswith("seconds")} for row in (mine, theirs)]
        assert scores[0] == pytest.approx(scores[1], rel=1e-5)
    answers = [(r["step"], r["id"], r["response"]) for r in map(json.loads, open(workdir / probes.PROBES_FILE))]
    assert answers == [(r["step"], r["id"], r["response"]) for r in map(json.loads, open(run / probes.PROBES_FILE))]


def test_bad_harness_settings_are_one_line(setup, monkeypatch):
    cases = [({"train.eval_every": 0}, "train.eval_harness=xlit_tiny_mc,xlit_tiny_ll runs at the rounds of "
                                       "train.eval_every: set it (0 turns evaluation off)"),
             ({"train.harness_limit": 0}, "train.harness_limit=0 must be at least 1 (documents per task)"),
             ({"train.harness_include_path": "/nonexistent/tasks"},
              "train.harness_include_path: /nonexistent/tasks is not a folder")]
    for changes, message in cases:
        with pytest.raises(InputError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
            training.harness_round(lora_config(setup, **changes))
    assert training.harness_round(lora_config(setup, **{"train.eval_harness": " , "})) is None
    # train() from Python without the tasks it names: refused before any weights are read
    with pytest.raises(InputError, match=r"^train.eval_harness: pass train\(\) its tasks"):
        train(lora_config(setup), "/nonexistent/workdir")
    real = training.importlib.util.find_spec
    monkeypatch.setattr(training.importlib.util, "find_spec", lambda name: None if name == "lm_eval" else real(name))
    with pytest.raises(InputError, match=r"needs lm-evaluation-harness, not installed here: pip install"):
        training.harness_round(lora_config(setup))


@pytest.mark.slow  # ~80 s on 2 busy cores: lm-eval indexes its own ~15k task configs to look the name up
def test_an_unknown_task_is_one_line_before_anything_is_compiled(setup, tmp_path):
    """A misspelt task: exit status 2, one line naming it and the close matches, no checkpoint or metrics."""
    workdir = tmp_path / "run"
    flags = ["--config=configs/experiments/tiny_lora.py", f"--workdir={workdir}",
             f"--config.data.sources=('chat:{setup[0]}',)", "--config.train.eval_every=4",
             "--config.train.eval_harness=xlit_tiny_mcq", f"--config.train.harness_include_path={setup[2]}"]
    process = launch(flags, tmp_path / "cache")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "xlit-train: train.eval_harness: no lm-eval task, group or tag 'xlit_tiny_mcq' (did you mean xlit_tiny_mc, "
        "xlit_tiny_ll?): "
        f"not among lm-eval's own tasks or in {setup[2]}")
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
