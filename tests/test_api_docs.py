"""API documentation conventions (issue 10): ``__all__``, numpydoc docstrings, ``py.typed``.

Every public module of ``slift_plugin`` (including the ``slift_plugin.adapters``
subpackage, which lives in ``adapters/``) is imported and checked:

* it defines ``__all__``, a sequence of unique strings naming attributes that exist, and
  listing every public function and class the module itself defines;
* every function or class of this package named in any ``__all__`` has a docstring, and
  so do the public methods and properties of such classes;
* no such docstring uses Google style (a line ``Args:``, ``Returns:``, ``Raises:``...);
* every such function, method and constructor that takes parameters (besides
  ``self``/``cls``) has a numpydoc ``Parameters`` section (underlined with dashes) whose
  entries are ``name : type`` lines naming exactly the real parameters (``a, b : type``
  documents several; ``*args``/``**kwargs`` are written with their stars or without);
  dataclasses may document their fields in an ``Attributes`` section instead; the
  entries of every ``Parameters`` and ``Attributes`` section are ``name : type`` lines;
* every such function or method annotated to return something other than ``None`` has a
  ``Returns`` (or ``Yields``) section, unless its body is a lone ``raise``;
* ``slift_plugin/py.typed`` exists and ``pyproject.toml`` ships it as package data.

Dunder methods are exempt from the sections, properties need only a docstring. A method
that overrides a documented method of a base class in this package without a docstring
of its own inherits that docstring (as Sphinx does), checked against its own signature.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import textwrap
import tomllib
from pathlib import Path

import pytest

import slift_plugin
import slift_plugin.adapters

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "slift_plugin"
GOOGLE_HEADERS = {
    "Args:",
    "Arguments:",
    "Keyword Args:",
    "Keyword Arguments:",
    "Returns:",
    "Return:",
    "Yields:",
    "Raises:",
    "Attributes:",
}
ENTRY = re.compile(r"^(?P<names>\**[A-Za-z_]\w*(?:\s*,\s*\**[A-Za-z_]\w*)*)\s+:\s+\S")


# -- collection ---------------------------------------------------------------------------
def _public_module_names() -> list[str]:
    names = {PACKAGE, slift_plugin.adapters.__name__}
    for package in (slift_plugin, slift_plugin.adapters):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.add(info.name)
    return sorted(n for n in names if not any(p.startswith("_") for p in n.split(".")))


MODULES = _public_module_names()


def _in_package(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _exported_objects() -> dict[str, object]:
    """Functions and classes of this package named in some ``__all__``, by qualified name."""
    found: dict[str, object] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr, None)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and _in_package(obj):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return dict(sorted(found.items()))


EXPORTED = _exported_objects()
CLASSES = {k: v for k, v in EXPORTED.items() if inspect.isclass(v)}


# -- docstring parsing --------------------------------------------------------------------
def _sections(doc: str) -> dict[str, list[str]]:
    """numpydoc sections of a cleaned docstring: header -> the lines under its underline."""
    lines = doc.splitlines()
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        under = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", under) and len(under) == len(line.strip()):
            current = out.setdefault(line.strip(), [])
            i += 2
            continue
        if current is not None:
            current.append(line)
        i += 1
    return out


def _entries(section: list[str]) -> tuple[list[str], list[str]]:
    """``(names, malformed lines)`` of the unindented entry lines of a section."""
    names, bad = [], []
    indents = [len(s) - len(s.lstrip()) for s in section if s.strip()]
    base = min(indents, default=0)
    for line in section:
        if not line.strip() or len(line) - len(line.lstrip()) != base:
            continue
        match = ENTRY.match(line.strip())
        if match is None:
            bad.append(line.strip())
            continue
        names += [n.strip().lstrip("*") for n in match["names"].split(",")]
    return names, bad


def _doc(obj: object) -> str:
    """The cleaned docstring; empty when missing or generated by ``@dataclass``."""
    doc = getattr(obj, "__doc__", None)
    if not doc:
        return ""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        generated = obj.__name__ + str(inspect.signature(obj)).replace(" -> None", "")
        if doc == generated:
            return ""
    return inspect.cleandoc(doc)


def _own_function(cls: type, name: str):
    """``(kind, function, defining class)`` of attribute ``name`` of ``cls``, or None."""
    for klass in cls.__mro__:
        if name in vars(klass):
            raw = vars(klass)[name]
            break
    else:
        return None
    if not _in_package(klass):
        return None
    if isinstance(raw, property):
        return "property", raw.fget, klass
    if isinstance(raw, classmethod):
        return "classmethod", raw.__func__, klass
    if isinstance(raw, staticmethod):
        return "staticmethod", raw.__func__, klass
    if inspect.isfunction(raw):
        return "method", raw, klass
    return None


def _method_doc(cls: type, name: str, func) -> str:
    """The method's docstring, or the first one of a base class in this package."""
    if func.__doc__:
        return _doc(func)
    for klass in cls.__mro__:
        base = vars(klass).get(name)
        base = getattr(base, "__func__", getattr(base, "fget", base))
        if _in_package(klass) and getattr(base, "__doc__", None):
            return _doc(base)
    return ""


def _public_members(cls: type):
    """Public methods and properties of ``cls`` defined in this package, except those it
    inherits unchanged from another exported class (they are checked there)."""
    exported = {id(c) for c in CLASSES.values()}
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        found = _own_function(cls, name)
        if found is not None and (found[2] is cls or id(found[2]) not in exported):
            yield name, *found


def _documented_callables():
    """``(label, doc, parameter names, returns something, dataclass)`` to check."""
    for qualname, obj in EXPORTED.items():
        if inspect.isfunction(obj):
            yield qualname, _doc(obj), _params(obj), _returns(obj), False
            continue
        # The constructor, when this package defines it (Protocol and exception classes
        # get theirs from the standard library).
        init = vars(next(k for k in obj.__mro__ if "__init__" in vars(k)))["__init__"]
        if inspect.isfunction(init) and _in_package(init):
            doc = _doc(obj)
            if init.__doc__:
                doc += "\n\n" + _doc(init)
            params = _params(init)[1:]
            yield qualname, doc, params, False, dataclasses.is_dataclass(obj)
        for name, kind, func, _ in _public_members(obj):
            if kind == "property":
                continue
            params = _params(func)
            if kind in ("method", "classmethod"):
                params = params[1:]
            label = f"{qualname}.{name}"
            yield label, _method_doc(obj, name, func), params, _returns(func), False


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def _returns(func) -> bool:
    """Annotated to return something, and its body is more than a lone ``raise``."""
    annotation = inspect.signature(func).return_annotation
    if annotation in (inspect.Signature.empty, None, "None", type(None)):
        return False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return True
    body = tree.body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return not (len(body) == 1 and isinstance(body[0], ast.Raise))


CALLABLES = {label: rest for label, *rest in _documented_callables()}


# -- tests --------------------------------------------------------------------------------
def test_module_walk_finds_the_package() -> None:
    expected = {
        "slift_plugin",
        "slift_plugin.adapters",
        "slift_plugin.adapters.torchsde",
        "slift_plugin.adapters.neuralop",
        "slift_plugin.bench.runner",
        "slift_plugin.data.io",
        "slift_plugin.methods.dice",
        "slift_plugin.systems.sdes",
        "slift_plugin.rollout",
    }
    assert expected <= set(MODULES)
    assert "slift_plugin.systems._xarray" not in MODULES
    assert len(EXPORTED) > 50


@pytest.mark.parametrize("name", MODULES)
def test_module_defines_all(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    names = module.__all__
    assert isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names attributes that do not exist: {missing}"
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"{name}.__all__ lists names twice: {duplicates}"
    unlisted = sorted(
        attr
        for attr, obj in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == name
        and attr not in names
    )
    assert not unlisted, f"{name} defines public names missing from __all__: {unlisted}"


@pytest.mark.parametrize("qualname", list(EXPORTED))
def test_exported_object_has_docstring(qualname: str) -> None:
    obj = EXPORTED[qualname]
    assert _doc(obj).strip(), f"{qualname} has no docstring"
    if inspect.isclass(obj):
        undocumented = [
            name
            for name, _, func, _ in _public_members(obj)
            if not _method_doc(obj, name, func).strip()
        ]
        assert not undocumented, f"public members of {qualname} without docstring: {undocumented}"


def _docs_of(qualname: str) -> dict[str, str]:
    """The docstrings of an exported object, its constructor and its public members."""
    obj = EXPORTED[qualname]
    docs = {qualname: _doc(obj)}
    if inspect.isclass(obj):
        docs[f"{qualname}.__init__"] = _doc(obj.__init__) if _in_package(obj.__init__) else ""
        for name, _, func, _ in _public_members(obj):
            docs[f"{qualname}.{name}"] = _doc(func)
    return docs


@pytest.mark.parametrize("qualname", list(EXPORTED))
def test_no_google_style(qualname: str) -> None:
    docs = _docs_of(qualname)
    offenders = {
        label: sorted({s.strip() for s in doc.splitlines() if s.strip() in GOOGLE_HEADERS})
        for label, doc in docs.items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"Google-style sections (use numpydoc): {offenders}"


@pytest.mark.parametrize("qualname", list(EXPORTED))
def test_entries_are_typed(qualname: str) -> None:
    """Every entry of a Parameters, Other Parameters or Attributes section reads
    ``name : type``, and nothing but indented text follows it (no stray prose)."""
    malformed = {}
    for label, doc in _docs_of(qualname).items():
        for key, lines in _sections(doc).items():
            if key in ("Parameters", "Other Parameters", "Attributes"):
                bad = _entries(lines)[1]
                if bad:
                    malformed[f"{label} ({key})"] = bad
    assert not malformed, f"entries not of the form 'name : type': {malformed}"


def _section_problems(
    doc: str, params: list[str], returns: bool, is_dataclass: bool = False
) -> list[str]:
    """What is wrong with the numpydoc sections of ``doc`` for these parameters."""
    sections = _sections(doc)
    problems = []
    if params:
        key = "Parameters"
        if is_dataclass and "Parameters" not in sections:
            key = "Attributes"
        if key not in sections:
            return [
                f"takes parameters {tuple(params)} but has no numpydoc "
                "'Parameters\\n----------' section"
            ]
        documented, malformed = _entries(sections[key])
        if malformed:
            problems.append(f"{key} entries not of the form 'name : type': {malformed}")
        stale = [n for n in documented if n not in params]
        if stale:
            problems.append(f"documents parameters it does not take: {stale}")
        undocumented = [p for p in params if p not in documented]
        if undocumented:
            problems.append(f"parameters missing from {key}: {undocumented}")
        duplicates = sorted({n for n in documented if documented.count(n) > 1})
        if duplicates:
            problems.append(f"parameters documented twice: {duplicates}")
    elif "Parameters" in sections:
        problems.append("takes no parameters but has a Parameters section")
    if returns and "Returns" not in sections and "Yields" not in sections:
        problems.append("returns a value but has no 'Returns\\n-------' section")
    return problems


@pytest.mark.parametrize("label", list(CALLABLES))
def test_numpydoc_sections(label: str) -> None:
    problems = _section_problems(*CALLABLES[label])
    assert not problems, f"{label}: " + "; ".join(problems)


def test_section_parser_rejects_bad_docstrings() -> None:
    """The checks above can fail: Google style, missing, stale and untyped entries."""
    google = "Do it.\n\nArgs:\n    x: a number.\n"
    assert not _sections(google) and "Args:" in {s.strip() for s in google.splitlines()}
    doc = "Do it.\n\nParameters\n----------\nx : int\n    A number.\ny:\n    Untyped.\n"
    names, bad = _entries(_sections(doc)["Parameters"])
    assert names == ["x"] and bad == ["y:"]
    doc = "Do.\n\nParameters\n----------\na, *b : int\n    Two.\n\nReturns\n-------\nint\n"
    sections = _sections(doc)
    assert set(sections) == {"Parameters", "Returns"}
    assert _entries(sections["Parameters"]) == (["a", "b"], [])
    assert _section_problems(doc, ["a", "b"], returns=True) == []
    stale, missing, untyped, no_returns, none = (
        _section_problems(doc, ["a", "c"], returns=True),
        _section_problems(doc, ["a", "b", "c"], returns=True),
        _section_problems(doc.replace("a, *b : int", "a, b:"), ["a", "b"], returns=True),
        _section_problems("Do.\n\nParameters\n----------\na : int\n", ["a"], returns=True),
        _section_problems("Do it.", ["a"], returns=False),
    )
    assert "does not take: ['b']" in stale[0] and "missing from Parameters: ['c']" in stale[1]
    assert "missing from Parameters: ['c']" in missing[0]
    assert "not of the form 'name : type'" in untyped[0]
    assert "no 'Returns" in no_returns[0]
    assert "no numpydoc 'Parameters" in none[0]

    @dataclasses.dataclass
    class Undocumented:
        x: int

    assert Undocumented.__doc__ and not _doc(Undocumented)  # @dataclass's stand-in


def test_py_typed_is_shipped() -> None:
    assert (Path(slift_plugin.__file__).parent / "py.typed").is_file()
    with open(ROOT / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    package_data = config["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data.get(PACKAGE, [])
    assert PACKAGE in config["tool"]["setuptools"]["packages"]
