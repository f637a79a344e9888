"""The one error surface of the binaries (launch/ and the perf scripts), their --help and --version, and
the quieting of Orbax's logging that they install for their process."""

import difflib
import functools
import importlib.metadata
import logging as pylogging
import re
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging
from ml_collections import ConfigDict
from ml_collections.config_flags.config_flags import ConfigFileFlagParser
from tqdm import tqdm

from xlit_jax.errors import UserError


def run_main(main, name: str) -> None:
    """`absl.app.run(main)`, reporting a user's error (any UserError, e.g. InputError, or a UsageError raised
    in main) as one line `NAME: message` on stderr with exit status 2, and no traceback. A --CONFIG.FIELD
    override naming no field of its config (check_overrides) is such an error too, found before main runs.
    Ctrl-C is one line too, exit status 130 (the shell's for SIGINT). Orbax's logging is quieted
    (quiet_orbax)."""
    quiet_orbax()

    def report(error, status: int = 2):
        for bar in list(getattr(tqdm, "_instances", ())):  # a progress bar the error cut short ends its line
            bar.close()
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(status)

    def parse(argv):
        if {"--help", "-help", "-h", "--helpshort", "-?"} & set(argv[1:]):
            print(usage(main.__module__, name))
            sys.exit(0)
        if {"--version", "-version"} & set(argv[1:]):
            print(f"{name} (xlit_jax) {importlib.metadata.version('xlit_jax')}")
            sys.exit(0)
        try:
            check_overrides(argv)
            rest = flags.FLAGS(argv)
            check_config_files()
            return rest
        except UserError as e:
            report(e)
        except flags.Error as e:  # an unknown flag names the closest ones; a config's get_config error
            report(_flag_error(e))

    def guarded(argv):
        try:
            return main(argv)
        except (UserError, app.UsageError) as e:
            report(e)
        except KeyboardInterrupt:
            report("interrupted; finished work is kept: rerun the same command to go on", 130)

    app.run(guarded, flags_parser=parse)


def usage(module_name: str, name: str) -> str:
    """What --help prints: the binary's docstring, then its own flags (`--helpfull` adds absl's)."""
    module = sys.modules[module_name]
    # absl files a `python -m` main module's flags under sys.argv[0]; the shared ones are launch's
    own = [flags.FLAGS.module_help(m).split("\n", 2)[-1] for m in dict.fromkeys((module_name, sys.argv[0], "launch"))
           if m in flags.FLAGS.flags_by_module_dict()]
    doc = (module.__doc__ or name).strip()
    return "\n\n".join([doc, "Flags:\n" + "\n".join(own), "--helpfull lists absl's flags too; --version prints "
                        "the version."])


def quiet_orbax() -> None:
    """Orbax logs every save phase at INFO, and after a failed restore or save its cancelled work prints
    tracebacks of its own; the failure itself reaches the caller, which reports it in one line. Keep only
    Orbax's warnings and errors worth a user's eye, for the whole process (a binary's, or a test session's)."""
    logging.get_absl_logger().addFilter(_quiet_orbax)  # addFilter adds each filter once
    pylogging.getLogger("asyncio").addFilter(_quiet_orbax_tasks)
    if getattr(sys.unraisablehook, "func", None) is not _quiet_orbax_aftermath:  # once, passing on to the hook before
        sys.unraisablehook = functools.partial(_quiet_orbax_aftermath, report=sys.unraisablehook)


def _quiet_orbax(record) -> bool:
    """Orbax's warnings and errors only, less the errors it logs from its background threads or with a
    traceback: Orbax raises each of them again in the caller, which reports it (Checkpoints.save)."""
    if "/orbax/" not in record.pathname:
        return True
    if record.levelno == pylogging.WARNING and re.search(r"read.only", record.getMessage()):
        return False  # that a restore-only manager (Checkpoints.reader) does not save: what we asked for
    if record.levelno >= pylogging.ERROR:
        return record.threadName == "MainThread" and not record.exc_info
    return record.levelno >= pylogging.WARNING


def _from_orbax(trace, *files: str) -> bool:
    """Whether a traceback (or one of `files`) runs through Orbax's or asyncio's code."""
    files = list(files)
    while trace is not None:
        files.append(trace.tb_frame.f_code.co_filename)
        trace = trace.tb_next
    return any("/orbax/" in f or "/asyncio/" in f for f in files)


def _quiet_orbax_aftermath(unraisable, report) -> None:
    """After a failed restore or save, the reads and writes Orbax cancelled still finish on TensorStore's
    threads into a closed event loop, or are collected at exit, and Python prints a traceback for each
    ("Event loop is closed", "Exception ignored in <coroutine>"): the failure itself reaches the caller, so
    drop these, and only these."""
    code = getattr(getattr(unraisable.object, "cr_code", None), "co_filename", "")
    if not _from_orbax(unraisable.exc_traceback, code):
        report(unraisable)


def _quiet_orbax_tasks(record) -> bool:
    """The same aftermath through asyncio's logger: a task of Orbax's whose exception nobody retrieved is
    reported when it is collected ("Task exception was never retrieved"), whenever that happens."""
    trace = record.exc_info[2] if record.exc_info else None
    return not any("/orbax/" in frame.filename for frame in traceback.extract_tb(trace))


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        for form in (f"--{name}=", f"-{name}="):
            if arg.startswith(form):
                return arg[len(form):]
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_field(config, path: str) -> str | None:
    """What is wrong with the override path `a.b.c` of `config`, or None if it names a field."""
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
        if "[" in part:  # an index into a sequence: ml_collections checks it
            return None
        section = ".".join(parts[:depth])
        if not isinstance(node, (ConfigDict, dict)):
            return f"{section} is a setting ({type(node).__name__}), not a section: it has no field {part!r}"
        if part not in node:
            fields = sorted(node.keys())
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return (f"no field {part!r} in {f'section {section}' if section else 'the config'} "
                    f"({hint}its fields: {', '.join(fields)})")
        node = node[part]
    return None


def _flag_error(error: flags.Error) -> str:
    """absl's message in one line: several missing flags are named together; a config file's own error
    (which ml_collections wraps with its traceback) is its last line, after the flag it concerns."""
    lines = str(error).strip().splitlines()
    missing = [m.group(1) for line in lines if (m := re.match(r"flag (--\S+)=None: Flag \S+ must have a value", line))]
    if missing and len(missing) == len(lines):
        return f"{', '.join(missing)}: required (see --help)"
    if len(lines) == 1:
        return lines[0]
    flag = re.match(r"(flag --\S+?)[=:]", lines[0])
    return f"{flag.group(1) + ': ' if flag else ''}{lines[-1]}"


def check_config_files(flag_values=flags.FLAGS) -> None:
    """A UserError naming a config-file flag whose file is missing or fails to load (ml_collections defers
    that error to the config's first use, deep in main)."""
    for name in list(flag_values):
        flag = flag_values[name]
        if not isinstance(flag.parser, ConfigFileFlagParser) or flag.value is None:
            continue
        try:
            flag.value.keys()
        except Exception as e:  # noqa: BLE001 - the loading error, re-raised in one line
            path = str(flag.config_filename if hasattr(flag, "config_filename") else "").split(":")[0]
            reason = "no such file" if path and not Path(path).exists() else str(e).splitlines()[0]
            raise UserError(f"--{name}={path}: {reason}") from None


def check_overrides(argv: list[str], flag_values=flags.FLAGS) -> None:
    """A UserError naming the first --NAME.FIELD override of a config-file flag (config_flags) that names
    no field of the config, its section's fields and the closest match; nothing else is loaded first."""
    for name in list(flag_values):
        flag = flag_values[name]
        if not isinstance(flag.parser, ConfigFileFlagParser):
            continue
        pattern = rf"-{{1,2}}(no)?{re.escape(name)}\.([^=]+)"
        overrides = [m.group(2) for arg in argv[1:] if (m := re.match(pattern, arg))]
        path = _flag_value(argv[1:], name)
        if not overrides or path is None:
            continue
        try:
            config = flag.parser.parse(path)
        except Exception:  # noqa: BLE001 - an unreadable config file: the flag's own parsing reports it
            continue
        for override in overrides:
            problem = _unknown_field(config, override)
            if problem:
                raise UserError(f"--{name}.{override}: {problem}")
