"""The layering of docs/architecture.md holds: every import of ours points down (or within its layer)."""

import ast
import re
from pathlib import Path

from support import REPO

PACKAGES = ("xlit_jax", "configs", "launch")


def layers() -> list[list[str]]:
    block = re.search(r"```layers\n(.*?)```", (REPO / "docs" / "architecture.md").read_text(), re.DOTALL)
    return [line.split() for line in block.group(1).splitlines() if line.strip()]


def layer_of(module: str, rank: dict[str, int]) -> int:
    """The rank of the longest layer name `module` starts with (`xlit_jax` alone names only the package)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in rank and (name != "xlit_jax" or module == "xlit_jax"):
            return rank[name]
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of our packages in `path`, at any depth (lazy imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from xlit_jax import plan` imports the module xlit_jax.plan when there is one
            found += [(node.lineno, f"{node.module}.{alias.name}") if (REPO / node.module.replace(".", "/")
                      / alias.name).exists() or (REPO / node.module.replace(".", "/") / f"{alias.name}.py").exists()
                      else (node.lineno, node.module) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def test_every_import_points_down_the_layers():
    rank = {name: i for i, line in enumerate(layers()) for name in line}
    wrong = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            here = module_name(path)
            mine = layer_of(here, rank)
            for line, target in imports(path):
                if layer_of(target, rank) > mine:
                    wrong.append(f"{path.relative_to(REPO)}:{line}: {here} imports {target}, a layer above it")
    assert not wrong, "\n".join(wrong)


def test_layers_are_ordered_as_the_code_needs():
    rank = {name: i for i, line in enumerate(layers()) for name in line}
    assert layer_of("xlit_jax.models.attention", rank) < layer_of("xlit_jax.io.files", rank)
    assert layer_of("xlit_jax.evaluate.instructions.run", rank) > layer_of("xlit_jax.evaluate.report", rank)
    assert layer_of("xlit_jax.evaluate.instructions.judge", rank) < layer_of("xlit_jax.evaluate.report", rank)
    assert layer_of("xlit_jax", rank) < layer_of("xlit_jax.train.loop", rank)
    assert layer_of("xlit_jax.perf.scaling", rank) < layer_of("configs.experiments.paper", rank)


def test_every_data_file_of_the_library_ships_as_package_data():
    """What the library reads through resources.package_file must be in the wheel, not only in a checkout."""
    import tomllib

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["xlit_jax"]
    root = REPO / "xlit_jax"
    data = [p for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert data, "no data files found"
    unshipped = [str(p.relative_to(root)) for p in data if not any(p.relative_to(root).match(g) for g in globs)]
    assert not unshipped, f"add to [tool.setuptools.package-data] in pyproject.toml: {unshipped}"
