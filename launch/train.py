"""xlit-train: full fine-tuning or LoRA from an experiment config; rerun with the same workdir to resume.

  xlit-train --config=configs/experiments/tiny_lora.py --workdir=runs/tiny_lora --config.train.max_steps=10
"""

from absl import app, flags, logging
from ml_collections import config_flags

from launch import run_main

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (configs/experiments/*.py[:arg])",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and exports go; reused to resume", required=True)
flags.mark_flags_as_required(["config"])


def check_config(cfg) -> None:
    if not cfg.model.source:
        hint = f" (a local copy of {cfg.model.hub_name})" if cfg.model.hub_name else ""
        raise app.UsageError(f"set --config.model.source to the weights{hint}: an HF directory, a .gguf file, "
                             "smollm2-135m or preset:NAME")
    if not cfg.data.sources:
        raise app.UsageError(f"set --config.data.sources for data set {cfg.data.name!r}: a tuple of FORMAT:PATH "
                             "specs (docs/data.md)")


def main(argv):
    del argv
    cfg = FLAGS.config
    check_config(cfg)
    if cfg.distributed.initialize:  # before anything touches the devices
        from xlit_jax.sharding import initialize_distributed

        d = cfg.distributed
        initialize_distributed(d.coordinator or None, d.num_processes or None,
                               d.process_id if d.process_id >= 0 else None)
    import jax

    from xlit_jax.io.files import atomic_write_text
    from xlit_jax.train.loop import train

    if jax.process_index() == 0:
        atomic_write_text(f"{FLAGS.workdir}/experiment.json", cfg.to_json_best_effort(indent=2))
    row = train(cfg, FLAGS.workdir)  # an InputError (e.g. model.attention=cudnn without a GPU) is one line
    logging.info("done: %s", row)


def run():
    run_main(main, "xlit-train")


if __name__ == "__main__":
    run()
