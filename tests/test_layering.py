"""The layering rule of README.md and CONTRIBUTING.md, checked on every import statement.

Every module of ``slift_plugin/`` and ``adapters/`` is parsed, and every import in it,
including those inside functions (lazy imports count: they still tie the layers), is
resolved to a module name and checked against the rule:

* core (everything but the adapters and the applications) imports the standard library,
  torch, numpy, xarray, zarr and tqdm only; never neuralop, torchsde or the adapters;
* adapters import no application module;
* methods never import file IO, the training loop or the rollout engine;
* data never imports a stepper or a backbone.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_THIRD_PARTY = {"torch", "numpy", "xarray", "zarr", "tqdm"}
APPLICATIONS = (
    "slift_plugin.cli",
    "slift_plugin.cli_sample",
    "slift_plugin.cli_train",
    "slift_plugin._cli_arguments",
    "slift_plugin.demo",
    "slift_plugin.plotting",
    "slift_plugin.bench",
    "slift_plugin.systems",
)
ADAPTERS = ("slift_plugin.adapters",)
FORBIDDEN_FOR_METHODS = (
    "slift_plugin.data.io",
    "slift_plugin.store",
    "slift_plugin.checkpoint",
    "slift_plugin.train",
    "slift_plugin.rollout",
    "slift_plugin._rollout",  # the engine behind rollout()
    "xarray",
    "zarr",
)
FORBIDDEN_FOR_DATA = ("slift_plugin.stepper", "slift_plugin.methods", "slift_plugin.backbones")


def module_name(path: Path) -> str:
    """``slift_plugin/a/b.py`` -> ``slift_plugin.a.b``; ``adapters/x.py`` -> the installed
    ``slift_plugin.adapters.x`` (pyproject maps the folder to that subpackage)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "adapters":
        parts = ["slift_plugin", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module that ``source`` imports, at any nesting level."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            # ``from . import x`` and ``from pkg import submodule`` import submodules too
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(module: str, imported: set[str]) -> list[str]:
    """The imports of ``module`` that break the rule, with the reason."""
    bad = []
    ours = {i for i in imported if within(i, ("slift_plugin",))}
    external = {i.split(".")[0] for i in imported - ours}
    if within(module, APPLICATIONS):
        return bad
    if within(module, ADAPTERS):
        bad += [f"{i} (adapters import no application)" for i in ours if within(i, APPLICATIONS)]
        return bad
    for i in sorted(ours):
        if within(i, ADAPTERS + APPLICATIONS):
            bad.append(f"{i} (core imports neither adapters nor applications)")
    for top in sorted(external - CORE_THIRD_PARTY - set(sys.stdlib_module_names)):
        bad.append(f"{top} (core imports only {sorted(CORE_THIRD_PARTY)} and the stdlib)")
    if within(module, ("slift_plugin.methods",)):
        bad += [
            f"{i} (methods know no files, fit or rollout)"
            for i in sorted(imported)
            if within(i, FORBIDDEN_FOR_METHODS)
        ]
    if within(module, ("slift_plugin.data",)):
        bad += [
            f"{i} (data knows no models)" for i in sorted(ours) if within(i, FORBIDDEN_FOR_DATA)
        ]
    return bad


def all_modules() -> list[Path]:
    return sorted((ROOT / "slift_plugin").rglob("*.py")) + sorted((ROOT / "adapters").rglob("*.py"))


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: module_name(p))
def test_module_respects_the_layering(path):
    module = module_name(path)
    imported = imports_of(path.read_text(), module, path.name == "__init__.py")
    assert violations(module, imported) == []


def test_every_layer_is_present():
    """The lists above name real modules, so a rename cannot empty a rule silently."""
    names = {module_name(p) for p in all_modules()}
    for prefix in (*APPLICATIONS, *ADAPTERS, "slift_plugin.methods", "slift_plugin.data"):
        assert any(within(n, (prefix,)) for n in names), prefix
    for name in FORBIDDEN_FOR_METHODS + FORBIDDEN_FOR_DATA:
        if name.startswith("slift_plugin."):
            assert any(within(n, (name,)) for n in names), name


@pytest.mark.parametrize(
    ("module", "source", "reason"),
    [
        # a lazy import inside a method still ties core to the adapter
        (
            "slift_plugin.methods.dice",
            "def to_sde(self):\n    from ..adapters.torchsde import dice_sde\n",
            "core imports neither",
        ),
        ("slift_plugin.rollout", "import neuralop\n", "core imports only"),
        ("slift_plugin.methods.lifting", "from ..data.io import save_netcdf\n", "methods know"),
        ("slift_plugin.methods.base", "from .. import train\n", "methods know"),
        ("slift_plugin.methods.base", "from .._rollout.noise import BlockNoise\n", "methods know"),
        ("slift_plugin.data.transitions", "from ..methods import DICE\n", "data knows no"),
        ("slift_plugin.adapters.neuralop", "from ..bench import run_bench\n", "adapters import"),
    ],
)
def test_the_checker_catches_violations(module, source, reason):
    found = violations(module, imports_of(source, module, is_package=False))
    assert found and all(reason in f for f in found), found


def test_applications_and_adapters_may_import_downwards():
    assert violations("slift_plugin.demo", {"slift_plugin.adapters.neuralop", "pandas"}) == []
    assert violations("slift_plugin.adapters.torchsde", {"torchsde", "slift_plugin.rollout"}) == []
    assert violations("slift_plugin.adapters.torchsde", {"slift_plugin._rollout.noise"}) == []
