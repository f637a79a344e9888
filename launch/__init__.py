"""The command-line binaries (xlit-*). Each one's `run()` is `run_main(main, "xlit-NAME")`."""

import sys

from absl import app, flags

from xlit_jax.io.files import UserError
from xlit_jax.models.config import ATTENTIONS


def run_main(main, name: str) -> None:
    """`absl.app.run(main)`, reporting a user's error (any UserError, e.g. InputError, or a UsageError raised
    in main) as one line `NAME: message` on stderr with exit status 2, and no traceback."""

    def guarded(argv):
        try:
            return main(argv)
        except (UserError, app.UsageError) as e:
            print(f"{name}: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)


def define_inference_flags() -> None:
    """--dtype and --attention, for the binaries that load a model to decode with."""
    flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                      "weights and compute dtype; auto: bfloat16 on accelerators, float32 on CPU")
    flags.DEFINE_enum("attention", "auto", list(ATTENTIONS), "attention implementation (docs/attention.md)")


def inference_overrides() -> dict:
    """What `xlit_jax.load` takes for the flags of `define_inference_flags`."""
    from xlit_jax.models.config import inference_dtypes

    return {**inference_dtypes(flags.FLAGS.dtype), "attention": flags.FLAGS.attention}
