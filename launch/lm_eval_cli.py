"""xlit-lm-eval: lm-evaluation-harness's own command line, with xlit_jax's models as `--model xlit`: its
`pretrained=` takes anything `xlit_jax.load` reads (an HF folder, a .gguf, a checkpoint, smollm2-135m).

    xlit-lm-eval --model xlit --model_args pretrained=smollm2-135m --tasks mmlu_abstract_algebra --limit 20
    python -m launch.lm_eval_cli ...   (the same, from a checkout)

lm-eval finds a model class only if it is registered when its CLI parses the arguments, and its `lm_eval` binary
imports none of ours: this one imports XlitLM (which registers "xlit") and hands the arguments, unchanged, to
lm-eval's entry point. Every lm-eval flag and subcommand works as documented there (its --help follows ours);
our input errors are one line `xlit-lm-eval: message`, exit 2, lm-eval's its own. Needs
`pip install -e '.[harness]'`.
"""

import sys

from xlit_jax.errors import UserError


def run():
    try:
        from lm_eval.__main__ import cli_evaluate

        from xlit_jax.evaluate.harness import lm_eval_lm  # noqa: F401  registers --model xlit
    except ImportError as error:
        sys.exit(f"xlit-lm-eval: needs lm-evaluation-harness (pip install -e '.[harness]'): {error}")
    sys.argv[0] = "xlit-lm-eval"
    if {"-h", "--help"} & set(sys.argv[1:]):  # lm-eval's help names none of ours
        print("\n\n".join(__doc__.split("\n\n")[:2]) + "\n\nlm-eval's own help:\n")
    try:
        cli_evaluate()
    except UserError as error:  # ours (a model that does not load, ...): one line, as every xlit binary
        print(f"xlit-lm-eval: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
