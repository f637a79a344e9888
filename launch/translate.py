"""xlit-translate: machine-translate an instruction dataset into other languages, resumably.

  xlit-translate --input=dolly:databricks/databricks-dolly-15k --target_langs=fr,pt,ru --output_dir=data/dolly
  xlit-translate --input=lima:../shared/data/lima/lima.en.jsonl --engine=llm --model=smollm2-135m \\
      --target_langs=fr --output_dir=out/lima

Writes OUTPUT_DIR/NAME.LANG.jsonl per target language ({id, lang, source, messages, translated_by}); a rerun
skips the ids already there, and is refused with another engine, model or settings. See docs/data.md.
"""

from absl import app, flags

from launch import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "data source FORMAT:PATH[,key=value...] (see docs/data.md)", required=True)
flags.DEFINE_list("target_langs", ["fr", "pt", "ru"], "languages to translate into")
flags.DEFINE_string("output_dir", None, "where NAME.LANG.jsonl files go", required=True)
flags.DEFINE_enum("engine", "seq2seq", ["seq2seq", "llm"], "seq2seq: an NLLB model via transformers; llm: "
                  "one of our models prompted to translate")
flags.DEFINE_string("model", None, "seq2seq: hub name or directory (default facebook/nllb-200-3.3B); llm: "
                    "anything xlit_jax.load takes (default smollm2-135m)")
flags.DEFINE_integer("batch_size", 16, "seq2seq: sentences per generate call; llm: the decoding engine's slots",
                     lower_bound=1)
flags.DEFINE_integer("num_beams", 4, "seq2seq beam size", lower_bound=1)
flags.DEFINE_integer("max_new_tokens", 256, "new tokens per sentence at most", lower_bound=1)
flags.DEFINE_float("repetition_penalty", 1.0, "llm engine: HF-style repetition penalty")
flags.DEFINE_string("device", None, "seq2seq: torch device (default cuda if available, else cpu)")
flags.DEFINE_integer("limit", None, "translate only the first N records", lower_bound=1)
flags.DEFINE_integer("chunk_size", 64, "records translated and appended together", lower_bound=1)
flags.DEFINE_bool("skip_invalid", False, "skip (and count) invalid input rows instead of stopping")


def made_by() -> dict:
    """The engine and the settings that change a translation, as each output row records them."""
    from xlit_jax.data import translate

    if FLAGS.engine == "seq2seq":
        return {"engine": "seq2seq", "model": FLAGS.model or translate.DEFAULT_MT_MODEL, "num_beams": FLAGS.num_beams,
                "max_new_tokens": FLAGS.max_new_tokens}
    return {"engine": "llm", "model": FLAGS.model or "smollm2-135m", "max_new_tokens": FLAGS.max_new_tokens,
            "repetition_penalty": FLAGS.repetition_penalty}


def make_translator(settings: dict):
    from xlit_jax.data import translate

    if FLAGS.engine == "seq2seq":
        return translate.Seq2SeqTranslator(settings["model"], FLAGS.device, FLAGS.batch_size, FLAGS.num_beams,
                                           FLAGS.max_new_tokens)
    import xlit_jax

    return translate.LLMTranslator(xlit_jax.load(settings["model"]), FLAGS.batch_size, FLAGS.max_new_tokens,
                                   FLAGS.repetition_penalty)


def main(argv):
    del argv
    from pathlib import Path

    from xlit_jax.data.languages import english_name, nllb_code
    from xlit_jax.data.records import dataset_name, load_source, parse_source
    from xlit_jax.data.translate import translate_file, translated_ids

    source = parse_source(FLAGS.input)
    loaded = load_source(source, skip_invalid=FLAGS.skip_invalid)
    records = loaded.records[:FLAGS.limit]
    languages = {r.lang for r in records}
    if len(languages) != 1:
        raise app.UsageError(f"the input mixes languages {sorted(languages)}; translate one language at a time")
    src = languages.pop()
    if not FLAGS.target_langs:
        raise app.UsageError("--target_langs is empty: name the languages to translate into, e.g. fr,pt,ru")
    for lang in [src, *FLAGS.target_langs]:  # an unknown language is refused before the model loads
        (nllb_code if FLAGS.engine == "seq2seq" else english_name)(lang)
    print(f"{len(records)} records in {src}; {len(loaded.skipped)} invalid rows skipped")
    settings = made_by()
    outputs = {tgt: Path(FLAGS.output_dir) / f"{dataset_name(source.path)}.{tgt}.jsonl" for tgt in FLAGS.target_langs}
    for output in outputs.values():  # another translator's file is refused before the model loads
        translated_ids(output, settings)
    translator = make_translator(settings)
    for tgt, output in outputs.items():
        counts = translate_file(records, translator, src, tgt, output, FLAGS.chunk_size, made_by=settings)
        print(f"{output}: {counts['translated']} records translated now, {counts['done_before']} before; "
              f"{counts['failed']} left out for an empty translation (a rerun retries them)")


def run():
    run_main(main, "xlit-translate")


if __name__ == "__main__":
    run()
