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
those of this module's table (the steppers of :mod:`slift_plugin.methods` and the
backbones of :mod:`slift_plugin.backbones`) and those that installed packages declare
under the entry point group :data:`ENTRY_POINT_GROUP`, each pointing at a
:class:`Configurable`. This is how the neuraloperator backbones are found without core
importing the adapter: ``pyproject.toml`` declares them, and
:mod:`slift_plugin.adapters.neuralop_config` is loaded only when a description names one.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import torch
from torch import nn

from .backbones import MLP, PotentialMLP
from .methods import DICE, EnergyScoreLifting, FlowMatching, MeanRegression, StochasticLifting
from .methods.dice import LAPLACIANS
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
ACTIVATIONS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (nn.SiLU, nn.ReLU, nn.GELU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Mish)
}
# Generous bounds on what a description may ask for: beyond them it is broken or hostile,
# and building even on the meta device would take unbounded time (a layer per depth).
_SIZES = {
    "channels": (1, 1 << 20),
    "grid": (1, 1 << 24),
    "features": (1, 1 << 20),
    "hidden": (1, 65536),
    "depth": (1, 256),
    "label_dim": (0, 65536),
    "n_params": (0, 4096),
    "history": (1, 1024),
    "n_euler": (1, 1 << 20),
    "n_substeps": (1, 1 << 20),
    "n_probes": (1, 4096),
    "n_members": (2, 4096),
    "seed": (-(1 << 63), (1 << 64) - 1),
}


class ConfigError(ValueError):
    """A stepper description that is not JSON, names an unknown class, or holds wrong values."""


class NotDescribableError(ValueError):
    """A stepper (or a module in it) whose construction cannot be recorded as data."""


@dataclass(frozen=True)
class Configurable:
    """How one module class is described as data and built again from it.

    This module's table holds one for each built-in stepper and backbone; a package makes
    its own class describable with an entry point of the group :data:`ENTRY_POINT_GROUP`
    named after the class and pointing at one of these.

    Attributes
    ----------
    cls : type
        The class, matched exactly: a subclass is not described by its base's entry.
    arguments : tuple of str
        Names of the plain arguments of a description, every one of them required.
    modules : tuple of str
        Names of the module arguments; each is the instance's attribute of that name,
        described recursively.
    describe : callable
        ``describe(module) -> dict``: the plain arguments (JSON values) of ``module``;
        raises :class:`NotDescribableError` naming what cannot be recorded.
    check : callable
        ``check(args)``: raises :class:`ConfigError` naming an argument of a wrong type
        or an absurd size, before anything is built.
    build : callable
        ``build(args, modules) -> module``: a new instance from checked arguments and
        the built module arguments.
    """

    cls: type[nn.Module]
    arguments: tuple[str, ...]
    modules: tuple[str, ...]
    describe: Callable[[nn.Module], dict[str, Any]]
    check: Callable[[Mapping[str, Any]], None]
    build: Callable[[dict[str, Any], dict[str, nn.Module]], nn.Module]


# -- checks of plain arguments -------------------------------------------------------------
def _int(kind: str) -> Callable[[object], str | None]:
    low, high = _SIZES[kind]

    def check(value: object) -> str | None:
        ok = type(value) is int and low <= value <= high
        return None if ok else f"an integer in [{low}, {high}]"

    return check


def _number(low: float = -math.inf, high: float = math.inf, *, null: bool = False):
    def check(value: object) -> str | None:
        if value is None and null:
            return None
        ok = type(value) in (int, float) and math.isfinite(value) and low <= value <= high
        return None if ok else f"a finite number in [{low}, {high}]" + (" or null" if null else "")

    return check


def _boolean(value: object) -> str | None:
    return None if type(value) is bool else "true or false"


def _one_of(options: tuple[str, ...] | Mapping[str, Any]) -> Callable[[object], str | None]:
    return lambda v: None if isinstance(v, str) and v in options else f"one of {sorted(options)}"


def _state_shape(value: object) -> str | None:
    expected = "a list [C, *grid] of 1 to 7 positive sizes (grid sizes may be null)"
    if type(value) is not list or not 1 <= len(value) <= 7 or _int("channels")(value[0]):
        return expected
    grid_ok = all(v is None or _int("grid")(v) is None for v in value[1:])
    return None if grid_ok else expected


def _periods(value: object) -> str | None:
    expected = "null or a list of positive periods or nulls, one per coordinate"
    if value is None:
        return None
    if type(value) is not list or len(value) > _SIZES["features"][1]:
        return expected
    positive = _number(0.0)
    ok = all(v is None or (positive(v) is None and v > 0) for v in value)
    return None if ok else expected


def argument_checker(
    schema: Mapping[str, Callable[[object], str | None]], what: str
) -> Callable[[Mapping[str, Any]], None]:
    """A ``check(args)`` for a :class:`Configurable`, from one check per argument.

    Parameters
    ----------
    schema : Mapping
        Argument name -> ``check(value)``, which returns None when ``value`` is fine and
        otherwise a phrase saying what was expected (``"an integer in [1, 64]"``).
    what : str
        The class name, for the messages.

    Returns
    -------
    callable
        ``check(args)``, raising :class:`ConfigError` ``"<what>: <name> must be
        <expected>, got <value>"`` for the first argument that fails.
    """

    def check(args: Mapping[str, Any]) -> None:
        for name, check_value in schema.items():
            expected = check_value(args[name])
            if expected is not None:
                raise ConfigError(f"{what}: {name} must be {expected}, got {args[name]!r:.80}")

    return check


# -- the built-in table --------------------------------------------------------------------
def _dt_out(dt: float) -> float | None:
    return None if math.isnan(dt) else dt


def _dt_in(dt: float | None) -> float:
    return math.nan if dt is None else dt


_STEPPER = {
    "state_shape": _state_shape,
    "history": _int("history"),
    "n_params": _int("n_params"),
    "dt": _number(0.0, null=True),
}
_LIFTING = {**_STEPPER, "residual": _boolean}


def _stepper_args(stepper: Stepper) -> dict[str, Any]:
    return {
        "state_shape": list(stepper.state_shape),
        "history": stepper.history,
        "n_params": stepper.n_params,
        "dt": _dt_out(stepper.dt),
    }


def _lifting(cls: type[StochasticLifting]) -> Configurable:
    return _entry(
        cls,
        _LIFTING,
        ("backbone",),
        lambda s: {**_stepper_args(s), "residual": s.residual},
        _with_module(cls, "backbone"),
    )


_ENERGY = {**_LIFTING, "n_members": _int("n_members"), "seed": _int("seed")}
_FLOW = {**_STEPPER, "n_euler": _int("n_euler"), "seed": _int("seed")}
_DICE = {
    "state_shape": _state_shape,
    "n_params": _int("n_params"),
    "dt": _number(0.0, null=True),
    "sigma": _number(0.0),
    "laplacian": _one_of(LAPLACIANS),
    "n_probes": _int("n_probes"),
    "n_substeps": _int("n_substeps"),
    "kinetic_on_neighbours": _number(0.0, 1.0),
    "alpha": _number(0.0),
    "potential_scale": _number(1e-30),
}
_MLP = {
    "in_features": _int("features"),
    "out_features": _int("features"),
    "label_dim": _int("label_dim"),
    "n_cond": _int("n_params"),
    "hidden": _int("hidden"),
    "depth": _int("depth"),
    "activation": _one_of(ACTIVATIONS),
}
_POTENTIAL = {
    "dim": _int("features"),
    "n_params": _int("n_params"),
    "hidden": _int("hidden"),
    "depth": _int("depth"),
    "periods": _periods,
}


def _hidden_layers(net: nn.Sequential) -> tuple[int, int, list[nn.Module]]:
    """``(hidden, depth, activations)`` of ``[Linear, act] * depth + [Linear]``."""
    layers = list(net)
    linears, activations = layers[0::2], layers[1::2]
    if len(layers) % 2 == 0 or not all(type(m) is nn.Linear for m in linears):
        raise NotDescribableError(
            "its net is not the [Linear, activation] * depth + [Linear] stack it builds"
        )
    return linears[0].out_features, len(activations), activations


def _activation_name(activations: list[nn.Module]) -> str:
    kinds = {(type(a), a.extra_repr()) for a in activations}
    if len(kinds) != 1:
        raise NotDescribableError(f"its layers use different activations {sorted(map(str, kinds))}")
    ((cls, extra),) = kinds
    if ACTIVATIONS.get(cls.__name__) is not cls or extra != cls().extra_repr():
        raise NotDescribableError(
            f"its activation {cls.__name__}({extra}) is not one of the activations recorded by "
            f"name, {sorted(ACTIVATIONS)} with their default arguments"
        )
    return cls.__name__


def _describe_mlp(mlp: MLP) -> dict[str, Any]:
    hidden, depth, activations = _hidden_layers(mlp.net)
    return {
        "in_features": mlp.in_features,
        "out_features": mlp.out_features,
        "label_dim": mlp.label_dim,
        "n_cond": mlp.n_cond,
        "hidden": hidden,
        "depth": depth,
        "activation": _activation_name(activations),
    }


def _describe_potential(potential: PotentialMLP) -> dict[str, Any]:
    hidden, depth, activations = _hidden_layers(potential.net)
    if _activation_name(activations) != "SiLU":  # PotentialMLP always builds SiLU
        raise NotDescribableError("its activations were replaced after it was built")
    return {
        "dim": potential.dim,
        "n_params": potential.n_cond,
        "hidden": hidden,
        "depth": depth,
        "periods": list(potential.periods),
    }


def _build_mlp(args: dict[str, Any], modules: dict[str, nn.Module]) -> nn.Module:
    activation = ACTIVATIONS[args.pop("activation")]
    return MLP(args.pop("in_features"), args.pop("out_features"), **args, activation=activation)


def _build_potential(args: dict[str, Any], modules: dict[str, nn.Module]) -> nn.Module:
    return PotentialMLP(args.pop("dim"), **args)


def _with_module(cls: type[Stepper], name: str):
    """``build`` of a stepper whose first argument is its module ``name``."""

    def build(args: dict[str, Any], modules: dict[str, nn.Module]) -> nn.Module:
        return cls(modules[name], **{**args, "dt": _dt_in(args["dt"])})

    return build


def _describe_energy(stepper: EnergyScoreLifting) -> dict[str, Any]:
    return {
        **_stepper_args(stepper),
        "residual": stepper.residual,
        "n_members": stepper.n_members,
        "seed": stepper.seed,
    }


def _describe_flow(stepper: FlowMatching) -> dict[str, Any]:
    return {**_stepper_args(stepper), "n_euler": stepper.n_euler, "seed": stepper.seed}


def _describe_dice(stepper: DICE) -> dict[str, Any]:
    return {
        "state_shape": list(stepper.state_shape),
        "n_params": stepper.n_params,
        "dt": _dt_out(stepper.dt),
        "sigma": stepper.sigma,
        "laplacian": stepper.laplacian,
        "n_probes": stepper.n_probes,
        "n_substeps": stepper.n_substeps,
        "kinetic_on_neighbours": stepper.kinetic_on_neighbours,
        "alpha": stepper.alpha,
        "potential_scale": stepper.potential_scale,
    }


def _entry(cls, schema, modules, describe, build) -> Configurable:
    return Configurable(
        cls, tuple(schema), modules, describe, argument_checker(schema, cls.__name__), build
    )


_BUILTIN = {
    entry.cls.__name__: entry
    for entry in (
        _lifting(StochasticLifting),
        _lifting(MeanRegression),
        _entry(
            EnergyScoreLifting,
            _ENERGY,
            ("backbone",),
            _describe_energy,
            _with_module(EnergyScoreLifting, "backbone"),
        ),
        _entry(
            FlowMatching,
            _FLOW,
            ("velocity",),
            _describe_flow,
            _with_module(FlowMatching, "velocity"),
        ),
        _entry(DICE, _DICE, ("potential",), _describe_dice, _with_module(DICE, "potential")),
        _entry(MLP, _MLP, (), _describe_mlp, _build_mlp),
        _entry(PotentialMLP, _POTENTIAL, (), _describe_potential, _build_potential),
    )
}


# -- finding the entry of a class -----------------------------------------------------------
@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _known_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_entry_points()))


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
    entry = _BUILTIN.get(cls.__name__)
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
    entry = _BUILTIN.get(name) or _load_entry(name)
    if entry is None:
        raise ConfigError(
            f"{where}: unknown class {name!r}; the classes known are {_known_names()}"
        )
    if not isinstance(node["args"], dict) or not isinstance(node["modules"], dict):
        raise ConfigError(f"{where}: args and modules must be objects")
    for what, given, wanted in (
        ("args", node["args"], entry.arguments),
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
    try:
        entry.check(node["args"])
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
        module = entry.build(dict(node["args"]), modules)
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
