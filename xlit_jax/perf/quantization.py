"""What quantizing the projections costs in error and saves in bytes, each format against float32, same run.

    python -m xlit_jax.perf.quantization --formats=int8,nf4,int4 --prompts=8 --new_tokens=32 --mmlu=200 --lima=4

Per format: the largest and mean logit difference from the float32 model on the parity prompts
(tests/test_model_parity.py's four, every token), how often the argmax at those positions agrees, how many of
--prompts greedy answers of the paper's instructions are the same text (and the mean length of their common
prefix in tokens), how often the MMLU choice (--mmlu English questions spread over the subjects, xlit-eval's
scoring) is the same, the mean response-token loss on --lima batches of LIMA (the train step's loss), the
params' bytes in memory and the bytes of a LoRA base saved as xlit-train saves it (frozen/).

--speed: greedy decoding tokens/s of each format and float32 at each --batch_sizes, one process, the formats
taken in turn in each of --repeats rounds (the median counts), so that a machine shared with other jobs slows
them alike; `python -m xlit_jax.perf.decode_throughput --quantize=none,int8,nf4` measures each in its own
process (peak RSS), beside transformers.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

import xlit_jax
from xlit_jax.data import pipeline
from xlit_jax.evaluate.harness.data import LETTERS, load_benchmarks
from xlit_jax.io.checkpoints import save_frozen
from xlit_jax.io.files import markdown_table
from xlit_jax.models.quantize import nbytes
from xlit_jax.perf import common, workloads
from xlit_jax.train.step import token_losses

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "model to quantize")
flags.DEFINE_list("formats", ["int8", "nf4", "int4"], "quantization formats (models/quantize.py)")
flags.DEFINE_integer("prompts", 8, "greedy answers compared (the paper's English instructions)")
flags.DEFINE_integer("new_tokens", 32, "new tokens per answer")
flags.DEFINE_integer("mmlu", 200, "MMLU questions compared (0: none)")
flags.DEFINE_integer("lima", 4, "batches of 4 x 512 tokens of LIMA (the chat template) for the loss (0: none)")
flags.DEFINE_bool("speed", False, "measure decoding speed instead of the error")
flags.DEFINE_list("batch_sizes", ["1", "16"], "--speed: prompts decoded together")
flags.DEFINE_integer("repeats", 3, "--speed: rounds")
common.define_data_flag()

PARITY_PROMPTS = ["The capital of France is", "Bonjour, je m'appelle", "Привет! Как дела?", "O Brasil é um país"]


def mmlu_pairs(n: int) -> list[tuple[str, str]]:
    """(context, " LETTER") of n English MMLU questions spread over the subjects, four a question."""
    items = load_benchmarks(("mmlu",), ("en",), FLAGS.data).items
    step = max(1, len(items) // n)  # spread over the subjects
    return [(item.prompt, f" {letter}") for item in items[::step][:n] for letter in LETTERS]


def lima_batches(tokenizer) -> list[dict]:
    """The first --lima [4, 512] batches of LIMA in the tokenizer's chat template."""
    mix = pipeline.load_mix([f"lima:{FLAGS.data}/lima/lima.en.jsonl"])
    batches, _ = pipeline.build(mix, tokenizer, "chat", 512, 2048, epochs=1)
    return [{k: v for k, v in next(batches).items() if k in pipeline.BATCH_KEYS} for _ in range(FLAGS.lima)]


def loss(model, batches) -> float:
    """The mean NLL of the response tokens of `batches`, as the train step computes its loss."""
    losses = jax.jit(functools.partial(token_losses, model.config))
    total, tokens = zip(*(losses(model.params, b) for b in batches))
    return float(sum(total) / sum(tokens))


def measure(model, ids, mask, answers_ids, pairs, batches) -> dict:
    logits = model.logits(ids, mask)
    answers = model.generate_ids(answers_ids, FLAGS.new_tokens, 1.1, slots=len(answers_ids))
    choices = []
    if pairs:
        scores = np.array([s for s, _ in model.loglikelihood(pairs)]).reshape(-1, 4)
        choices = scores.argmax(-1).tolist()
    return {"logits": logits, "answers": answers, "choices": choices, "loss": loss(model, batches) if batches else 0}


def saved_bytes(model) -> int:
    """Bytes on disk of the model's params saved as a LoRA run saves its base (io/checkpoints/frozen.py)."""
    with tempfile.TemporaryDirectory() as workdir:
        save_frozen(workdir, model.params)
        return sum(p.stat().st_size for p in (Path(workdir) / "frozen").rglob("*") if p.is_file())


def prefix(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def speed() -> None:
    """Tokens/s per (batch, format): the paper's English instructions, --new_tokens each."""
    models = {fmt: xlit_jax.load(FLAGS.model, quantize=fmt) for fmt in ["none", *FLAGS.formats]}
    rows = []
    for batch in map(int, FLAGS.batch_sizes):
        ids = [models["none"].encode(p) for p in workloads.paper_prompts(FLAGS.data, batch)]
        rates = {fmt: [] for fmt in models}
        for round_ in range(FLAGS.repeats + 1):  # round 0 compiles
            for fmt, model in models.items():
                start = time.perf_counter()
                tokens = sum(map(len, model.generate_ids(ids, FLAGS.new_tokens, 1.1, slots=batch)))
                if round_:
                    rates[fmt].append(tokens / (time.perf_counter() - start))
        base = statistics.median(rates["none"])
        rows += [[batch, "float32" if fmt == "none" else fmt, f"{statistics.median(r):.1f}",
                  f"{statistics.median(r) / base:.2f}x"] for fmt, r in rates.items()]
    print(markdown_table(["batch", "weights", "tokens/s", "vs float32"], rows))


def main(argv):
    del argv
    if FLAGS.speed:
        return speed()

    reference = xlit_jax.load(FLAGS.model)
    rows_ids = [reference.encode(p) for p in PARITY_PROMPTS]
    width = max(map(len, rows_ids))
    ids = np.zeros((len(rows_ids), width), np.int32)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows_ids):  # left padded
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    answers_ids = [reference.encode(p) for p in workloads.paper_prompts(FLAGS.data, FLAGS.prompts)]
    pairs = mmlu_pairs(FLAGS.mmlu) if FLAGS.mmlu else []
    batches = lima_batches(reference.tokenizer) if FLAGS.lima else []
    base = measure(reference, ids, mask, answers_ids, pairs, batches)
    on = mask == 1
    rows = [["float32", "-", "-", "-", "-", "-", "-", f"{base['loss']:.4f}", f"{nbytes(reference.params) / 2**20:.0f}",
             f"{saved_bytes(reference) / 2**20:.0f}"]]
    for fmt in FLAGS.formats:
        model = xlit_jax.load(FLAGS.model, quantize=fmt)
        got = measure(model, ids, mask, answers_ids, pairs, batches)
        diff = np.abs(got["logits"] - base["logits"])[on]
        argmax = (got["logits"].argmax(-1) == base["logits"].argmax(-1))[on].mean()
        same = sum(a == b for a, b in zip(got["answers"], base["answers"]))
        common_prefix = np.mean([prefix(a, b) for a, b in zip(got["answers"], base["answers"])])
        mmlu = (f"{np.mean(np.array(got['choices']) == np.array(base['choices'])):.1%}" if pairs else "-")
        held_out = f"{got['loss']:.4f} ({got['loss'] / base['loss'] - 1:+.2%})"
        rows.append([fmt, f"{diff.max():.3f}", f"{diff.mean():.4f}", f"{argmax:.1%}", f"{same}/{len(answers_ids)}",
                     f"{common_prefix:.1f}", mmlu, held_out, f"{nbytes(model.params) / 2**20:.0f}",
                     f"{saved_bytes(model) / 2**20:.0f}"])
    print(markdown_table(
        ["weights", "max logit diff", "mean logit diff", "argmax agrees", "same answers",
         f"common prefix (of {FLAGS.new_tokens})", f"MMLU same choice ({FLAGS.mmlu})", "LIMA loss", "params MiB",
         "saved MiB"],
        rows))


if __name__ == "__main__":
    app.run(main)
