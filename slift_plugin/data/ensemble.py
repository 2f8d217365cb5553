"""Ensemble conventions: trajectory ensembles as xarray DataArrays, and tensors.

A trajectory ensemble is an ``xarray.DataArray`` with dims
``("sample", "time", "channel", *grid)`` (see DESIGN.md). Physics parameters are coords
named ``mu_<name>`` with dims ``("sample",)``, one per parameter; the parameter vector
``mu`` lists them in sorted name order. (A DataArray cannot carry a coord with a ``param``
dim it does not have, so the ``("sample", "param")`` layout of DESIGN.md is spelled out per
parameter here.)

Attributes follow the CF conventions where they apply: the DataArray carries
``long_name`` (and ``units`` when known), its coords ``long_name``/``units``. The ``time``
coord says what it counts: physical time has ``long_name = "time"``
(:data:`TIME_LONG_NAME`), a count of output steps of a stepper without a physical step has
``long_name = "step"`` and ``units = "1"`` (:data:`STEP_TIME_ATTRS`);
:func:`time_counts_steps` reads the mark. Attribute values are strings, numbers or lists of
numbers only (never None, bools or dicts), which is what netCDF and zarr store alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor

__all__ = [
    "LEADING_DIMS",
    "MU_PREFIX",
    "STEP_TIME_ATTRS",
    "TIME_LONG_NAME",
    "check_ensemble",
    "ensemble_params",
    "ensemble_to_tensor",
    "param_names",
    "tensor_to_ensemble",
    "time_counts_steps",
    "uniform_step",
]

LEADING_DIMS = ("sample", "time", "channel")
MU_PREFIX = "mu_"
#: ``long_name`` of a ``time`` coord in physical time (in the unit of the system's step).
TIME_LONG_NAME = "time"
#: Attributes of a ``time`` coord that counts output steps ``t0 + k`` (a stepper without a
#: physical step): CF's dimensionless unit, and a long name that is not "time", so that
#: :func:`time_counts_steps` (and :func:`slift_plugin.evaluate`) never take steps for times.
STEP_TIME_ATTRS = {
    "long_name": "step",
    "units": "1",
    "comment": "output steps counted from t0; the generating stepper has no physical time step",
}


def check_ensemble(da: object, name: str = "ensemble") -> xr.DataArray:
    """Validate the ensemble layout.

    Parameters
    ----------
    da : object
        Candidate ensemble; must be a DataArray with dims ``("sample", "time", "channel",
        *grid)`` and no empty dim.
    name : str
        Name used in error messages.

    Returns
    -------
    xarray.DataArray
        ``da`` itself.

    Raises
    ------
    TypeError
        ``da`` is not a DataArray.
    ValueError
        The leading dims are not ``("sample", "time", "channel")`` or a dim has size 0.
    """
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"{name} must be an xarray.DataArray, got {type(da).__name__}")
    if tuple(da.dims[:3]) != LEADING_DIMS:
        raise ValueError(
            f"{name} must have dims ('sample', 'time', 'channel', *grid), got {da.dims}"
        )
    if 0 in da.shape:
        raise ValueError(f"{name} is empty: shape {dict(zip(da.dims, da.shape, strict=True))}")
    return da


def param_names(da: xr.DataArray) -> list[str]:
    """Names of the physics parameters of an ensemble.

    Parameters
    ----------
    da : xarray.DataArray
        Ensemble (or population) whose ``mu_<name>`` coords hold the parameters.

    Returns
    -------
    list of str
        The ``<name>`` parts, sorted: the order of the columns of ``mu``.
    """
    return sorted(k[len(MU_PREFIX) :] for k in da.coords if str(k).startswith(MU_PREFIX))


def ensemble_params(da: xr.DataArray, name: str = "ensemble") -> Tensor | None:
    """Stack the ``mu_<name>`` coords of an ensemble into a parameter matrix.

    Parameters
    ----------
    da : xarray.DataArray
        Ensemble (or population) with a ``"sample"`` dim.
    name : str
        Name used in error messages.

    Returns
    -------
    torch.Tensor or None
        ``(sample, n_params)`` float32, columns in :func:`param_names` order; None when
        ``da`` has no ``mu_<name>`` coord.

    Raises
    ------
    ValueError
        A ``mu_<name>`` coord does not have dims ``("sample",)``.
    """
    names = param_names(da)
    if not names:
        return None
    columns = []
    for p in names:
        c = da.coords[MU_PREFIX + p]
        if c.dims != ("sample",):
            raise ValueError(f"{name}.{MU_PREFIX}{p} must have dims ('sample',), got {c.dims}")
        columns.append(np.asarray(c.values, dtype=np.float32))
    return torch.as_tensor(np.stack(columns, axis=1))


def ensemble_to_tensor(da: xr.DataArray, name: str = "ensemble") -> tuple[Tensor, Tensor | None]:
    """Values and parameters of an ensemble as float32 tensors.

    Parameters
    ----------
    da : xarray.DataArray
        Ensemble with dims ``("sample", "time", "channel", *grid)``.
    name : str
        Name used in error messages.

    Returns
    -------
    states : torch.Tensor
        ``(sample, time, channel, *grid)`` float32.
    mu : torch.Tensor or None
        ``(sample, n_params)`` float32, see :func:`ensemble_params`.

    Raises
    ------
    TypeError, ValueError
        ``da`` breaks the layout (see :func:`check_ensemble`) or a parameter coord is not
        on ``"sample"``.
    """
    check_ensemble(da, name)
    states = torch.as_tensor(np.asarray(da.values, dtype=np.float32))
    return states, ensemble_params(da, name)


def uniform_step(times: Sequence[float] | np.ndarray, name: str = "time") -> float:
    """The constant spacing of a time axis.

    Parameters
    ----------
    times : sequence of float or numpy.ndarray
        ``(n_times,)`` with ``n_times >= 2``.
    name : str
        Name used in error messages.

    Returns
    -------
    float
        ``times[1] - times[0]``.

    Raises
    ------
    ValueError
        ``times`` is not 1-D with at least two values, not increasing, or its steps differ
        (beyond ``rtol=1e-5``, ``atol=1e-9``).
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size < 2:
        raise ValueError(f"{name} needs at least two values, got {t.size}")
    d = np.diff(t)
    if (d <= 0).any() or not np.allclose(d, d[0], rtol=1e-5, atol=1e-9):
        raise ValueError(f"{name} must be increasing with a constant step, got steps {d}")
    return float(d[0])


def time_counts_steps(da: xr.DataArray) -> bool | None:
    """Whether the ``time`` coord of an ensemble counts output steps or physical time.

    Parameters
    ----------
    da : xarray.DataArray
        An ensemble (or anything with a ``"time"`` dim).

    Returns
    -------
    bool or None
        True when the ``time`` coord is marked as a step count (``long_name`` of
        :data:`STEP_TIME_ATTRS`), False when marked as physical time (``long_name``
        :data:`TIME_LONG_NAME`), None when there is no ``time`` coord or no such mark
        (e.g. times given by hand): then nothing is known.
    """
    if "time" not in da.coords:
        return None
    long_name = da.coords["time"].attrs.get("long_name")
    if long_name == STEP_TIME_ATTRS["long_name"]:
        return True
    if long_name == TIME_LONG_NAME:
        return False
    return None


def tensor_to_ensemble(
    states: Tensor | np.ndarray,
    times: Sequence[float] | np.ndarray,
    *,
    coords: Mapping[str, object] | None = None,
    mu: Tensor | np.ndarray | None = None,
    param_names: Sequence[str] | None = None,
    attrs: Mapping[str, object] | None = None,
    name: str = "state",
    time_attrs: Mapping[str, object] | None = None,
) -> xr.DataArray:
    """Wrap values as an ensemble DataArray.

    Parameters
    ----------
    states : torch.Tensor or numpy.ndarray
        ``(sample, time, channel, *grid)``; the values are used as given (no copy, no cast).
    times : sequence of float or numpy.ndarray
        ``(time,)``, stored as a float64 ``time`` coord.
    coords : mapping, optional
        Extra coords; those named after a dim other than ``"sample"``/``"time"`` are kept
        (with their attrs when given as DataArrays or ``(dims, values, attrs)`` tuples).
        When it names exactly as many grid dims as ``states`` has, they name the grid dims
        (in order); otherwise the grid dims are ``"x", "x1", "x2", ...``.
    mu : torch.Tensor or numpy.ndarray, optional
        ``(sample, n_params)`` physics parameters, stored as ``mu_<name>`` coords (with
        ``long_name = "physics parameter <name>"``).
    param_names : sequence of str, optional
        The ``n_params`` names of the columns of ``mu``, sorted; default ``p0, p1, ...``.
    attrs : mapping, optional
        Attributes of the DataArray.
    name : str
        Name of the DataArray.
    time_attrs : mapping, optional
        Attributes of the ``time`` coord, e.g. ``{"long_name": "time", "units": "1"}`` or
        :data:`STEP_TIME_ATTRS`; default none (what the times count is then unknown).

    Returns
    -------
    xarray.DataArray
        Dims ``("sample", "time", "channel", *grid)``.

    Raises
    ------
    ValueError
        ``param_names`` does not hold ``n_params`` names in sorted order.
    """
    values = states.numpy() if isinstance(states, Tensor) else np.asarray(states)
    grid_dims = tuple(f"x{i}" if i else "x" for i in range(values.ndim - 3))
    if coords is not None:
        named = [d for d in coords if d not in LEADING_DIMS and not d.startswith(MU_PREFIX)]
        if len(named) == len(grid_dims):
            grid_dims = tuple(named)
    dims = (*LEADING_DIMS, *grid_dims)
    all_coords: dict[str, object] = {
        "time": ("time", np.asarray(times, dtype=np.float64), dict(time_attrs or {}))
    }
    for key, value in (coords or {}).items():
        if key in dims and key not in ("sample", "time"):
            all_coords[key] = value
    if mu is not None:
        m = mu.numpy() if isinstance(mu, Tensor) else np.asarray(mu)
        names = (
            list(param_names) if param_names is not None else [f"p{i}" for i in range(m.shape[1])]
        )
        if len(names) != m.shape[1] or names != sorted(names):
            raise ValueError(
                f"param_names must be {m.shape[1]} names in sorted order (the order of mu), "
                f"got {names}"
            )
        for i, p in enumerate(names):
            all_coords[MU_PREFIX + p] = ("sample", m[:, i], {"long_name": f"physics parameter {p}"})
    return xr.DataArray(values, dims=dims, coords=all_coords, attrs=dict(attrs or {}), name=name)
