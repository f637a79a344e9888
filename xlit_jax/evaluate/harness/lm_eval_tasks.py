"""Any lm-evaluation-harness task, from the harness's own configs, scored in process through XlitLM and written
beside our native benchmarks: `xlit-eval --eval_set=lm_eval:TASK[,TASK...]` (needs `pip install -e '.[harness]'`).

Each task (a group expands to its tasks) is one `lm_eval.simple_evaluate` call on the docs it still lacks; its
logged samples become item_scores.jsonl rows keyed (model, task, "-", doc id, "lm_eval") with the per-doc value
of every metric the task averages (filters other than `none` named `metric,filter`), and lm-eval's own
aggregates of that call (perplexities, corpus BLEU, stderrs) go to lm_eval_results.jsonl. A rerun into the same
--out_dir resumes task by task.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import time
from pathlib import Path

import lm_eval
from lm_eval.api.metrics import mean
from lm_eval.tasks import TaskManager

from xlit_jax.errors import InputError
from xlit_jax.evaluate.harness.data import LM_EVAL_PREFIX
from xlit_jax.evaluate.harness.lm_eval_lm import XlitLM
from xlit_jax.evaluate.harness.run import TIMINGS_FILE, ScoredOutDir
from xlit_jax.evaluate.items import choose_ids
from xlit_jax.evaluate.report import LM_EVAL_SCORER, write_report
from xlit_jax.io.files import append_jsonl, output_lock

log = logging.getLogger(__name__)

RESULTS_FILE = "lm_eval_results.jsonl"
LANGUAGE = "-"  # a harness task names its language itself (xnli_fr, belebele_fra_Latn): no column of its own


@dataclasses.dataclass(frozen=True)
class LmEvalConfig:
    tasks: tuple[str, ...]
    include_path: str | None = None  # a folder of task YAMLs beside the harness's own
    limit: int | None = None  # docs per task: the first ones, or with seed a seeded sample
    seed: int | None = None
    num_fewshot: int | None = None  # None: each task's own
    chat_template: bool = False
    batch_size: int = 8  # sequences per scoring call; the engine's slots for generation

    def settings(self, task: str) -> dict:
        """What a stored row of `task` must have been produced with to be reused."""
        return {"num_fewshot": self.num_fewshot, "chat_template": self.chat_template}


def load_tasks(names, include: str | None, setting: str, prefix: str = "") -> tuple[TaskManager, dict]:
    """lm-eval's task manager and its TaskManager.load of `names` (the dict lm-eval's `evaluate` takes: "tasks" has
    {task name: Task}, a group's or tag's tasks in its place).
    With an include folder that names them all, only that folder is indexed (indexing lm-eval's own ~15k task
    configs takes some 20 s); otherwise, or when that fails (a local group of lm-eval's tasks), both are. An
    unknown name (the closest ones named, with `prefix`) or a task lm-eval cannot build is a one-line InputError
    starting with `setting`."""
    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            try:
                return local, local.load(list(names))
            except (OSError, ValueError, KeyError):
                pass
    manager = TaskManager(include_path=include or None)
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""
            where = f" or in {include}" if include else ""
            raise InputError(f"{setting}: no lm-eval task, group or tag {name!r}{hint}: not among lm-eval's own "
                             f"tasks{where}")
    try:
        return manager, manager.load(list(names))
    except Exception as e:  # noqa: BLE001  a task's data or config, in whatever way lm-eval fails on it
        raise InputError(f"{setting}: lm-eval cannot load {', '.join(names)}: {e}") from None


def _plain(value):
    """`value` as JSON has it (a doc's target may be any object)."""
    return json.loads(json.dumps(value, default=str))


class LmEvalEvaluation(ScoredOutDir):
    """One model's lm-eval task scores in `out_dir`. Construction indexes the harness's tasks (tens of seconds),
    checks the names and reads every task's docs; `run` scores."""
    scorer = LM_EVAL_SCORER

    def __init__(self, out_dir, config: LmEvalConfig):
        if not config.tasks or not all(config.tasks):
            raise InputError(f"--eval_set: name a task after {LM_EVAL_PREFIX} (e.g. "
                             f"{LM_EVAL_PREFIX}mmlu_abstract_algebra)")
        if config.batch_size < 1:
            raise InputError("batch_size must be positive")
        if config.num_fewshot is not None and config.num_fewshot < 0:
            raise InputError("--num_fewshot must be 0 or more")
        if config.include_path and not Path(config.include_path).is_dir():
            raise InputError(f"--include_path: {config.include_path} is not a folder")
        self.config, self.out_dir = config, Path(out_dir)
        self.manager, loaded = load_tasks(config.tasks, config.include_path, "--eval_set", LM_EVAL_PREFIX)
        self.tasks = loaded["tasks"]
        try:
            self.docs = {name: len(task.eval_docs) for name, task in self.tasks.items()}
        except Exception as error:  # noqa: BLE001  a task's data, in whatever way lm-eval fails on it
            raise InputError(f"--eval_set: lm-eval cannot read the documents of {', '.join(config.tasks)}: "
                             f"{error}") from error

    def _wanted(self, name: str, done: set[tuple], model_name: str) -> list[int]:
        ids = choose_ids([str(i) for i in range(self.docs[name])], self.config.limit, self.config.seed)
        return sorted(int(i) for i in ids if (model_name, name, LANGUAGE, i, LM_EVAL_SCORER) not in done)

    def _rows(self, model_name: str, name: str, samples: list[dict]) -> list[dict]:
        """One row per doc: its metric values over every filter, the responses and the target."""
        averaged = {m for m, how in self.tasks[name].aggregation().items() if how is mean}
        rows: dict[int, dict] = {}
        for sample in samples:
            row = rows.setdefault(sample["doc_id"], {
                "model": model_name, "set": name, "language": LANGUAGE, "id": str(sample["doc_id"]),
                "scorer": LM_EVAL_SCORER, "target": _plain(sample["target"]), "responses": {}, "scores": {}})
            suffix = "" if sample["filter"] == "none" else f",{sample['filter']}"
            row["responses"][sample["filter"]] = _plain(sample["filtered_resps"])
            row["scores"].update({metric + suffix: float(sample[metric]) for metric in sample["metrics"]
                                  if metric in averaged})
        return [{**row, "settings": self.config.settings(name)} for row in rows.values()]

    def run(self, model, model_name: str | None = None) -> dict[str, Path]:
        """Score what is not scored yet; a second run into the same out_dir is refused while this one writes."""
        with output_lock(self.out_dir, folder=True):
            return self._run(model, model_name or model.name)

    def _run(self, model, model_name: str) -> dict[str, Path]:
        done = self._done(model_name)
        lm = XlitLM(model, batch_size=self.config.batch_size, slots=self.config.batch_size)
        for name in self.tasks:
            wanted = self._wanted(name, done, model_name)
            if not wanted:
                continue
            # `samples` only where a subset is asked for: lm-eval tests each doc's index against the list
            subset = {name: wanted} if len(wanted) < self.docs[name] else None
            start = time.perf_counter()
            out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=self.manager, samples=subset,
                                          num_fewshot=self.config.num_fewshot,
                                          apply_chat_template=self.config.chat_template, log_samples=True)
            seconds = time.perf_counter() - start
            append_jsonl(self.scores_path, self._rows(model_name, name, out["samples"][name]))
            append_jsonl(self.out_dir / RESULTS_FILE, [{"model": model_name, "task": name, "docs": len(wanted),
                                                        "results": _plain(out["results"][name]),
                                                        "settings": self.config.settings(name)}])
            append_jsonl(self.out_dir / TIMINGS_FILE, [{"model": model_name, "benchmark": name, "language": LANGUAGE,
                                                        "items": len(wanted), "seconds": round(seconds, 2)}])
            log.info("%s: %d docs in %.1f s", name, len(wanted), seconds)
        written = write_report([self.out_dir], self.out_dir)
        written.update(item_scores=self.scores_path, lm_eval_results=self.out_dir / RESULTS_FILE)
        return written
