"""xlit-human-eval: blinded human evaluation sheets, and the filled sheets compared with the GPT judge.

  xlit-human-eval export --eval_dirs='runs/studies/NAME/cells/*/eval' --out_dir=out/human
      [--ids=my30.txt | --limit=30 --seed=0] [--all_items_model=CELL]
      -> sheet.LANG.csv and sheet.LANG.html (send these to annotators), key.jsonl (keep it)
  xlit-human-eval import --sheets=ratings.fr.anna.csv,ratings.fr.ben.csv --key=out/human/key.jsonl \\
      --out_dir=out/human/results
      -> human_scores.jsonl, agreement.md, agreement.csv
"""

import glob
from pathlib import Path

from absl import app, flags, logging

from launch import run_main
from xlit_jax.errors import InputError
from xlit_jax.resources import shared_data_dir
from xlit_jax.study import human_eval

FLAGS = flags.FLAGS
flags.DEFINE_list("eval_dirs", None, "export: evaluated out_dirs (globs allowed), one model each")
flags.DEFINE_list("languages", None, "export: languages (default: every language of the generations)")
flags.DEFINE_string("ids", None, "export: a file of the instruction ids to rate, one a line (the paper rated 30 "
                    "balanced over tasks; the released data has no task labels, so you choose them)")
flags.DEFINE_integer("limit", None, "export: without --ids, a seeded sample of this many instructions", lower_bound=1)
flags.DEFINE_string("all_items_model", None, "export: this model's responses to every other instruction are rated "
                    "too (the paper's default model; it rated it on \"the remaining 85\")")
flags.DEFINE_integer("seed", 0, "export: seed of the sample and of the shuffling")
flags.DEFINE_string("eval_set", "chirkova", "export: the evaluation set whose responses are rated")
flags.DEFINE_string("data_dir", None, "the shared data folder, for the guidelines (default: ../shared/data)")
flags.DEFINE_list("sheets", None, "import: filled CSV sheets (one annotator each, or an annotator column)")
flags.DEFINE_string("key", None, "import: the key.jsonl written by export")
flags.DEFINE_string("out_dir", None, "where the sheets (export) or the results (import) go", required=True)
COMMANDS = ("export", "import")


def _expand(patterns: list[str]) -> list[Path]:
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise InputError(f"--eval_dirs: {pattern!r} matches nothing")
        paths += [Path(m) for m in matches]
    return paths


def _human_eval(command: str):
    if command == "export":
        if not FLAGS.eval_dirs:
            raise InputError("export needs --eval_dirs (evaluated out_dirs, e.g. runs/studies/NAME/cells/*/eval)")
        data_dir = Path(FLAGS.data_dir) if FLAGS.data_dir else shared_data_dir()
        written = human_eval.export(_expand(FLAGS.eval_dirs), Path(FLAGS.out_dir), FLAGS.languages, FLAGS.limit,
                                    FLAGS.seed, FLAGS.eval_set, data_dir,
                                    Path(FLAGS.ids) if FLAGS.ids else None, FLAGS.all_items_model)
    else:
        if not (FLAGS.sheets and FLAGS.key):
            raise InputError("import needs --sheets (filled CSVs) and --key (the key.jsonl written by export)")
        written = human_eval.import_sheets([Path(s) for s in FLAGS.sheets], Path(FLAGS.key), Path(FLAGS.out_dir))
    for kind, path in written.items():
        logging.info("%s: %s", kind, path)


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"give one command: {' or '.join(COMMANDS)}")
    _human_eval(argv[1])


def run():
    run_main(main, "xlit-human-eval")


if __name__ == "__main__":
    run()
