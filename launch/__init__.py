"""The command-line binaries (xlit-*). Each one's `run()` is `run_main(main, "xlit-NAME")`."""

from absl import flags

from xlit_jax.cli import run_main
from xlit_jax.models.attention import ATTENTIONS
from xlit_jax.models.quantize import FORMATS

__all__ = ["define_inference_flags", "inference_options", "run_main"]


def define_inference_flags() -> None:
    """--dtype, --attention and --quantize, for the binaries that load a model to decode with."""
    flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                      "weights and compute dtype; auto: bfloat16 on accelerators, float32 on CPU")
    flags.DEFINE_enum("attention", "auto", list(ATTENTIONS), "attention implementation (docs/attention.md)")
    flags.DEFINE_enum("quantize", "none", ["none", *FORMATS],
                      "store the projections' weights quantized: int8 per channel, or 4-bit (nf4, int4) per group "
                      "of 64 (docs/quantization.md)")


def inference_options() -> dict:
    """What `xlit_jax.load` takes for the flags of `define_inference_flags`: the dtypes (config overrides), the
    attention kernel and the quantization (this machine's choices, not the model's)."""
    from xlit_jax.models.config import inference_dtypes

    return {**inference_dtypes(flags.FLAGS.dtype), "attention": flags.FLAGS.attention,
            "quantize": flags.FLAGS.quantize}
