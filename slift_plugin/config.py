"""Steppers described as data: the JSON a checkpoint records so that it can rebuild them.

:func:`describe_stepper` writes a stepper's constructor configuration, and that of its
backbone, as a JSON text; :func:`build_stepper` builds a new stepper from such a text.
:func:`slift_plugin.save_stepper` and :func:`slift_plugin.fit` store it next to the
weights, so that ``load_stepper(path)`` needs no hand-built stepper. A description is
data only: class *names* looked up in a table, never import paths, never pickled code.
A description has this layout (``args`` hold JSON values only)::

    {"format": "slift_plugin.stepper", "version": 1, "dtype": "float32",
     "criterion": null,
     "stepper": {"class": "StochasticLifting",
                 "args": {"state_shape": [1], "history": 1, "n_params": 0,
                          "residual": true, "dt": 0.1},
                 "modules": {"backbone": {"class": "MLP", "args": {...}, "modules": {}}}}}

``dt`` is ``null`` when the step is unknown (``nan``). The names that may be built are
those of the built-in table, :mod:`slift_plugin._builtin_configs` (the steppers of
:mod:`slift_plugin.methods` and the backbones of :mod:`slift_plugin.backbones`), and
those that installed packages declare under the entry point group
:data:`ENTRY_POINT_GROUP`, each pointing at a :class:`Configurable`. This is how the
neuraloperator backbones are found without core importing the adapter:
``pyproject.toml`` declares them, and :mod:`slift_plugin.adapters.neuralop_config` is
loaded only when a description names one.

A class is described only when it is exactly a class of the table (a subclass is not:
its constructor may take other arguments), and only when the stepper rebuilt from the
description, on the ``meta`` device, has the same modules, tensor shapes and dtypes and
plain attributes as the stepper itself (so a module swapped in after construction makes
a stepper not describable, instead of being recorded wrongly). Anything else (a user's
own backbone or stepper class, an SDE wrapped by
:class:`slift_plugin.adapters.torchsde.SDEStepper`, an activation outside
:data:`ACTIVATIONS`) raises :class:`NotDescribableError`, naming why.

The training criterion of :class:`slift_plugin.StochasticLifting` is a callable, not
data: a stepper trained with a custom one is still described (sampling never uses it),
its name is recorded under ``"criterion"``, and :func:`build_stepper` gives the rebuilt
stepper the default criterion (mean squared error) with a warning saying so.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import re
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import torch
from torch import nn

from ._builtin_configs import ACTIVATIONS, BUILTIN
from ._configurable import ConfigError, Configurable, NotDescribableError, argument_checker
from .methods.lifting import mean_squared_error
from .stepper import Stepper

__all__ = [
    "ACTIVATIONS",
    "ENTRY_POINT_GROUP",
    "FORMAT",
    "ConfigError",
    "Configurable",
    "NotDescribableError",
    "argument_checker",
    "build_stepper",
    "describe_stepper",
    "stepper_record",
]

ENTRY_POINT_GROUP = "slift_plugin.configurable"
FORMAT = "slift_plugin.stepper"
_VERSION = 1
# A description of the largest stepper is a few kB; beyond this a text is not one.
_MAX_CHARS = 1_000_000
_MAX_DEPTH = 3  # stepper -> backbone -> (a backbone's own submodule)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


# -- finding the entry of a class -----------------------------------------------------------
@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _known_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_entry_points()))


def _load_entry(name: str) -> Configurable | None:
    """The :class:`Configurable` an installed package declares for class ``name``."""
    point = _entry_points().get(name)
    if point is None:
        return None
    try:
        entry = point.load()
    except Exception as exc:
        raise ConfigError(
            f"the entry point {name} = {point.value} of group {ENTRY_POINT_GROUP} cannot be "
            f"loaded ({type(exc).__name__}: {exc}); is its package installed with its "
            "dependencies?"
        ) from exc
    if not isinstance(entry, Configurable) or entry.cls.__name__ != name:
        raise ConfigError(
            f"the entry point {name} = {point.value} of group {ENTRY_POINT_GROUP} is not a "
            f"slift_plugin.config.Configurable for a class named {name}"
        )
    return entry


def _entry_of(module: nn.Module) -> Configurable | None:
    """The entry that describes exactly ``type(module)``, or None."""
    cls = type(module)
    entry = BUILTIN.get(cls.__name__)
    if entry is None:
        try:
            entry = _load_entry(cls.__name__)
        except ConfigError:
            return None
    return entry if entry is not None and entry.cls is cls else None


# -- describing ------------------------------------------------------------------------------
def _describe(module: object, where: str, depth: int) -> dict[str, Any]:
    entry = _entry_of(module) if isinstance(module, nn.Module) else None
    if entry is None:
        cls = type(module)
        raise NotDescribableError(
            f"{where} is a {cls.__module__}.{cls.__qualname__}, not a class that slift_plugin "
            f"can rebuild from data (those are {_known_names()}, matched exactly, and classes "
            f"that packages register under the entry point group {ENTRY_POINT_GROUP})"
        )
    if depth > _MAX_DEPTH:
        raise NotDescribableError(f"{where} is nested deeper than {_MAX_DEPTH} modules")
    try:
        args = entry.describe(module)
    except NotDescribableError as exc:
        raise NotDescribableError(f"{where} ({type(module).__name__}): {exc}") from exc
    except Exception as exc:  # a describer tripping over a modified module
        raise NotDescribableError(
            f"{where} ({type(module).__name__}) could not be described: {type(exc).__name__}: {exc}"
        ) from exc
    modules = {
        name: _describe(getattr(module, name, None), f"{where}.{name}", depth + 1)
        for name in entry.modules
    }
    return {"class": type(module).__name__, "args": args, "modules": modules}


def _dtype_name(stepper: nn.Module) -> str:
    dtypes = {t.dtype for t in (*stepper.parameters(), *stepper.buffers()) if t.is_floating_point()}
    names = [name for name, dtype in _DTYPES.items() if {dtype} == dtypes]
    if len(dtypes) > 1 or (dtypes and not names):
        raise NotDescribableError(
            f"its floating-point tensors are {sorted(map(str, dtypes))}; a description records "
            f"one dtype of {sorted(_DTYPES)}"
        )
    return names[0] if names else "float32"


def _criterion_name(stepper: nn.Module) -> str | None:
    criterion = getattr(stepper, "criterion", None)
    if criterion is None or criterion is mean_squared_error:
        return None
    named = criterion if hasattr(criterion, "__qualname__") else type(criterion)
    return f"{getattr(named, '__module__', '?')}.{named.__qualname__}"[:200]


def describe_stepper(stepper: nn.Module) -> str:
    """The constructor configuration of ``stepper`` and its backbone, as a JSON text.

    The description is checked before it is returned: the stepper it builds (on the
    ``meta`` device, so nothing is allocated) must have the same modules, tensor shapes
    and dtypes and plain attributes as ``stepper``. A custom training criterion is
    recorded by name only (see the module docstring).

    Parameters
    ----------
    stepper : torch.nn.Module
        A stepper whose class and backbone classes are in the table (the built-in
        steppers, :class:`slift_plugin.MLP`, :class:`slift_plugin.PotentialMLP`, and
        the classes registered under :data:`ENTRY_POINT_GROUP`).

    Returns
    -------
    str
        The description, strict JSON (``FORMAT``, version 1).

    Raises
    ------
    NotDescribableError
        Naming the module and why: a class outside the table (a user's own backbone, a
        subclass, an SDE wrapper), an unrecorded activation, an argument that is not
        plain data, mixed dtypes, or modules changed after construction.
    """
    if not isinstance(stepper, Stepper):
        raise NotDescribableError(
            f"a {type(stepper).__qualname__} is not a slift_plugin.Stepper; only steppers "
            "are described"
        )
    record = {
        "format": FORMAT,
        "version": _VERSION,
        "dtype": _dtype_name(stepper),
        "criterion": _criterion_name(stepper),
        "stepper": _describe(stepper, "the stepper", 0),
    }
    try:
        text = json.dumps(record, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise NotDescribableError(f"its arguments are not all JSON values: {exc}") from exc
    try:
        probe = _build_record(_parse(text), "meta")
    except ConfigError as exc:
        raise NotDescribableError(f"its description does not build it again: {exc}") from exc
    differences = _differences(stepper, probe)
    if differences:
        raise NotDescribableError(
            f"the {type(stepper).__name__} its description builds differs from it "
            f"({'; '.join(differences[:4])}): a module or attribute was changed after it "
            "was built"
        )
    return text


def stepper_record(stepper: nn.Module) -> str:
    """What a checkpoint stores about ``stepper``: its description, or why there is none.

    Never raises, so that saving the weights never fails for want of a description.

    Parameters
    ----------
    stepper : torch.nn.Module
        Any module.

    Returns
    -------
    str
        :func:`describe_stepper`'s JSON text, or a JSON object ``{"format", "version",
        "not_describable": reason}``, which :func:`build_stepper` refuses with the reason.
    """
    try:
        return describe_stepper(stepper)
    except Exception as exc:  # a failing description must not cost the checkpoint
        reason = str(exc) if isinstance(exc, NotDescribableError) else repr(exc)
        return json.dumps({"format": FORMAT, "version": _VERSION, "not_describable": reason})


# -- comparing a stepper with the one its description builds -------------------------------
_NOT_PLAIN = object()


def _plain(value: object) -> object:
    """``value`` as comparable plain data (tuples as lists, NaN as a string), or _NOT_PLAIN."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list) and len(value) <= 256:
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(i is _NOT_PLAIN for i in items) else items
    return _NOT_PLAIN


def _facts(module: nn.Module) -> dict[str, object]:
    """Class, plain public attributes and tensor shapes/dtypes of every submodule, flattened."""
    facts: dict[str, object] = {}
    for name, sub in module.named_modules():
        facts[f"{name}:class"] = type(sub).__qualname__
        for key, value in vars(sub).items():
            plain = _plain(value)
            # Private attributes are left out: modules cache things there at run time
            # (neuraloperator's positional embedding keeps the last grid).
            if not key.startswith("_") and key != "training" and plain is not _NOT_PLAIN:
                facts[f"{name}.{key}"] = plain
    for key, tensor in module.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            facts[f"{key}:tensor"] = (tuple(tensor.shape), str(tensor.dtype))
    return facts


def _differences(stepper: nn.Module, probe: nn.Module) -> list[str]:
    ours, built = _facts(stepper), _facts(probe)
    absent = "(absent)"
    return [
        f"{key}: {ours.get(key, absent)!r}, built {built.get(key, absent)!r}"
        for key in sorted(set(ours) | set(built))
        if ours.get(key, absent) != built.get(key, absent)
    ]


# -- building --------------------------------------------------------------------------------
def _parse(config: object) -> dict[str, Any]:
    """The record a description text holds, its top level checked."""
    if not isinstance(config, str):
        raise ConfigError(f"a stepper description is a JSON text, got a {type(config).__name__}")
    if len(config) > _MAX_CHARS:
        raise ConfigError(
            f"a stepper description is at most {_MAX_CHARS} characters, got {len(config)}"
        )
    try:
        record = json.loads(config)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"the stepper description is not JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"the stepper description is not a JSON object with format {FORMAT!r}")
    if record.get("version") != _VERSION:
        raise ConfigError(
            f"the stepper description has version {record.get('version')!r}; this slift_plugin "
            f"reads version {_VERSION}"
        )
    if "not_describable" in record:
        raise NotDescribableError(f"{record['not_describable']!s:.2000}")
    expected = {"format", "version", "dtype", "criterion", "stepper"}
    if set(record) != expected:
        raise ConfigError(
            f"the stepper description must have the keys {sorted(expected)}, got {sorted(record)}"
        )
    if record["dtype"] not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {record['dtype']!r:.80}")
    criterion = record["criterion"]
    if criterion is not None and (not isinstance(criterion, str) or len(criterion) > 1000):
        raise ConfigError(f"criterion must be null or a name, got {criterion!r:.80}")
    return record


def _node_entry(node: object, where: str) -> Configurable:
    """The entry of a description node ``{"class", "args", "modules"}``, its form checked."""
    if not isinstance(node, dict) or set(node) != {"class", "args", "modules"}:
        raise ConfigError(f"{where} must be an object with keys ['args', 'class', 'modules']")
    name = node["class"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: class must be a class name, got {name!r:.80}")
    entry = BUILTIN.get(name) or _load_entry(name)
    if entry is None:
        raise ConfigError(
            f"{where}: unknown class {name!r}; the classes known are {_known_names()}"
        )
    if not isinstance(node["args"], dict) or not isinstance(node["modules"], dict):
        raise ConfigError(f"{where}: args and modules must be objects")
    for what, given, wanted in (
        ("args", {**entry.added_later, **node["args"]}, entry.arguments),
        ("modules", node["modules"], entry.modules),
    ):
        missing, unknown = sorted(set(wanted) - set(given)), sorted(set(given) - set(wanted))
        if missing or unknown:
            raise ConfigError(
                f"{where} ({name}): {what} must be exactly {sorted(wanted)}; missing {missing}, "
                f"unknown {[str(k)[:40] for k in unknown[:8]]}"
            )
    return entry


def _build(node: object, where: str, depth: int) -> nn.Module:
    if depth > _MAX_DEPTH:
        raise ConfigError(f"{where} is nested deeper than {_MAX_DEPTH} modules")
    entry = _node_entry(node, where)
    args = {**entry.added_later, **node["args"]}
    try:
        entry.check(args)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except Exception as exc:  # a checker tripping over a value of an unexpected type
        raise ConfigError(
            f"{where}: the arguments of {node['class']} are malformed ({type(exc).__name__}: {exc})"
        ) from exc
    modules = {
        name: _build(child, f"{where}.{name}", depth + 1) for name, child in node["modules"].items()
    }
    try:
        module = entry.build(args, modules)
    except Exception as exc:
        raise ConfigError(
            f"{where}: the arguments do not describe a valid {node['class']} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if type(module) is not entry.cls:
        raise ConfigError(f"{where}: the entry of {node['class']} built a {type(module).__name__}")
    return module


def _build_record(record: dict[str, Any], device: str | torch.device | None) -> Stepper:
    # Building draws random initial weights: keep them off the caller's random stream. And
    # neuraloperator's UNO prints its settings on every construction, which would reach the
    # user's stdout at every checkpoint write and rollout (they describe the stepper).
    with (
        torch.random.fork_rng(devices=[]),
        torch.device(device) if device else contextlib.nullcontext(),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        stepper = _build(record["stepper"], "the stepper", 0)
    if not isinstance(stepper, Stepper):
        raise ConfigError(f"the description is of a {type(stepper).__name__}, not a stepper")
    dtype = _DTYPES[record["dtype"]]
    return stepper if dtype == torch.float32 else stepper.to(dtype)


def build_stepper(config: str, *, device: str | torch.device | None = None) -> Stepper:
    """A new stepper (freshly initialised weights) from a :func:`describe_stepper` text.

    Everything is checked before anything is built: the text is JSON of the expected
    layout, names only known classes, and holds arguments of the right types within
    sane sizes; then the constructors check the rest.

    Parameters
    ----------
    config : str
        The description.
    device : str or torch.device or None
        Where to build it (``"meta"``: shapes only, nothing allocated); the default
        device when None.

    Returns
    -------
    Stepper
        The stepper, in the recorded dtype, in training mode. A recorded custom
        training criterion is replaced by the default (mean squared error), with a
        warning naming it (unless ``device`` is ``"meta"``).

    Raises
    ------
    ConfigError
        If the text is not JSON, has another layout or version, names an unknown class,
        holds a value of a wrong type or an absurd size, or its constructor refuses it.
    NotDescribableError
        If the text is a record of a stepper that could not be described (it says why).
    """
    record = _parse(config)
    stepper = _build_record(record, device)
    if record["criterion"] is not None and torch.device(device or "cpu").type != "meta":
        warnings.warn(
            f"the stepper was trained with the criterion {record['criterion']}, which is code "
            "and is not stored; the rebuilt stepper has the default criterion (mean squared "
            "error). Sampling does not use it; to train further, set stepper.criterion",
            stacklevel=2,
        )
    return stepper
