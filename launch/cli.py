"""What every xlit-* program shares: a user's error is one line `xlit-NAME: message` and exit status 2."""

import sys

from xlit_jax.io.files import InputError


def exit_on_input_error(program: str, body) -> None:
    """Call body(); an InputError ends the program with one line on stderr, no traceback."""
    try:
        body()
    except InputError as e:
        print(f"{program}: {e}", file=sys.stderr)
        sys.exit(2)
