"""xlit-study: a study's grid of training runs and evaluations as one command (docs/study.md).

  xlit-study --config=configs/studies/smollm2_mini.py --workdir=runs/studies/smollm2_mini   # run, resume
  xlit-study ... --status            # a table of cells: done, partial, failed, not started
  xlit-study ... --print_commands    # data preparation, each cell's xlit-train and xlit-eval lines, for a scheduler
  xlit-study ... --report            # figures and tables in WORKDIR/report
  --only=GLOB[,GLOB] picks cells by name (MODEL.DATA.METHOD.lrLR, or MODEL.base for a baseline).
"""

import json
import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from launch import run_main
from xlit_jax.io.files import atomic_write_text
from xlit_jax.study import grid, report, runner

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "study config file (configs/studies/*.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "the study's folder: cells/NAME/{train,eval}, logs, report", required=True)
flags.DEFINE_list("only", None, "glob patterns on cell names; only matching cells are run, listed or reported")
flags.DEFINE_bool("status", False, "print the cells' states and exit")
flags.DEFINE_bool("print_commands", False, "print each cell's command lines and exit")
flags.DEFINE_enum("launcher", "xlit", list(grid.LAUNCHERS), "--print_commands: xlit-* programs, "
                  "python -m launch.* (this checkout), or sbatch launch/pods/slurm_gpu.sbatch for training")
flags.DEFINE_bool("report", False, "only write the report from the cells evaluated so far")
flags.mark_flags_as_required(["config"])


def _study():
    cfg = FLAGS.config
    cells = grid.select(grid.expand(cfg), FLAGS.only)
    workdir = Path(FLAGS.workdir)
    if FLAGS.status:
        print(runner.status_table(cells, workdir), end="")
    elif FLAGS.print_commands:
        print(grid.command_lines(cells, workdir, cfg.eval, FLAGS.launcher), end="")
    else:
        states = {}
        if not FLAGS.report:
            grid.check_training_settings(cells)  # e.g. eval_every > max_steps, before the baseline runs
            runner.check_recorded(cells, workdir, cfg.eval)  # done cells of other settings: one line, nothing written
            atomic_write_text(workdir / "study.json", cfg.to_json_best_effort(indent=2))
            states = runner.run(cells, workdir, cfg.eval)
            logging.info("cells: %s", json.dumps(states))
        shown = cfg.get("report") or {}
        for kind, path in report.write(cells, workdir, cfg.name, shown.get("fig3"), shown.get("reference")).items():
            logging.info("%s: %s", kind, path)
        if runner.FAILED in states.values():
            sys.exit(1)


def main(argv):
    del argv
    _study()


def run():
    run_main(main, "xlit-study")


if __name__ == "__main__":
    run()
