"""Data pipeline throughput: tokens per second tokenized and packed on one CPU core, and packing efficiency.

    python -m xlit_jax.perf.pipeline --data=lima:../shared/data/lima/lima.en.jsonl --seq_len=2048

The process pins itself to one core and the Rust tokenizer to one thread before anything runs. Timed per
template, each the median of --repeats calls after a warm-up (perf.common.time_calls): chat template +
tokenization + truncation (`tokenize`), then one epoch packed into [B, L] micro-batches (`PackedBatches`);
loading the file is not timed. Tokens/s counts every token of every
example; efficiency is the share of batch positions holding a token.
"""

from __future__ import annotations

import os

from absl import app, flags

from xlit_jax.data.pipeline import PackedBatches, batch_size_for, tokenize
from xlit_jax.data.records import load_source
from xlit_jax.data.templates import get_template
from xlit_jax.io.files import markdown_row, markdown_table
from xlit_jax.io.tokenizer import load_tokenizer
from xlit_jax.perf import common
from xlit_jax.resources import shared_data

FLAGS = flags.FLAGS
flags.DEFINE_string("data", f"lima:{shared_data('lima/lima.en.jsonl')}", "data source FORMAT:PATH[,...]")
flags.DEFINE_string("tokenizer", "smollm2-135m", "smollm2-135m, a .gguf file, or an HF directory")
flags.DEFINE_list("templates", ["llama2", "chat", "alpaca"], "templates to measure")
flags.DEFINE_integer("seq_len", 2048, "packed row length L")
flags.DEFINE_integer("tokens_per_batch", 4096, "token budget of a micro-batch")
flags.DEFINE_integer("repeats", 3, "timed runs per template after a warm-up; the median is reported")
common.define_rows_flag("pipeline")


def measure(records, tokenizer, template_name: str) -> dict:
    template = get_template(template_name, tokenizer)
    batch_size = batch_size_for(FLAGS.tokens_per_batch, FLAGS.seq_len)
    tokenized = common.time_calls(lambda: tokenize(records, template, tokenizer, FLAGS.seq_len), FLAGS.repeats)
    examples, counts = tokenized.result
    packed = common.time_calls(lambda: list(PackedBatches(examples, FLAGS.seq_len, batch_size, epochs=1)),
                               FLAGS.repeats)
    batches, seconds = packed.result, tokenized.seconds + packed.seconds
    tokens = sum(len(ex.ids) for ex in examples)
    filled = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    return {"seconds": seconds, "tokenize_s": tokenized.seconds, "pack_s": packed.seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "micro_batches": len(batches),
            "efficiency": filled / (len(batches) * batch_size * FLAGS.seq_len), **counts}


def main(argv):
    del argv
    records = load_source(FLAGS.data).records
    tokenizer = load_tokenizer(FLAGS.tokenizer)
    print(f"{FLAGS.data}: {len(records)} records; L={FLAGS.seq_len}, {FLAGS.tokens_per_batch} tokens per "
          f"micro-batch; 1 core ({os.sched_getaffinity(0)}), median of {FLAGS.repeats}\n")
    print(markdown_table(["template", "tokens", "tokenize s", "pack s", "tokens/s", "micro-batches",
                                 "packing efficiency", "truncated"], []))
    rows = []
    for name in FLAGS.templates:
        r = measure(records, tokenizer, name)
        rows.append({"template": name} | r)
        print(markdown_row([name, r["tokens"], f"{r['tokenize_s']:.2f}", f"{r['pack_s']:.2f}",
                                   f"{r['tokens_per_s']:,.0f}", r["micro_batches"], f"{r['efficiency']:.1%}",
                                   r["truncated"]]), flush=True)
    common.save_rows(rows)


def run():
    # One core, and one tokenizer thread, before the tokenizers library starts its thread pool.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    app.run(main)


if __name__ == "__main__":
    run()
