"""The same fine-tune in JAX and in PyTorch, side by side: an experiment config trained for --steps updates by
our train step and by the PyTorch reference (transformers + torch.optim.AdamW, peft for LoRA), from the same
initial weights on the same batches of our data pipeline (perf/twin.py, perf/torch_reference.py).

    python -m xlit_jax.perf.torch_twin --config=configs/experiments/smollm2_ft.py:1e-4 --steps=50 \\
        --config.data.grad_accum=2 --out=out/twin_ft

Writes to --out: updates.jsonl (loss, lr, gradient norm before clipping, trainable params' norm after the
update, per side and update), curves.png, diffs.md (relative differences per quantity at the first and last
update, max and mean; the final trainable tensors and the updates, final - initial), answers.jsonl (both
final models' greedy answers to --prompts of the paper's instructions, and whether they agree) and
summary.json. The precision is the config's model.dtype (auto: float32 on CPU); bfloat16 runs the reference
under torch.autocast. docs/parity.md has the measured numbers.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from xlit_jax.cli import run_main
from xlit_jax.perf import common, twin, workloads

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (configs/experiments/*.py[:arg])",
                                lock_config=True)
flags.DEFINE_integer("steps", 50, "updates on each side (train.max_steps: the schedule's length)", lower_bound=1)
flags.DEFINE_string("out", None, "output folder")
flags.DEFINE_integer("prompts", 4, "greedy answers to this many of the paper's instructions (languages in turn)",
                     lower_bound=0)
flags.DEFINE_list("languages", ["en", "fr", "pt", "ru"], "languages of those instructions")
flags.DEFINE_integer("new_tokens", 32, "new tokens per answer")
flags.DEFINE_float("repetition_penalty", 1.1, "of both sides' greedy decoding")
flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads; 0: torch's default")
common.define_data_flag()
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    del argv
    if FLAGS.torch_threads:
        import torch

        torch.set_num_threads(FLAGS.torch_threads)
    cfg = FLAGS.config
    prompts = workloads.paper_prompts(FLAGS.data, FLAGS.prompts, FLAGS.languages) if FLAGS.prompts else []
    result = twin.run(cfg, FLAGS.steps, twin.Generation(prompts, FLAGS.new_tokens, FLAGS.repetition_penalty))
    s = result["settings"]
    title = (f"{cfg.model.source} {s['method']} {s['dtype']}, lr {cfg.optim.lr:g}, {FLAGS.steps} updates of "
             f"{cfg.data.grad_accum} x {cfg.data.tokens_per_batch} tokens: JAX vs PyTorch")
    text = twin.write(result, Path(FLAGS.out), title)
    logging.info("seconds per update (median): %s", s["seconds_per_update"])
    print(f"{title}\n\n{text}")


if __name__ == "__main__":
    run_main(main, "torch_twin")
