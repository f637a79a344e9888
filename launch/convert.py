"""xlit-convert: any weights source xlit_jax.load understands -> an HF LLaMA directory (safetensors).

  xlit-convert --src=smollm2-135m --dst=out/smollm2_hf
  xlit-convert --src=runs/tiny_lora --dst=out/tiny_lora_hf --dtype=bfloat16   # a training run, adapters merged

An existing, non-empty --dst is replaced only with --overwrite, and never when it holds a training run, an
evaluation or a study, or the source itself.
"""

from pathlib import Path

from absl import flags, logging

from launch import run_main
from xlit_jax.errors import UserError
from xlit_jax.io.files import check_replaceable

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "HF dir, .gguf file, checkpoint dir, smollm2-135m or preset:NAME", required=True)
flags.DEFINE_string("dst", None, "output directory, written atomically", required=True)
flags.DEFINE_bool("overwrite", False, "replace an existing, non-empty --dst (never a run, evaluation or study)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the written weights")


def check_destination(src: str, dst: str, overwrite: bool) -> None:
    """Refuse, before any weights load, a --dst that holds the source or may not be replaced."""
    source, target = Path(src).resolve(), Path(dst).resolve()
    if Path(src).exists() and (source == target or target in source.parents):
        raise UserError(f"--dst={dst}: holds the source --src={src}; choose another output folder")
    check_replaceable(target, overwrite)


def main(argv):
    del argv
    import xlit_jax
    from xlit_jax.io.hf import save_hf_dir

    check_destination(FLAGS.src, FLAGS.dst, FLAGS.overwrite)
    model = xlit_jax.load(FLAGS.src, param_dtype=FLAGS.dtype)
    path = save_hf_dir(model.config, model.params, FLAGS.dst, tokenizer=model.tokenizer, overwrite=FLAGS.overwrite)
    logging.info("wrote %s", path)


def run():
    run_main(main, "xlit-convert")


if __name__ == "__main__":
    run()
