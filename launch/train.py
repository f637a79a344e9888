"""xlit-train: full fine-tuning or LoRA from an experiment config; rerun with the same workdir to resume.

  xlit-train --config=configs/experiments/tiny_lora.py --workdir=runs/tiny_lora --config.train.max_steps=10

--dry_run compiles the train step for the attached devices, or for a compile-only target named by
--config.mesh.target (v5p-8, 8xh100, ...: xlit_jax/plan/targets.py; run with JAX_PLATFORMS=cpu), prints the plan and
exits without loading weights or writing anything: status 0, or 1 when the config does not fit.

  JAX_PLATFORMS=cpu xlit-train --config=configs/experiments/paper.py:llama2-13b,dolly-en,ft,1e-5 --dry_run \\
      --config.model.source=preset:llama2-13b --config.mesh.target=v5p-8 \\
      --config.data.tokens_per_batch=8192 --config.data.grad_accum=2
"""

import contextlib
import math
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch import run_main

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (configs/experiments/*.py[:arg])",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and exports go; reused to resume")
flags.DEFINE_bool("dry_run", False, "print the compiled plan (memory per device, FLOPs, predicted time) and exit")
flags.DEFINE_float("mfu", 0.4, "--dry_run: the MFU assumed for the predicted step time")
flags.mark_flags_as_required(["config"])


def check_config(cfg) -> None:
    if cfg.mesh.target:
        raise app.UsageError(f"--config.mesh.target={cfg.mesh.target} names a compile-only target: use it with "
                             "--dry_run; training runs on the attached devices")
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
    if cfg.distributed.initialize:  # before anything touches the devices
        from xlit_jax.sharding import initialize_distributed

        d = cfg.distributed
        initialize_distributed(d.coordinator or None, d.num_processes or None,
                               d.process_id if d.process_id >= 0 else None)
    if FLAGS.dry_run:
        sys.exit(dry_run(cfg))
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (or --dry_run)")
    check_config(cfg)
    import jax

    from xlit_jax.evaluate.harness.training import harness_round
    from xlit_jax.io.files import output_lock
    from xlit_jax.train.loop import train
    from xlit_jax.train.record import check_resume, save_experiment

    # A second xlit-train on the workdir is refused (process 0 holds it for the run; the others write only
    # their checkpoint shards there).
    with output_lock(FLAGS.workdir, folder=True) if jax.process_index() == 0 else contextlib.nullcontext():
        check_resume(cfg, FLAGS.workdir)  # a workdir made with other settings: one line, nothing read or rewritten
        harness = harness_round(cfg)  # lm-eval's tasks loaded (unknown names refused) before anything is compiled
        if jax.process_index() == 0:
            save_experiment(cfg, FLAGS.workdir)
        row = train(cfg, FLAGS.workdir, harness)  # an InputError (e.g. model.attention=cudnn without a GPU) is one line
    logging.info("done: %s", row)


def dry_run(cfg) -> int:
    """Print the plan (and, when it does not fit, the smallest change that would); 0 if it fits, else 1."""
    import jax

    from xlit_jax import plan
    from xlit_jax.errors import InputError

    try:
        devices = plan.topology_devices(cfg.mesh.target) if cfg.mesh.target else jax.devices()
        target = cfg.mesh.target or f"{len(devices)} attached {devices[0].platform} devices"
        result = plan.plan_training(cfg, devices, target)
    except ValueError as e:  # PlanError, a mesh that does not divide the batch, an unknown source
        raise InputError(str(e)) from None
    print(result.describe(FLAGS.mfu, cfg.train.max_steps))
    if result.fits is not False:
        return 0
    found = plan.smallest_fitting_change(cfg, devices, target)
    if found:
        print(f"  smallest change that fits: {found[0]} ({plan.size(found[1].compiled.peak_bytes)} per device)")
    else:
        arguments = result.compiled.argument_bytes * result.devices
        print(f"  no remat or micro-batch change fits: shard over more devices; the arguments alone "
              f"({plan.size(arguments)}) need at least {math.ceil(arguments / (plan.HEADROOM * result.memory_bytes))}")
    return 1


def run():
    run_main(main, "xlit-train")


if __name__ == "__main__":
    run()
