"""xlit-convert: any weights source xlit_jax.load understands -> an HF LLaMA directory (safetensors)."""

from absl import flags, logging

from launch import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "HF dir, .gguf file, checkpoint dir, smollm2-135m or preset:NAME", required=True)
flags.DEFINE_string("dst", None, "output directory (replaced atomically)", required=True)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the written weights")


def main(argv):
    del argv
    import xlit_jax
    from xlit_jax.io.hf import save_hf_dir

    model = xlit_jax.load(FLAGS.src, param_dtype=FLAGS.dtype)
    path = save_hf_dir(model.config, model.params, FLAGS.dst, tokenizer=model.tokenizer)
    logging.info("wrote %s", path)


def run():
    run_main(main, "xlit-convert")


if __name__ == "__main__":
    run()
