"""Ensemble conventions: trajectory ensembles as xarray DataArrays, and tensors.

A trajectory ensemble is an ``xarray.DataArray`` with dims
``("sample", "time", "channel", *grid)`` (see DESIGN.md). Physics parameters are coords
named ``mu_<name>`` with dims ``("sample",)``, one per parameter; the parameter vector
``mu`` lists them in sorted name order. (A DataArray cannot carry a coord with a ``param``
dim it does not have, so the ``("sample", "param")`` layout of DESIGN.md is spelled out per
parameter here.)
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
    "check_ensemble",
    "ensemble_params",
    "ensemble_to_tensor",
    "param_names",
    "tensor_to_ensemble",
    "uniform_step",
]

LEADING_DIMS = ("sample", "time", "channel")
MU_PREFIX = "mu_"


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


def tensor_to_ensemble(
    states: Tensor | np.ndarray,
    times: Sequence[float] | np.ndarray,
    *,
    coords: Mapping[str, object] | None = None,
    mu: Tensor | np.ndarray | None = None,
    param_names: Sequence[str] | None = None,
    attrs: Mapping[str, object] | None = None,
    name: str = "state",
) -> xr.DataArray:
    """Wrap values as an ensemble DataArray.

    Parameters
    ----------
    states : torch.Tensor or numpy.ndarray
        ``(sample, time, channel, *grid)``; the values are used as given (no copy, no cast).
    times : sequence of float or numpy.ndarray
        ``(time,)``, stored as a float64 ``time`` coord.
    coords : mapping, optional
        Extra coords; those named after a dim other than ``"sample"``/``"time"`` are kept.
        When it names exactly as many grid dims as ``states`` has, they name the grid dims
        (in order); otherwise the grid dims are ``"x", "x1", "x2", ...``.
    mu : torch.Tensor or numpy.ndarray, optional
        ``(sample, n_params)`` physics parameters, stored as ``mu_<name>`` coords.
    param_names : sequence of str, optional
        The ``n_params`` names of the columns of ``mu``, sorted; default ``p0, p1, ...``.
    attrs : mapping, optional
        Attributes of the DataArray.
    name : str
        Name of the DataArray.

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
    all_coords: dict[str, object] = {"time": np.asarray(times, dtype=np.float64)}
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
            all_coords[MU_PREFIX + p] = ("sample", m[:, i])
    return xr.DataArray(values, dims=dims, coords=all_coords, attrs=dict(attrs or {}), name=name)
