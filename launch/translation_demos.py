"""xlit-demos: translation-following demonstrations from a parallel corpus, optionally mixed into
instruction data.

  xlit-demos --ntrex_dir=../shared/data/ntrex128 --output=data/demos.jsonl   # en <-> ar,de,es,it,zh
  xlit-demos --src_file=a.en.txt --tgt_file=a.de.txt --src_lang=en --tgt_lang=de --instruction_lang=source \\
      --mix_with=lima:../shared/data/lima/lima.en.jsonl --ratio=0.2 --output=data/lima_demos.jsonl

Writes chat records ({id, lang, source, messages}) in one JSONL, atomically; an existing, non-empty --output is
replaced only with --overwrite. See docs/data.md.
"""

from absl import app, flags

from launch import run_main
from xlit_jax.data.demos import BENCHMARK_LANGUAGES

FLAGS = flags.FLAGS
flags.DEFINE_string("ntrex_dir", None, "NTREX-128 directory: pairs English <-> each of --langs")
flags.DEFINE_list("langs", list(BENCHMARK_LANGUAGES), "with --ntrex_dir: the non-English languages "
                  "(default: CrossAlpaca's benchmark languages; the Chirkova study's are fr,pt,ru)")
flags.DEFINE_string("src_file", None, "a parallel corpus: source side, one sentence per line")
flags.DEFINE_string("tgt_file", None, "a parallel corpus: target side, line-aligned with --src_file")
flags.DEFINE_string("hf_dataset", None, "a parallel corpus on the HF hub (or a local dataset directory)")
flags.DEFINE_string("hf_split", "train", "with --hf_dataset: the split")
flags.DEFINE_string("src_field", None, "with --hf_dataset: source text field, dots for nesting (translation.en)")
flags.DEFINE_string("tgt_field", None, "with --hf_dataset: target text field")
flags.DEFINE_string("src_lang", None, "with --src_file/--hf_dataset: the source language code")
flags.DEFINE_string("tgt_lang", None, "with --src_file/--hf_dataset: the target language code")
flags.DEFINE_list("directions", ["forward", "backward"], "forward (source->target), backward, or both")
flags.DEFINE_string("instruction_lang", "target", "language of the instruction: source, target, or a code")
flags.DEFINE_integer("max_pairs", None, "use a random subset of this many sentence pairs per language pair",
                     lower_bound=1)
flags.DEFINE_multi_string("mix_with", [], "instruction data source(s) FORMAT:PATH[,...] to mix the demos into")
flags.DEFINE_float("ratio", 0.1, "with --mix_with: share of demonstrations in the output")
flags.DEFINE_integer("seed", 0, "phrasing choice and sampling")
flags.DEFINE_bool("skip_invalid", False, "skip (and count) invalid rows of --mix_with data")
flags.DEFINE_string("output", None, "output JSONL", required=True)
flags.DEFINE_bool("overwrite", False, "replace an existing, non-empty --output")


def corpora():
    """(pairs, src, tgt, corpus name) per language pair the flags ask for."""
    from xlit_jax.data import demos

    chosen = [bool(FLAGS.ntrex_dir), bool(FLAGS.src_file or FLAGS.tgt_file), bool(FLAGS.hf_dataset)]
    if sum(chosen) != 1:
        raise app.UsageError("give exactly one corpus: --ntrex_dir, --src_file/--tgt_file, or --hf_dataset")
    if FLAGS.ntrex_dir:
        return [(demos.load_ntrex(FLAGS.ntrex_dir, "en", lang), "en", lang, "ntrex") for lang in FLAGS.langs]
    if not (FLAGS.src_lang and FLAGS.tgt_lang):
        raise app.UsageError("--src_lang and --tgt_lang are required with --src_file or --hf_dataset")
    if FLAGS.hf_dataset:
        if not (FLAGS.src_field and FLAGS.tgt_field):
            raise app.UsageError("--src_field and --tgt_field are required with --hf_dataset")
        pairs = demos.load_parallel_hf(FLAGS.hf_dataset, FLAGS.src_field, FLAGS.tgt_field, FLAGS.hf_split)
        return [(pairs, FLAGS.src_lang, FLAGS.tgt_lang, FLAGS.hf_dataset.rstrip("/").split("/")[-1])]
    if not (FLAGS.src_file and FLAGS.tgt_file):
        raise app.UsageError("--src_file and --tgt_file go together")
    pairs = demos.load_parallel(FLAGS.src_file, FLAGS.tgt_file)
    return [(pairs, FLAGS.src_lang, FLAGS.tgt_lang, "parallel")]


def main(argv):
    del argv
    import json
    from pathlib import Path

    from xlit_jax.data import demos
    from xlit_jax.data.pipeline import load_mix
    from xlit_jax.io.files import atomic_write_text, check_writable

    output = Path(FLAGS.output)
    if output.is_file() and output.stat().st_size and not FLAGS.overwrite:  # before any work
        raise app.UsageError(f"--output={output}: exists and is not empty; pass --overwrite to replace it, or "
                             "choose another file")
    check_writable(output)
    records = []
    for pairs, src, tgt, name in corpora():
        records += demos.make_demos(pairs, src, tgt, name, FLAGS.directions, FLAGS.instruction_lang, FLAGS.seed,
                                    FLAGS.max_pairs)
    print(f"{len(records)} demonstrations")
    if FLAGS.mix_with:
        instructions, per_source = load_mix(FLAGS.mix_with, FLAGS.seed, FLAGS.skip_invalid)
        for path, counts in per_source.items():
            print(f"{path}: {counts['kept']} records, {counts['skipped']} invalid rows skipped")
        records = demos.mix(instructions, records, FLAGS.ratio, FLAGS.seed)
        print(f"mixed: {len(instructions)} instruction records + {len(records) - len(instructions)} demonstrations")
    atomic_write_text(FLAGS.output, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records))
    print(f"wrote {FLAGS.output}")


def run():
    run_main(main, "xlit-demos")


if __name__ == "__main__":
    run()
