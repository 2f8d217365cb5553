"""The built-in table of :mod:`slift_plugin.config`: how each built-in class is described.

One :class:`~slift_plugin.config.Configurable` per stepper of :mod:`slift_plugin.methods`
and per backbone of :mod:`slift_plugin.backbones`, in :data:`BUILTIN` by class name, with
the checks of their plain arguments (types and the bounds beyond which a description is
broken or hostile) and the activations an MLP records by name (:data:`ACTIVATIONS`). A
new method adds its entry here. It is kept apart from the mechanism that describes and
builds (:mod:`slift_plugin.config`) because the two change for different reasons: this
table with each stepper or backbone and its constructor, the mechanism with the format.
Adapters register their classes through entry points instead (see
:mod:`slift_plugin.config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ._configurable import Configurable, NotDescribableError, argument_checker, one_of
from .backbones import MLP, PotentialMLP
from .methods import DICE, EnergyScoreLifting, FlowMatching, MeanRegression, StochasticLifting
from .methods.dice import LAPLACIANS, SCHEMES
from .stepper import Stepper

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
    "laplacian": one_of(LAPLACIANS),
    "n_probes": _int("n_probes"),
    "n_substeps": _int("n_substeps"),
    "scheme": one_of(SCHEMES),
    "kinetic_on_neighbours": _number(0.0, 1.0),
    "alpha": _number(0.0),
    "potential_scale": _number(1e-30),
}
# DICE checkpoints of 2026-12-02 predate these: their stepper had the scale 1 and Euler
_DICE_ADDED_LATER = {"potential_scale": 1.0, "scheme": "euler"}
_MLP = {
    "in_features": _int("features"),
    "out_features": _int("features"),
    "label_dim": _int("label_dim"),
    "n_cond": _int("n_params"),
    "hidden": _int("hidden"),
    "depth": _int("depth"),
    "activation": one_of(ACTIVATIONS),
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
        "scheme": stepper.scheme,
        "kinetic_on_neighbours": stepper.kinetic_on_neighbours,
        "alpha": stepper.alpha,
        "potential_scale": stepper.potential_scale,
    }


def _entry(cls, schema, modules, describe, build, added_later=None) -> Configurable:
    return Configurable(
        cls,
        tuple(schema),
        modules,
        describe,
        argument_checker(schema, cls.__name__),
        build,
        added_later or {},
    )


BUILTIN = {
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
        _entry(
            DICE,
            _DICE,
            ("potential",),
            _describe_dice,
            _with_module(DICE, "potential"),
            added_later=_DICE_ADDED_LATER,
        ),
        _entry(MLP, _MLP, (), _describe_mlp, _build_mlp),
        _entry(PotentialMLP, _POTENTIAL, (), _describe_potential, _build_potential),
    )
}
