"""A rollout's result: this rank's chunks run into memory or a zarr store, then labelled.

:func:`in_memory` and :func:`to_store` are the two ends :func:`~slift_plugin.rollout.rollout`
chooses between: each runs this rank's shard through :func:`.engine.execute` into its sink,
gathers the ensemble across ranks or opens the finished store, and labels it with
:class:`Labels` (coords and attrs). Above the engine, so that the engine knows neither
coordinates nor files; zarr is imported only when a store is asked for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from ..data import tensor_to_ensemble
from ..distributed import all_gather_rows, fail_together
from .engine import Job, execute
from .sinks import MemorySink
from .steps import EagerStep


@dataclass
class Labels:
    """How generated values become the returned DataArray: coords and attrs."""

    times: np.ndarray  # the n_steps + 1 time coordinates
    mu: Tensor | None  # (n, n_params)
    coords: Mapping[str, object] | None
    param_names: list[str] | None
    attrs: dict[str, object]  # netCDF/zarr-safe values: str, int, float
    time_attrs: dict[str, object]  # what the time coordinate counts: steps or time

    def ensemble(self, values: Tensor | np.ndarray) -> xr.DataArray:
        """``values`` ``(n, n_steps + 1, C, *grid)`` as a labelled ensemble."""
        return tensor_to_ensemble(
            values,
            self.times,
            coords=self.coords,
            mu=None if self.mu is None else self.mu.cpu(),
            param_names=self.param_names,
            attrs=self.attrs,
            time_attrs=self.time_attrs,
        )


def in_memory(
    job: Job, labels: Labels, step: EagerStep, shard: tuple[int, int], progress: bool
) -> xr.DataArray:
    """Generate this rank's samples ``shard`` in host memory; gather the whole ensemble.

    Parameters
    ----------
    job : Job
        The rollout.
    labels : Labels
        Coords and attrs of the result.
    step : EagerStep
        One step, eager or graphed.
    shard : tuple of int
        ``(lo, hi)``: this rank's samples, whole chunks.
    progress : bool
        Show a progress bar.

    Returns
    -------
    xarray.DataArray
        All ``n`` samples, on every rank.
    """
    lo, hi = shard
    n, chunk_size = job.windows.shape[0], job.chunk_size
    sink = MemorySink((hi - lo, job.n_steps + 1, *job.state_shape), job.dtype, lo)
    chunks = [(a, min(a + chunk_size, hi)) for a in range(lo, hi, chunk_size)]
    with fail_together("generating the ensemble"):  # no rank left waiting in the gather
        execute(job, chunks, sink, step, progress)
    return labels.ensemble(all_gather_rows(sink.values, n, chunk_size))


def to_store(
    job: Job,
    labels: Labels,
    step: EagerStep,
    shard: tuple[int, int],
    out: str | os.PathLike,
    *,
    t0: float,
    dt: float,
    autocast_dtype: torch.dtype | None,
    progress: bool,
) -> xr.DataArray:
    """Generate the chunks of ``shard`` not yet done into the zarr store ``out``.

    Parameters
    ----------
    job : Job
        The rollout.
    labels : Labels
        Coords and attrs of the result.
    step : EagerStep
        One step, eager or graphed.
    shard : tuple of int
        ``(lo, hi)``: this rank's samples, whole chunks.
    out : str or os.PathLike
        The store; created, or resumed when it holds the same generation.
    t0, dt : float
        The time axis, part of what identifies the generation.
    autocast_dtype : torch.dtype or None
        Part of what identifies the generation.
    progress : bool
        Show a progress bar.

    Returns
    -------
    xarray.DataArray
        The finished store, opened lazily (on every rank).
    """
    from ..store import EnsembleStore, fingerprint

    n = job.windows.shape[0]
    # Placeholder values of the right shape and dtype, zero bytes: dims, coords and attrs.
    nan = torch.full((), math.nan, dtype=job.dtype).numpy()
    template = labels.ensemble(np.broadcast_to(nan, (n, job.n_steps + 1, *job.state_shape)))
    # What identifies the generation: only the same one may resume an existing store.
    settings = {
        "seed": int(job.seed),
        "n_samples": n,
        "chunk_size": job.chunk_size,
        "n_steps": job.n_steps,
        "state_shape": list(job.state_shape),
        "dtype": str(job.dtype),
        "t0": float(t0),
        "dt": dt,
        "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype),
        "param_names": None if labels.param_names is None else [str(p) for p in labels.param_names],
        # Settings that change the values but not the weights (flow matching's n_euler,
        # DICE's sigma), the device type (it sets the noise stream) and the processor.
        "stepper_config": labels.attrs.get("stepper_config"),
        "device": labels.attrs.get("device"),
        "data_processor": labels.attrs.get("data_processor"),
    }
    fp = fingerprint(
        job.stepper, windows=job.windows, mu=job.mu, coords=template.coords, **settings
    )
    store = EnsembleStore.open_or_create(out, template, job.chunk_size, fp)
    # Every rank's chunks are written before anyone opens the result, and one rank's failure
    # (a blow-up, a full disk) fails all of them instead of leaving them at a barrier.
    with fail_together("generating the ensemble's chunks"):
        execute(job, store.pending(*shard), store, step, progress)
    return store.result()
