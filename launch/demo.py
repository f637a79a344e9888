"""`make demo`: the study in miniature on SmolLM2-135M-Instruct, on 2 CPU cores.

1. LoRA-tune SmolLM2 briefly on English instruction data (LIMA from ../shared/data; Dolly from the hub
   with --data=dolly when online).
2. Evaluate the base and the tuned model on the paper's instructions in en/fr/pt/ru: language
   correctness (fastText), spelling (Hunspell) and relevance (SmolLM2 itself as the 0/1 judge).
3. Print the table side by side and write it with figures to --out_dir/compare.

Every stage resumes: rerunning skips finished training steps, generations and scores. The defaults take
about 18 minutes here; --full runs the whole set with the paper's decoding length (hours on CPU).
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import flags, logging

from launch import run_main
from xlit_jax.io.files import read_jsonl

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "out/demo", "where the run, generations, scores and figures go")
flags.DEFINE_enum("data", "lima", ["lima", "dolly"], "English instruction data: LIMA (local) or Dolly (hub)")
flags.DEFINE_integer("steps", 12, "LoRA training steps (each 4 micro-batches of 1024 tokens)", lower_bound=1)
flags.DEFINE_integer("limit", 12, "instructions per language (the paper's set has 113)", lower_bound=1)
flags.DEFINE_integer("max_new_tokens", 96, "response length at most (the paper: 512)", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "prompts decoded together", lower_bound=1)
flags.DEFINE_bool("relevance", True, "score relevance with SmolLM2 as the judge (slower)")
flags.DEFINE_bool("full", False, "all 113 instructions x 4 languages, 512 new tokens, 200 steps")

DOLLY = "dolly:databricks/databricks-dolly-15k"


def train_config(workdir: Path):
    from configs.experiments import smollm2_lora

    c = smollm2_lora.get_config()
    c.train.update(max_steps=FLAGS.steps, save_every=FLAGS.steps, log_every=4, export_peft=False,
                   export_hf=False, tensorboard=False)
    if FLAGS.data == "dolly":
        c.data.update(name="dolly-en", sources=(DOLLY,))
    return c


def main(argv):
    del argv
    import xlit_jax
    from xlit_jax.evaluate import EvalConfig, evaluate_model, write_report
    from xlit_jax.train.loop import train
    from xlit_jax.train.record import check_resume, save_experiment

    if FLAGS.full:
        FLAGS.limit, FLAGS.max_new_tokens, FLAGS.steps = None, 512, 200
    out = Path(FLAGS.out_dir)
    started = time.perf_counter()

    logging.info("1/3 LoRA-tuning SmolLM2-135M on %s for %d steps", FLAGS.data, FLAGS.steps)
    workdir = out / "lora_run"
    cfg = train_config(workdir)
    check_resume(cfg, workdir)  # e.g. --full or --data=dolly into a default run's --out_dir: one line, as xlit-train
    save_experiment(cfg, workdir)
    train(cfg, str(workdir))

    base = xlit_jax.load("smollm2-135m")
    tuned = xlit_jax.load(out / "lora_run")
    tuned.name = f"smollm2-135m+lora-{FLAGS.data}"
    metrics = ("language", "spelling") + (("relevance",) if FLAGS.relevance else ())
    config = EvalConfig(eval_sets=("chirkova",), languages=("en", "fr", "pt", "ru"), limit=FLAGS.limit,
                        metrics=metrics, max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size)
    for step, model in ((2, base), (3, tuned)):
        logging.info("%d/3 evaluating %s", step, model.name)
        evaluate_model(model, out / model.name, config, relevance_model=base)

    written = write_report([out / base.name, out / tuned.name], out / "compare")
    print_samples([out / m.name / "generations.jsonl" for m in (base, tuned)])
    print(written["markdown"].read_text())
    print(f"Wrote {', '.join(str(p) for p in written.values())}")
    print(f"Demo took {(time.perf_counter() - started) / 60:.1f} minutes")


def print_samples(generation_files, per_language: int = 1) -> None:
    """The first responses per language of each model, shortened, so a person sees what was scored."""
    for path in generation_files:
        shown: dict[str, int] = {}
        for _, row in read_jsonl(path):
            if shown.setdefault(row["language"], 0) < per_language:
                shown[row["language"]] += 1
                prompt = row["messages"][-1]["content"].replace("\n", " ")[:100]
                response = row["response"].replace("\n", " ")[:240]
                print(f"[{row['model']} | {row['language']}] {prompt}\n  -> {response}\n")


if __name__ == "__main__":
    run_main(main, "xlit-demo")
