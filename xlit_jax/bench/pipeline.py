"""Data pipeline throughput: tokens per second tokenized and packed on one CPU core, and packing efficiency.

    python -m xlit_jax.bench.pipeline --data=lima:../shared/data/lima/lima.en.jsonl --seq_len=2048

The process pins itself to one core and the Rust tokenizer to one thread before anything runs. Timed per
template: chat template + tokenization + truncation (`tokenize`), then one epoch packed into [B, L]
micro-batches (`PackedBatches`); loading the file is not timed. Tokens/s counts every token of every
example; efficiency is the share of batch positions holding a token.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "lima:../shared/data/lima/lima.en.jsonl", "data source FORMAT:PATH[,...]")
flags.DEFINE_string("tokenizer", "smollm2-135m", "smollm2-135m, a .gguf file, or an HF directory")
flags.DEFINE_list("templates", ["llama2", "chat", "alpaca"], "templates to measure")
flags.DEFINE_integer("seq_len", 2048, "packed row length L")
flags.DEFINE_integer("tokens_per_batch", 4096, "token budget of a micro-batch")
flags.DEFINE_integer("repeats", 3, "timed runs per template; the best is reported")


def measure(records, tokenizer, template_name: str) -> dict:
    from xlit_jax.data.pipeline import PackedBatches, batch_size_for, tokenize
    from xlit_jax.data.templates import get_template

    template = get_template(template_name, tokenizer)
    batch_size = batch_size_for(FLAGS.tokens_per_batch, FLAGS.seq_len)
    best = None
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        examples, counts = tokenize(records, template, tokenizer, FLAGS.seq_len)
        tokenized = time.perf_counter()
        batches = list(PackedBatches(examples, FLAGS.seq_len, batch_size, epochs=1))
        end = time.perf_counter()
        if best is None or end - start < best["seconds"]:
            best = {"seconds": end - start, "tokenize_s": tokenized - start, "pack_s": end - tokenized}
    tokens = sum(len(ex.ids) for ex in examples)
    filled = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    return {**best, "tokens": tokens, "tokens_per_s": tokens / best["seconds"], "micro_batches": len(batches),
            "efficiency": filled / (len(batches) * batch_size * FLAGS.seq_len), **counts}


def main(argv):
    del argv
    from xlit_jax.data.records import load_source
    from xlit_jax.io.tokenizer import load_tokenizer

    records = load_source(FLAGS.data).records
    tokenizer = load_tokenizer(FLAGS.tokenizer)
    print(f"{FLAGS.data}: {len(records)} records; L={FLAGS.seq_len}, {FLAGS.tokens_per_batch} tokens per "
          f"micro-batch; 1 core ({os.sched_getaffinity(0)}), best of {FLAGS.repeats}\n")
    print("| template | tokens | tokenize s | pack s | tokens/s | micro-batches | packing efficiency | truncated |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in FLAGS.templates:
        r = measure(records, tokenizer, name)
        print(f"| {name} | {r['tokens']} | {r['tokenize_s']:.2f} | {r['pack_s']:.2f} | {r['tokens_per_s']:,.0f} | "
              f"{r['micro_batches']} | {r['efficiency']:.1%} | {r['truncated']} |")


def run():
    # One core, and one tokenizer thread, before the tokenizers library starts its thread pool.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    app.run(main)


if __name__ == "__main__":
    run()
