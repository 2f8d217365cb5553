"""Small helpers shared by the reference systems: validation and the output DataArray."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from .. import __version__
from ..data import MU_PREFIX, tensor_to_ensemble

#: Every reference system is nondimensional (normalised units): CF's unit "1" is the truth
#: for its states, times, grids and parameters.
NONDIMENSIONAL = "1"


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    return int(seed)


def check_float(name: str, value: object, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return value


def check_substeps(dt: float, dt_internal: float) -> int:
    """Number of internal steps per output step; ``dt / dt_internal`` must be an integer."""
    dt = check_float("dt", dt, positive=True)
    dt_internal = check_float("dt_internal", dt_internal, positive=True)
    if dt_internal > dt * (1 + 1e-9):
        raise ValueError(f"dt_internal must be <= dt; got dt_internal={dt_internal}, dt={dt}")
    ratio = dt / dt_internal
    n_sub = max(1, round(ratio))
    if abs(ratio - n_sub) > 1e-6 * ratio:
        raise ValueError(
            f"dt / dt_internal must be an integer; got dt={dt}, dt_internal={dt_internal} "
            f"(ratio {ratio:.6g})"
        )
    return n_sub


def output_times(t0: float, dt: float, n_steps: int) -> np.ndarray:
    """Output times ``t0 + k * dt`` for ``k = 0..n_steps`` (float64)."""
    return t0 + dt * np.arange(n_steps + 1, dtype=np.float64)


def check_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must name a torch device such as 'cpu' or 'cuda'; got {device!r}"
        ) from err


def state_array(
    values: torch.Tensor | np.ndarray,
    times: np.ndarray,
    channels: Sequence[str],
    *,
    attrs: Mapping[str, object],
    grid: Mapping[str, np.ndarray] | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    name: str = "state",
    long_name: str = "state",
    channel_long_name: str = "state component",
) -> xr.DataArray:
    """Build the ensemble DataArray with dims ``("sample", "time", "channel", *grid)``.

    ``values`` must already be laid out in that order; it is stored as float32.
    Per-sample physics parameters ``params = {name: array (sample,)}`` become coords
    ``mu_<name>`` with dims ``("sample",)``, the convention of :mod:`slift_plugin.data`
    (a DataArray cannot hold a ``("sample", "param")`` coord, ``param`` not being one of its
    dims); :func:`slift_plugin.data.ensemble_params` stacks them, in sorted name order, into
    the ``(sample, n_params)`` vector ``mu``.

    CF attributes: the values get ``long_name``, ``units = "1"`` and ``source`` (the
    package version and the generator, ``attrs["system"]``) before ``attrs``; ``time``
    gets ``long_name = "time"``, grid coords ``long_name = "position"``, ``channel``
    ``channel_long_name``, ``mu_<name>`` ``units``: everything is nondimensional.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float32).numpy()
    values = np.asarray(values, dtype=np.float32)
    grid = {k: np.asarray(v, dtype=np.float64) for k, v in (grid or {}).items()}
    dims = ("sample", "time", "channel", *grid.keys())
    one = {"units": NONDIMENSIONAL}
    if values.ndim != len(dims):
        raise ValueError(f"values must have dims {dims}; got shape {values.shape}")
    names = sorted(params or {})
    mu = np.stack([np.asarray(params[k], np.float32) for k in names], axis=1) if names else None
    da = tensor_to_ensemble(
        values,
        times,
        coords={
            "channel": ("channel", list(channels), {"long_name": channel_long_name}),
            **{k: (k, v, {"long_name": "position", **one}) for k, v in grid.items()},
        },
        mu=mu,
        param_names=names or None,
        attrs={
            "long_name": long_name,
            **one,
            "source": f"slift_plugin {__version__} slift_plugin.systems.{attrs['system']}",
            **attrs,
        },
        name=name,
        time_attrs={"long_name": "time", **one},
    )
    for p in names:
        da[MU_PREFIX + p].attrs.update(one)
    return da
