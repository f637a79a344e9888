"""MMLU scoring: our log-likelihoods vs lm-evaluation-harness with HF transformers, same questions, same run.

    python -m xlit_jax.perf.mmlu_scoring --languages=en,de --per_subject=10   # needs pip install '.[harness]'

The first --per_subject rows of every MMLU subject in each language (CrossAlpaca's files, zero-shot, no chat
template), as xlit-eval --eval_set=mmlu scores them: four requests (context, " A") ... (context, " D") per
question. `jax` is `Model.loglikelihood` (decode/loglik.py), `harness` lm-eval's `HFLM.loglikelihood` on the
same requests, the model loaded from the same GGUF. Each engine runs once in its own process (so its peak RSS
is its own), model load included in its wall time, as a user would see it; tokens/s counts each question's
prompt tokens once. The table also gives how far our per-request log-likelihoods are from the harness's and
how often the two pick a different answer.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

import xlit_jax
from xlit_jax.decode import loglik
from xlit_jax.evaluate.harness.data import LETTERS
from xlit_jax.io.files import markdown_table
from xlit_jax.io.gguf import smollm2_gguf_path
from xlit_jax.perf import common, workloads

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "model for both engines (the harness loads the same GGUF)")
flags.DEFINE_list("languages", ["en", "de"], "MMLU languages of CrossAlpaca's data")
flags.DEFINE_integer("per_subject", 10, "questions per subject (0: all)")
flags.DEFINE_list("engines", ["jax", "harness"], "of jax, harness")
flags.DEFINE_integer("batch_size", 8, "batch size of both engines")
flags.DEFINE_integer("torch_threads", 2, "torch intra-op threads")
common.define_data_flag()
common.define_rows_flag("mmlu_scoring")
flags.DEFINE_string("worker", None, "internal: score the requests of this JSON file with --engines' engine")


def requests(data_dir: str) -> list[list[str]]:
    """[context, continuation] of every answer letter of the chosen questions, in order."""
    return [[item.prompt, f" {letter}"] for item in workloads.mmlu_questions(data_dir, FLAGS.languages,
                                                                              FLAGS.per_subject)
            for letter in LETTERS]


def score_jax(pairs: list[list[str]]) -> dict:
    start = time.perf_counter()
    model = xlit_jax.load(FLAGS.model)
    compiled = loglik._score._cache_size()
    results = model.loglikelihood([tuple(p) for p in pairs], FLAGS.batch_size)
    return {"seconds": time.perf_counter() - start, "logliks": [r[0] for r in results],
            "compilations": loglik._score._cache_size() - compiled}


def score_harness(pairs: list[list[str]]) -> dict:
    import torch  # optional (the `torch` and `harness` extras): only the reference's worker imports them
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(FLAGS.torch_threads)
    start = time.perf_counter()
    path = smollm2_gguf_path() if FLAGS.model == "smollm2-135m" else None
    source = {"pretrained": str(path.parent), "gguf_file": path.name} if path else {"pretrained": FLAGS.model}
    lm = HFLM(**source, device="cpu", dtype="float32", batch_size=FLAGS.batch_size)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=tuple(p), idx=i)
                 for i, p in enumerate(pairs)]
    results = lm.loglikelihood(instances, disable_tqdm=True)
    return {"seconds": time.perf_counter() - start, "logliks": [r[0] for r in results], "compilations": None}


def worker(path: str) -> None:
    pairs = json.loads(Path(path).read_text())
    result = {"jax": score_jax, "harness": score_harness}[FLAGS.engines[0]](pairs)
    result.update(engine=FLAGS.engines[0], peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    common.print_result(result)


def prompt_tokens(pairs: list[list[str]]) -> int:
    tokenizer = xlit_jax.load(FLAGS.model).tokenizer
    return sum(len(tokenizer(context, add_special_tokens=False).input_ids) for context, _ in pairs[::len(LETTERS)])


def main(argv):
    del argv
    if FLAGS.worker:
        return worker(FLAGS.worker)
    pairs = requests(FLAGS.data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.json"
        path.write_text(json.dumps(pairs))
        rows = [common.read_result(subprocess.run(
            [sys.executable, "-m", "xlit_jax.perf.mmlu_scoring", f"--worker={path}", f"--engines={engine}",
             f"--model={FLAGS.model}", f"--batch_size={FLAGS.batch_size}", f"--torch_threads={FLAGS.torch_threads}"],
            capture_output=True, text=True, check=True).stdout) for engine in FLAGS.engines]
    print(format_table(rows, len(pairs) // len(LETTERS), prompt_tokens(pairs)))
    common.save_rows(rows)


def format_table(rows: list[dict], questions: int, tokens: int) -> str:
    reference = next((r["logliks"] for r in rows if r["engine"] == "harness"), None)

    def versus(logliks):
        if reference is None or logliks is reference:
            return "-", "-"
        gap = max(abs(a - b) for a, b in zip(logliks, reference))
        choices = len(LETTERS)
        pick = lambda values, q: max(range(choices), key=lambda k: values[choices * q + k])  # noqa: E731
        differ = sum(pick(logliks, q) != pick(reference, q) for q in range(questions))
        return f"{gap:.1e}", str(differ)

    header = ["engine", "questions", "prompt tokens", "wall s (load included)", "tokens/s", "compilations",
              "peak RSS GiB", "max |loglik - harness|", "answers that differ"]
    return markdown_table(header, [
        [r["engine"], questions, tokens, f"{r['seconds']:.1f}", f"{tokens / r['seconds']:.0f}",
         "-" if r["compilations"] is None else r["compilations"], f"{r['peak_rss_gib']:.2f}",
         *versus(r["logliks"])] for r in rows])


if __name__ == "__main__":
    app.run(main)
