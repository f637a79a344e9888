"""Where the project finds its files: the shared data folder, the files shipped inside the package, and the
config files of the `configs` package.

The shared data folder (the papers' evaluation sets, LIMA, NTREX, the benchmarks: ../shared/data/README.md)
is $XLIT_SHARED_DATA when set, else `shared/data` beside the repository checkout. Every module and
perf script asks `shared_data_dir()`, so one variable moves it for all of them.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

SHARED_DATA_ENV = "XLIT_SHARED_DATA"
REPOSITORY = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else REPOSITORY.parent / "shared" / "data"


def shared_data(relative: str) -> str:
    """A path under the shared data folder, as a string (config files hold strings)."""
    return str(shared_data_dir() / relative)


def package_file(package: str, name: str) -> Path:
    """A data file shipped inside `package` (e.g. "xlit_jax.plan"); it works from a wheel too,
    because our package data is never zipped (setuptools installs it as files)."""
    return Path(str(importlib.resources.files(package).joinpath(name)))


def config_file(name: str) -> Path:
    """A config file of the `configs` package by its path inside it (e.g. "experiments/paper.py"): the
    checkout's, or the installed one's (pyproject ships `configs` beside `xlit_jax`), wherever this runs from.
    The library reads config files as files (ConfigFileFlagParser); it imports none of their modules."""
    return package_file("configs", name)
