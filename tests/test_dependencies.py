"""Every library a package imports is declared by the distribution for the install that uses it:
the SDK's by the base install (a laptop), the service's by `[serve]`, the plugin's by `[fiftyone]`.
A library that arrives only as another's dependency can vanish with that one's next release."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
OURS = {"sdk", "serving", "fiftyone_plugin"}


def declared(*extras: str) -> set[str]:
    requirements = PROJECT["dependencies"] + [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    return {_normal(Requirement(r).name) for r in requirements}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def imported(package: str) -> set[str]:
    """Top-level modules `package` imports, less those imported where an ImportError is handled
    (optional: the code says what to install when they are missing)."""
    modules = set()
    for path in (REPO / package).glob("*.py"):
        tree = ast.parse(path.read_text())
        optional = {id(node) for t in ast.walk(tree) if isinstance(t, ast.Try) and _handles_import_error(t)
                    for node in ast.walk(t)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in OURS and m != "__future__"}


def _handles_import_error(node: ast.Try) -> bool:
    names = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    return any("ImportError" in n or "ModuleNotFoundError" in n for n in names)


@pytest.mark.parametrize("package, extras", [("sdk", ()), ("serving", ("serve",)), ("fiftyone_plugin", ("fiftyone",))])
def test_every_import_is_declared_for_its_install(package, extras):
    """The SDK's commands that need an extra (`samfleet serve`, `install-plugin`) say which when its
    modules are missing (sdk.cli.EXTRA_OF_MODULE): those modules must be in that extra."""
    from sdk.cli import EXTRA_OF_MODULE

    distributions = packages_distributions()

    def installs(module: str) -> set[str]:
        gated = (EXTRA_OF_MODULE[module],) if package == "sdk" and module in EXTRA_OF_MODULE else ()
        return declared(*extras, *gated)

    undeclared = {module: distributions.get(module) for module in imported(package)
                  if not {_normal(d) for d in distributions.get(module, [module])} & installs(module)}
    assert not undeclared, f"{package} imports these without pyproject.toml declaring them: {undeclared}"
