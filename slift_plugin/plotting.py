"""Figures for ensembles and their metrics.

The figures are built as bare :class:`matplotlib.figure.Figure` objects, not through pyplot:
importing this module or calling its functions never selects or changes the user's
matplotlib backend, and no figure is left registered with pyplot.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .data import atomic_write

__all__ = ["field_ensemble_figure"]


def field_ensemble_figure(
    reference: xr.DataArray,
    models: Mapping[str, xr.DataArray],
    metrics: Mapping[str, xr.Dataset],
    path: str | os.PathLike | None = None,
    *,
    n_trajectories: int = 3,
    title: str = "",
) -> Figure:
    """Space-time samples, mean/std over time and energy distance vs the noise floor.

    Parameters
    ----------
    reference : xarray.DataArray
        The reference 1-D field ensemble ``(sample, time, channel, x)``.
    models : Mapping[str, xarray.DataArray]
        Generated ensembles of the same layout, by model name.
    metrics : Mapping[str, xarray.Dataset]
        :func:`slift_plugin.evaluate` results keyed like ``models`` (with
        ``energy_distance`` and ``noise_floor`` per time).
    path : str or os.PathLike, optional
        A PNG file to write (atomically); None writes nothing.
    n_trajectories : int
        Space-time samples shown per ensemble.
    title : str
        Figure title; empty for none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (also in a notebook: display it, or ``fig.savefig(...)`` it yourself).

    Raises
    ------
    ValueError
        If ``metrics`` is not keyed like ``models`` (and non-empty), or an ensemble lacks
        the ``sample``/``time`` dims or has fewer than ``n_trajectories`` samples.
    """
    _check_inputs(reference, models, metrics, n_trajectories)
    names = ["reference", *models]
    ensembles = {"reference": reference, **models}
    fig = Figure(figsize=(4.2 * max(3, len(names)), 9.5), layout="constrained")
    grid = fig.add_gridspec(2 + 1, max(3, len(names)))
    t = reference["time"].values
    x = reference[reference.dims[-1]].values
    for col, name in enumerate(names):
        sub = grid[0, col].subgridspec(1, n_trajectories, wspace=0.05)
        ens = ensembles[name].isel(channel=0)
        for j in range(n_trajectories):
            ax = fig.add_subplot(sub[0, j])
            ax.pcolormesh(x, t, ens.isel(sample=j).values, cmap="RdBu_r", vmin=-1.2, vmax=1.2)
            ax.set_xticks([])
            if j:
                ax.set_yticks([])
            else:
                ax.set_ylabel("time")
            if j == n_trajectories // 2:
                ax.set_title(f"{name}: {n_trajectories} samples u(x, t)")
    ax_mean = fig.add_subplot(grid[1, 0])
    ax_std = fig.add_subplot(grid[1, 1])
    ax_ed = fig.add_subplot(grid[1, 2])
    ax_final = fig.add_subplot(grid[2, :])
    for name in names:
        ens = ensembles[name]
        style = {"color": "k", "lw": 2} if name == "reference" else {}
        spatial = [d for d in ens.dims if d not in ("sample", "time")]
        ax_mean.plot(ens["time"], np.abs(ens.mean("sample")).mean(spatial), label=name, **style)
        ax_std.plot(ens["time"], ens.std("sample").mean(spatial), label=name, **style)
        ax_final.plot(x, ens.isel(time=-1, channel=0, sample=0), label=f"{name} sample", **style)
    for name, m in metrics.items():
        line = ax_ed.semilogy(m["time"], m["energy_distance"], label=f"{name}")[0]
        line.set_marker(".")
    first = next(iter(metrics.values()))
    ax_ed.semilogy(first["time"], first["noise_floor"], "k--", label="noise floor (ref vs ref)")
    ax_mean.set(title="|ensemble mean|, grid average", xlabel="time")
    ax_std.set(title="ensemble std, grid average", xlabel="time")
    ax_ed.set(title="energy distance to reference", xlabel="time")
    ax_final.set(title="one sample at the final time", xlabel="x", ylabel="u")
    for ax in (ax_mean, ax_std, ax_ed, ax_final):
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)

    if path is not None:

        def write(tmp: Path) -> None:
            fig.savefig(tmp, format="png", dpi=90)

        atomic_write(path, write)
    return fig


def _check_inputs(
    reference: xr.DataArray,
    models: Mapping[str, xr.DataArray],
    metrics: Mapping[str, xr.Dataset],
    n_trajectories: int,
) -> None:
    if not models or set(metrics) != set(models):
        raise ValueError(
            "metrics must hold one evaluate() result per model, keyed like models: got "
            f"models {sorted(models)} and metrics {sorted(metrics)}"
        )
    for name, ens in {"reference": reference, **models}.items():
        if not {"sample", "time"} <= set(ens.dims):
            raise ValueError(f"ensemble {name!r} needs dims (sample, time, ...), got {ens.dims}")
        if ens.sizes["sample"] < n_trajectories:
            raise ValueError(
                f"ensemble {name!r} has {ens.sizes['sample']} samples, fewer than "
                f"n_trajectories={n_trajectories}"
            )
