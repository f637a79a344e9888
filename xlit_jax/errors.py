"""The errors a user must fix or know about. Every binary reports them in one line `xlit-NAME: message`,
exit status 2, without a traceback (xlit_jax.cli.run_main). This module imports nothing of ours, so every
layer can raise them."""


class UserError(Exception):
    """An error the user must fix or know about: the binaries report it in one line, without a traceback."""


class InputError(UserError, ValueError):
    """Bad user input; the message names the file, line and field."""


class WeightsError(InputError):
    """A weights file or config that cannot be read or is not supported; the message names the file."""


class PlanError(InputError):
    """A compile-only target or layout that cannot be planned; the message says what to use instead."""


class JudgeError(UserError, RuntimeError):
    """The judge service refuses every request (bad key, unknown model, wrong URL)."""


class NonFiniteError(UserError, FloatingPointError):
    """The loss or gradient norm became NaN/inf; the message names the step and the last good checkpoint."""
