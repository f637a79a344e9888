"""lm-evaluation-harness tasks while training: train.eval_harness's tasks scored at every round of
train.eval_every, beside the held-out loss and the probes (docs/training.md).

`harness_round(cfg)` checks the settings and loads the tasks (their documents included) before any weights are
read; lm-eval, the optional harness extra, is imported only when train.eval_harness is set. The HarnessRound it
returns scores the loop's view of its state (a Model over the params as they lie on the mesh, LoRA adapters
unmerged) through XlitLM, the first train.harness_limit documents of each task, and gives the row's
`harness/{task}/{metric}` values. In a multi-process run every process scores every document, the same requests
in the same order, so every host takes part in each sharded call; process 0 writes the row.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from xlit_jax.errors import InputError

HARNESS_EXTRA = "pip install -e '.[harness]'"


def task_names(cfg) -> list[str]:
    return [name.strip() for name in cfg.train.eval_harness.split(",") if name.strip()]


def harness_round(cfg) -> HarnessRound | None:
    """The harness part of a round, its settings checked and its tasks loaded; None when train.eval_harness is
    empty. A bad setting, an unknown task name or a task lm-eval cannot load is a one-line InputError."""
    t, names = cfg.train, task_names(cfg)
    if not names:
        return None
    if not t.eval_every:
        raise InputError(f"train.eval_harness={t.eval_harness} runs at the rounds of train.eval_every: set it "
                         "(0 turns evaluation off)")
    if t.harness_limit < 1:
        raise InputError(f"train.harness_limit={t.harness_limit} must be at least 1 (documents per task)")
    if t.harness_include_path and not Path(t.harness_include_path).is_dir():
        raise InputError(f"train.harness_include_path: {t.harness_include_path} is not a folder")
    if importlib.util.find_spec("lm_eval") is None:
        raise InputError(f"train.eval_harness needs lm-evaluation-harness, not installed here: {HARNESS_EXTRA}")
    from xlit_jax.evaluate.harness.lm_eval_tasks import load_tasks  # needs lm-eval: imported only when it is set

    _, tasks = load_tasks(names, t.harness_include_path, "train.eval_harness")
    return HarnessRound(tasks, t.harness_limit)


def scores(results: dict) -> dict[str, float]:
    """lm-eval's results ({task: {"acc,none": 0.5, "acc_stderr,none": ..., "alias": ...}}) as row keys
    harness/{task}/{metric}, the filter appended when it is not "none" (harness/gsm8k/exact_match/strict-match);
    stderr left out."""
    row = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, kept = key.partition(",")
            if kept and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                row[f"harness/{task}/{metric}" + ("" if kept == "none" else f"/{kept}")] = float(value)
    return row


class HarnessRound:
    """Scores a Model on the loaded tasks: the first `limit` documents of each, every round the same."""

    def __init__(self, tasks: dict, limit: int):
        self.tasks, self.limit = tasks, limit

    def __call__(self, model) -> dict[str, float]:
        from lm_eval.evaluator import evaluate

        from xlit_jax.evaluate.harness.lm_eval_lm import XlitLM

        # no stderr (bootstrap_iters=0) and no per-document samples kept: the row holds the scores only
        results = evaluate(XlitLM(model), self.tasks, limit=self.limit, bootstrap_iters=0, log_samples=False)
        return scores(results["results"])
