"""neuraloperator backbones described as data, for checkpoints that rebuild their stepper.

Three :class:`slift_plugin.config.Configurable` entries: :data:`LIFTED_OPERATOR` (a
:class:`~slift_plugin.adapters.neuralop.LiftedOperator` as :func:`lifted_operator` builds
it, any operator and label injection), :data:`OPERATOR_POTENTIAL` (an
:class:`~slift_plugin.adapters.neuralop.OperatorPotential` from
:func:`operator_potential`) and :data:`SLFNO_CONFIG` (an
:class:`~slift_plugin.adapters.neuralop.SLFNO`). ``pyproject.toml`` declares them as
entry points of the group ``slift_plugin.configurable``: core finds them by class name
and imports this module only when a description names one of them, so
``load_stepper(path)`` rebuilds an FNO stepper in a process that never imported the
adapter, while core itself never imports neuraloperator.

An operator is recorded by its kind (``"fno"``, ``"tfno"``, ``"uno"``, its exact class)
and the constructor arguments that differ from neuraloperator's defaults; arguments that
are not plain data (a function as ``non_linearity``) make it not describable. On
loading, sizes are bounded as for :meth:`SLFNO.from_checkpoint`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neuralop.models import FNO, TFNO, UNO
from torch import nn

from .._configurable import one_of
from ..checkpoint import CheckpointError
from ..config import ConfigError, Configurable, NotDescribableError, argument_checker
from ._neuralop_arguments import (
    INJECTIONS,
    MAX_GRID_DIMS,
    MAX_MODES,
    OPERATORS,
    SIZE_LIMITS,
    checkpoint_arguments,
    constructor_arguments,
    is_plain_data,
)
from .neuralop import SLFNO, LiftedOperator, OperatorPotential, lifted_operator, operator_potential

__all__ = ["LIFTED_OPERATOR", "OPERATOR_POTENTIAL", "SLFNO_CONFIG"]

_KINDS = {FNO: "fno", TFNO: "tfno", UNO: "uno"}
# Any integer and any list in an operator's arguments: beyond these a description is
# broken or hostile (a list per layer, a width or a mode count).
_MAX_INT = 65536
_MAX_LIST = 256


def _operator_kind(operator: nn.Module) -> str:
    kind = _KINDS.get(type(operator))
    if kind is None:
        raise NotDescribableError(
            f"its operator is a {type(operator).__qualname__}, not an FNO, TFNO or UNO of "
            "neuraloperator (a subclass or another network is not recorded)"
        )
    return kind


def _as_json(value: Any) -> Any:
    """Tuples as lists, recursively (what JSON keeps of them)."""
    if isinstance(value, tuple | list):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):  # JSON would turn them into strings
            raise NotDescribableError(f"a dict with keys other than strings, {value!r:.80}")
        return {k: _as_json(v) for k, v in value.items()}
    return value


def _skips_out(kwargs: dict[str, Any]) -> dict[str, Any]:
    """UNO's ``horizontal_skips_map`` with string keys, as JSON keeps them."""
    skips = kwargs.get("horizontal_skips_map")
    if isinstance(skips, dict):
        if not all(type(k) is int for k in skips):
            raise NotDescribableError(f"its horizontal_skips_map {skips!r:.80} has non-int keys")
        kwargs = {**kwargs, "horizontal_skips_map": {str(k): v for k, v in skips.items()}}
    return kwargs


def _operator_kwargs(operator: nn.Module) -> dict[str, Any]:
    """The operator's non-default constructor arguments, without its channel counts."""
    kwargs = constructor_arguments(operator)
    for name in ("in_channels", "out_channels"):
        kwargs.pop(name, None)
    code = sorted(k for k, v in kwargs.items() if not is_plain_data(v))
    if code:
        raise NotDescribableError(
            f"its operator's arguments {code} are not plain data (functions or objects)"
        )
    return _as_json(_skips_out(kwargs))


def _bounded(value: object) -> bool:
    """Integers within +-_MAX_INT, lists of at most _MAX_LIST items, finite floats."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return abs(value) <= _MAX_INT
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return len(value) <= _MAX_LIST and all(map(_bounded, value))
    if isinstance(value, dict):
        return len(value) <= _MAX_LIST and all(map(_bounded, value.values()))
    return False


def _kwargs_problem(value: object) -> str | None:
    """What is wrong with a description's ``operator_kwargs``, or None."""
    if not isinstance(value, dict) or not is_plain_data(value):
        return "an object of plain constructor arguments"
    if {"in_channels", "out_channels"} & value.keys():
        return "free of in_channels and out_channels (they follow from the other arguments)"
    for key in SIZE_LIMITS.keys() & value.keys():
        low, high = SIZE_LIMITS[key]
        if type(value[key]) is not int or not low <= value[key] <= high:
            return f"such that {key} is an integer in [{low}, {high}]"
    modes = value.get("n_modes", [1])
    if not isinstance(modes, list) or not 1 <= len(modes) <= MAX_GRID_DIMS:
        return f"such that n_modes is a list of 1 to {MAX_GRID_DIMS} mode counts"
    if not all(type(m) is int and 1 <= m <= MAX_MODES for m in modes):
        return f"such that n_modes holds integers in [1, {MAX_MODES}]"
    if not _bounded(value):
        return f"made of integers within +-{_MAX_INT}, lists of at most {_MAX_LIST} items"
    return None


def _from_json(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(kwargs)
    if "n_modes" in kwargs:  # neuraloperator records the tuple it was given
        kwargs["n_modes"] = tuple(kwargs["n_modes"])
    skips = kwargs.get("horizontal_skips_map")
    if isinstance(skips, dict):  # UNO's layer -> layer map, keys stringified by JSON
        try:
            kwargs["horizontal_skips_map"] = {int(k): v for k, v in skips.items()}
        except ValueError as exc:
            raise ConfigError(f"horizontal_skips_map must map layer numbers, got {skips}") from exc
    return kwargs


def _size(key: str):
    low, high = SIZE_LIMITS[key]
    return lambda v: (
        None if type(v) is int and low <= v <= high else f"an integer in [{low}, {high}]"
    )


# -- LiftedOperator --------------------------------------------------------------------------
_LIFTED = {
    "operator": one_of(OPERATORS),
    "window_channels": _size("in_channels"),
    "out_channels": _size("in_channels"),
    "label_dim": _size("label_dim"),
    "injection": one_of(INJECTIONS),
    "n_cond": _size("n_params"),
    "embedding_hidden": _size("embedding_hidden"),
    "operator_kwargs": _kwargs_problem,
}


def _describe_lifted(backbone: LiftedOperator) -> dict[str, Any]:
    embedding = getattr(backbone, "label_embedding", None)
    return {
        "operator": _operator_kind(backbone.operator),
        "window_channels": backbone.window_channels,
        "out_channels": backbone.operator.out_channels,
        "label_dim": backbone.label_dim,
        "injection": backbone.injection,
        "n_cond": backbone.n_cond,
        "embedding_hidden": 64 if embedding is None else embedding[0].out_features,
        "operator_kwargs": _operator_kwargs(backbone.operator),
    }


def _build_lifted(args: dict[str, Any], modules: dict[str, nn.Module]) -> nn.Module:
    # history=1 with the whole window as "state" builds the same network: lifted_operator
    # only uses their product, and LiftedOperator records just the window.
    return lifted_operator(
        args["operator"],
        state_channels=args["window_channels"],
        history=1,
        label_dim=args["label_dim"],
        injection=args["injection"],
        n_cond=args["n_cond"],
        out_channels=args["out_channels"],
        embedding_hidden=args["embedding_hidden"],
        **_from_json(args["operator_kwargs"]),
    )


LIFTED_OPERATOR = Configurable(
    LiftedOperator,
    tuple(_LIFTED),
    (),
    _describe_lifted,
    argument_checker(_LIFTED, "LiftedOperator"),
    _build_lifted,
)

# -- OperatorPotential -----------------------------------------------------------------------
_POTENTIAL = {
    "operator": one_of(OPERATORS),
    "state_channels": _size("in_channels"),
    "n_params": _size("n_params"),
    "operator_kwargs": _kwargs_problem,
}


def _describe_potential(potential: OperatorPotential) -> dict[str, Any]:
    return {
        "operator": _operator_kind(potential.operator),
        "state_channels": potential.state_channels,
        "n_params": potential.n_cond,
        "operator_kwargs": _operator_kwargs(potential.operator),
    }


def _build_potential(args: dict[str, Any], modules: dict[str, nn.Module]) -> nn.Module:
    return operator_potential(
        args["operator"],
        state_channels=args["state_channels"],
        n_params=args["n_params"],
        **_from_json(args["operator_kwargs"]),
    )


OPERATOR_POTENTIAL = Configurable(
    OperatorPotential,
    tuple(_POTENTIAL),
    (),
    _describe_potential,
    argument_checker(_POTENTIAL, "OperatorPotential"),
    _build_potential,
)

# -- SLFNO -----------------------------------------------------------------------------------
_SLFNO_PARAMETERS = inspect.signature(SLFNO.__init__).parameters
_SLFNO_ARGUMENTS = tuple(list(_SLFNO_PARAMETERS)[1:])  # without self
_RECORDED = Path("(the recorded SLFNO arguments)")  # named in from_checkpoint's messages


def _describe_slfno(model: SLFNO) -> dict[str, Any]:
    try:
        recorded = checkpoint_arguments(dict(model._init_kwargs), _RECORDED, SLFNO)
    except CheckpointError as exc:
        raise NotDescribableError(str(exc)) from exc
    defaults = {k: p.default for k, p in _SLFNO_PARAMETERS.items() if k in _SLFNO_ARGUMENTS}
    args = {**defaults, **recorded}
    # What the stepper holds now wins over what it was built with.
    args |= {
        "history": model.history,
        "n_params": model.n_params,
        "residual": model.residual,
        "dt": None if math.isnan(model.dt) else model.dt,
    }
    kwargs = args["operator_kwargs"]
    if kwargs is not None:
        if not is_plain_data(kwargs):
            raise NotDescribableError("its operator_kwargs are not plain data")
        args["operator_kwargs"] = _skips_out(kwargs)
    return _as_json(args)


def _check_slfno(args: Mapping[str, Any]) -> None:
    if args["dt"] is not None and (type(args["dt"]) not in (int, float) or args["dt"] <= 0):
        raise ConfigError(f"SLFNO: dt must be a number > 0 or null, got {args['dt']!r:.80}")
    try:
        checkpoint_arguments({**args, "dt": math.nan}, _RECORDED, SLFNO)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from exc
    problem = args["operator_kwargs"] and _kwargs_problem(args["operator_kwargs"])
    if problem:
        raise ConfigError(f"SLFNO: operator_kwargs must be {problem}")


def _build_slfno(args: dict[str, Any], modules: dict[str, nn.Module]) -> nn.Module:
    dt = math.nan if args["dt"] is None else args["dt"]
    kwargs = args["operator_kwargs"]
    return SLFNO(
        **{**args, "dt": dt, "operator_kwargs": None if kwargs is None else _from_json(kwargs)}
    )


SLFNO_CONFIG = Configurable(
    SLFNO, _SLFNO_ARGUMENTS, (), _describe_slfno, _check_slfno, _build_slfno
)
