"""The one error surface of the binaries (launch/ and the benchmark scripts)."""

import sys

from absl import app

from xlit_jax.errors import UserError


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
