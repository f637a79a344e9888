"""lm-evaluation-harness's wall time through xlit-serve, through XlitLM in process and on its own HF backend,
on the same MMLU questions and a small generation task, in one run.

    python -m xlit_jax.perf.harness_speed --languages=en,de --per_subject=10 --generations=20   # needs '.[harness]'

The MMLU questions are docs/performance.md's (workloads.mmlu_questions: the first --per_subject rows of each
subject per language, zero-shot, 200 by default) as a local lm-eval task (`multiple_choice`, choices A-D after
the prompt: the requests (prompt, " A") ... of `xlit-eval --eval_set=mmlu`); the generation task is the first
--generations English XQuAD rows (`generate_until`, stop "\\n", --gen_tokens new tokens at most). Engines, each
in its own process, one after another: `serve` (lm-eval's `local-completions` against our server in a thread of
that process: token-id prompts, echo + logprobs, tokenized through its /tokenize), `xlit` (XlitLM) and `hf`
(lm-eval's HFLM from the same GGUF, fp32, --torch_threads). All take --batch_size requests at a time. Each
task's time is one `simple_evaluate` call as a user runs it (our compilations included); the model's load is
timed apart. The table also says how far each engine's log-likelihoods are from the HF backend's, and how many
answers and generated texts differ from its.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lm_eval
import numpy as np
from absl import app, flags
from lm_eval.models.openai_completions import LocalCompletionsAPI
from lm_eval.tasks import TaskManager

import xlit_jax
from xlit_jax.evaluate.harness.data import load_benchmarks
from xlit_jax.evaluate.harness.lm_eval_lm import XlitLM
from xlit_jax.io.files import markdown_table
from xlit_jax.io.gguf import smollm2_gguf_path
from xlit_jax.perf import common, workloads
from xlit_jax.serve.app import ServeConfig, create_app
from xlit_jax.serve.server import serve_in_thread

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "model for every engine (HF loads its GGUF: smollm2-135m only)")
flags.DEFINE_list("languages", ["en", "de"], "MMLU languages of CrossAlpaca's data")
flags.DEFINE_integer("per_subject", 10, "MMLU questions per subject and language (0: all)")
flags.DEFINE_integer("generations", 20, "XQuAD (English) prompts of the generation task")
flags.DEFINE_integer("gen_tokens", 32, "new tokens per generation at most")
flags.DEFINE_list("engines", ["serve", "xlit", "hf"], "of serve, xlit, hf")
flags.DEFINE_integer("batch_size", 8, "requests at a time (every engine), our server's slots")
flags.DEFINE_integer("torch_threads", 2, "torch intra-op threads (hf)")
common.define_data_flag()
common.define_rows_flag("harness_speed")
flags.DEFINE_string("worker", None, "internal: run the tasks in this folder with this --engines engine")

MMLU, GENERATION = "speed_mmlu", "speed_generation"
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: "{{{{prompt}}}}"
"""
KINDS = {MMLU: """output_type: multiple_choice
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
""", GENERATION: """output_type: generate_until
doc_to_target: "{{{{gold}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {gen_tokens}
metric_list:
  - metric: exact_match
"""}


def write_tasks(folder: Path) -> dict[str, int]:
    """The two tasks' data and YAMLs in `folder`; their sizes."""
    docs = {MMLU: [{"prompt": q.prompt, "answer": "ABCD".index(q.gold[0])}
                   for q in workloads.mmlu_questions(FLAGS.data, FLAGS.languages, FLAGS.per_subject)],
            GENERATION: [{"prompt": q.prompt, "gold": q.gold[0]}
                         for q in load_benchmarks(("xquad",), ("en",), FLAGS.data, FLAGS.generations).items]}
    for name, rows in docs.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(TASK.format(name=name, data=data)
                                             + KINDS[name].format(gen_tokens=FLAGS.gen_tokens))
    return {name: len(rows) for name, rows in docs.items()}


@contextlib.contextmanager
def engine_lm(engine: str):
    """The engine's lm-eval LM (for `serve`, while our server answers in a thread of this process)."""
    if engine == "hf":
        import torch  # the reference's extra: only its worker imports it
        from lm_eval.models.huggingface import HFLM

        torch.set_num_threads(FLAGS.torch_threads)
        path = smollm2_gguf_path()
        yield HFLM(pretrained=str(path.parent), gguf_file=path.name, device="cpu", dtype="float32",
                   batch_size=FLAGS.batch_size)
        return
    model = xlit_jax.load(FLAGS.model)
    if engine == "xlit":
        yield XlitLM(model, batch_size=FLAGS.batch_size, slots=FLAGS.batch_size)
        return
    config = ServeConfig(slots=FLAGS.batch_size, max_tokens=FLAGS.gen_tokens)
    with serve_in_thread(create_app(model, "bench", config)) as url:
        yield LocalCompletionsAPI(base_url=f"{url}/completions", model="bench", batch_size=FLAGS.batch_size)


def worker(folder: str) -> None:
    engine = FLAGS.engines[0]
    start = time.perf_counter()
    manager = TaskManager(include_path=folder, include_defaults=False)  # our two tasks, not the harness's 15k
    with engine_lm(engine) as lm:
        row = {"engine": engine, "load_s": time.perf_counter() - start}
        for name in (MMLU, GENERATION):
            start = time.perf_counter()
            out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, log_samples=True)
            row[f"{name}_s"] = time.perf_counter() - start
            row[name] = [s["resps"] for s in sorted(out["samples"][name], key=lambda s: s["doc_id"])]
            row[f"{name}_score"] = next(v for k, v in out["results"][name].items()
                                        if k.endswith(",none") and "stderr" not in k)
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    common.print_result(row)


def compared(row: dict, reference: dict | None) -> list[str]:
    """max |loglik - hf|, MMLU answers and generated texts that differ from the HF backend's."""
    if reference is None or row is reference:
        return ["-", "-", "-"]
    mine, theirs = ([[r[0][0] for r in doc] for doc in run[MMLU]] for run in (row, reference))
    gap = np.abs(np.array(mine) - np.array(theirs)).max()
    answers = sum(np.argmax(a) != np.argmax(b) for a, b in zip(mine, theirs))
    texts = sum(a != b for a, b in zip(row[GENERATION], reference[GENERATION]))
    return [f"{gap:.1e}", f"{answers} of {len(mine)}", f"{texts} of {len(row[GENERATION])}"]


def main(argv):
    del argv
    if FLAGS.worker:
        return worker(FLAGS.worker)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = write_tasks(Path(tmp))
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": f"{tmp}/cache"}
        rows = []
        for engine in FLAGS.engines:
            done = subprocess.run(
                [sys.executable, "-m", "xlit_jax.perf.harness_speed", f"--worker={tmp}", f"--engines={engine}",
                 f"--model={FLAGS.model}", f"--batch_size={FLAGS.batch_size}", f"--gen_tokens={FLAGS.gen_tokens}",
                 f"--torch_threads={FLAGS.torch_threads}", "--rows_out="], capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(f"harness_speed: the {engine} worker failed:\n{done.stderr[-3000:]}")
            rows.append(common.read_result(done.stdout))
    reference = next((r for r in rows if r["engine"] == "hf"), None)
    header = ["engine", "load s", f"MMLU {sizes[MMLU]} q: s", "questions/s", "acc",
              f"generation {sizes[GENERATION]}: s", "exact match", "peak RSS GiB", "max |loglik - hf|",
              "answers differ from hf", "texts differ from hf"]
    print(markdown_table(header, [
        [r["engine"], f"{r['load_s']:.1f}", f"{r[f'{MMLU}_s']:.1f}", f"{sizes[MMLU] / r[f'{MMLU}_s']:.2f}",
         f"{r[f'{MMLU}_score']:.3f}", f"{r[f'{GENERATION}_s']:.1f}", f"{r[f'{GENERATION}_score']:.3f}",
         f"{r['peak_rss_gib']:.2f}", *compared(r, reference)] for r in rows]))
    common.save_rows([{k: v for k, v in r.items() if k not in (MMLU, GENERATION)} | {"sizes": sizes} for r in rows])


if __name__ == "__main__":
    app.run(main)
