"""rollout(): batched, seeded, chunked generation of trajectory ensembles.

Randomness is derived from ``(seed, sample block)``: samples are grouped in blocks of
:data:`SEED_BLOCK`, each block owns a generator seeded with ``hash(seed, block)``, and a
step draws each block's noise from its own generator. The ensemble is therefore the same
for any ``chunk_size`` and any number of processes sharding the samples.

The step loop does one ``stepper.step`` per output step and nothing else of note: the
trajectory, the history window and the noise live in buffers allocated once per rollout,
noise is drawn in place, nothing synchronises with the host inside the loop, and a
finished chunk goes to host memory (or a zarr store) in one copy.

Blow-ups are caught once per chunk, not per step: when a chunk's steps are done, one
reduction on the device (its min and max, which are NaN or infinite exactly when some
value is) gives a flag that travels to the host with the chunk. Only a chunk whose flag
reports a non-finite value is searched, on the host, for its first such step and sample.

This module is the entry point and its public constants; what it is built from (the
argument checks, the noise, the step engines, the chunk loop, the sinks) lives in the
private package :mod:`slift_plugin._rollout`, one concern per module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from ._rollout.arguments import check_arguments, check_device, inputs, time_axis
from ._rollout.engine import Job
from ._rollout.noise import SEED_BLOCK, SEED_MAX
from ._rollout.nonfinite import NONFINITE_ACTIONS
from ._rollout.output import Labels, in_memory, to_store
from ._rollout.steps import AUTOCAST_DTYPES, EagerStep, GraphedStep, check_fast_paths
from .data.ensemble import STEP_TIME_ATTRS, TIME_LONG_NAME
from .distributed import shard_bounds, world
from .processing import ProcessedStepper
from .stepper import Stepper

__all__ = ["AUTOCAST_DTYPES", "NONFINITE_ACTIONS", "SEED_BLOCK", "SEED_MAX", "rollout"]


def rollout(
    stepper: Stepper,
    x0: Tensor | np.ndarray | xr.DataArray,
    n_steps: int,
    n_samples: int | None = None,
    *,
    mu: Tensor | np.ndarray | None = None,
    seed: int = 0,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    t0: float = 0.0,
    dt: float | None = None,
    coords: Mapping[str, object] | None = None,
    param_names: list[str] | None = None,
    progress: bool = False,
    out: str | os.PathLike | None = None,
    cuda_graph: bool = False,
    autocast_dtype: torch.dtype | None = None,
    on_nonfinite: str = "raise",
    data_processor: object | None = None,
) -> xr.DataArray:
    """Generate ``n_samples`` trajectories of ``n_steps`` steps from ``x0``.

    Parameters
    ----------
    stepper : Stepper
        Any trained :class:`Stepper`; one ``stepper.step`` call per output step.
    x0 : Tensor or numpy.ndarray or xarray.DataArray
        One state ``state_shape`` (shared), per-sample states ``(n_samples, *state)``,
        or windows ``(n_samples, history, *state)``.
    n_steps : int
        Steps per trajectory, an integer >= 1.
    n_samples : int or None
        Trajectories, an integer >= 1; defaults to the number of samples in ``x0``.
    mu : Tensor or numpy.ndarray or None
        Physics parameters ``(n_params,)`` (shared) or ``(n_samples, n_params)``.
    seed : int
        An integer in ``[0, SEED_MAX]`` (``2**63 - 1``). All noise derives from
        ``(seed, sample block)``: same seed, same ensemble, whatever ``chunk_size`` and
        however many processes.
    chunk_size : int
        Samples generated together; bounds device and host memory. Multiples of
        :data:`SEED_BLOCK` (256) draw noise without any copy.
    device : str or torch.device or None
        Where to run (defaults to the stepper's device); ``meta`` is refused. Each chunk
        stays on the device for all steps and is copied to host memory once. The
        stepper comes back on its own device with its weights, also when the run fails.
    t0 : float
        Time of the last state of ``x0`` (finite).
    dt : float or None
        Time coordinate ``t0 + k*dt``, finite and > 0; defaults to ``stepper.dt``.
        When that is nan (no physical step, e.g. a lifted neuraloperator model) the
        time coordinate counts steps, ``t0 + k``, and says so (``long_name = "step"``,
        ``units = "1"``); :func:`slift_plugin.evaluate` then refuses a reference in
        physical time rather than match steps to times.
    coords : Mapping or None
        Extra coords for the result (``channel`` and grid coords of a reference).
    param_names : list of str or None
        Names of the parameters, in sorted order (the order of ``mu``): coords
        ``mu_<name>``; defaults to ``p0, p1, ...``.
    progress : bool
        Show a progress bar.
    out : str or os.PathLike or None
        A path ending in ``.zarr``: stream finished chunks to this zarr store instead of
        holding the ensemble in memory, and return it opened lazily. An existing store
        of the same generation (seed, sizes, dtype and ``autocast_dtype``, stepper and
        its weights, x0, mu, coords and ``param_names``) is resumed: chunks marked done
        are kept, the others generated. Any other existing path is refused.
    cuda_graph : bool
        Capture one step as a CUDA graph and replay it (CUDA only; steppers that declare
        ``cuda_graph_safe``, whose step ignores ``t``). Same noise stream as the eager
        path.
    autocast_dtype : torch.dtype or None
        ``torch.bfloat16`` or ``torch.float16``: run each step under ``torch.autocast``;
        states are stored (and fed back) in the stepper's dtype.
    on_nonfinite : str
        What a NaN or infinite state does, one of :data:`NONFINITE_ACTIONS`:
        ``"raise"`` a FloatingPointError naming the first such step ``k`` (the state at
        ``t0 + k*dt``) and its (global) sample index; the offending chunk is neither
        returned nor written (a zarr store keeps the chunks finished before it and
        stays resumable); ``"warn"`` a RuntimeWarning (once) and keep the values;
        ``"ignore"`` skips the check. The check is one reduction on the device per
        chunk, read when the chunk reaches the host.
    data_processor : object or None
        The neuraloperator ``DataProcessor`` (or any object with ``preprocess`` and
        ``postprocess``) the stepper was trained behind, e.g. the ``data_processor`` of
        a ``neuralop.Trainer``: every step then preprocesses the physical window, steps,
        and postprocesses the result (:class:`slift_plugin.ProcessedStepper`), so ``x0``
        and the ensemble are physical states. None: the stepper's own coordinates.

    Returns
    -------
    xarray.DataArray
        ``(sample, time, channel, *grid)`` with ``n_steps + 1`` times, the first being
        the last state of ``x0``. Its attrs (CF-style, strings and numbers only, the same
        in memory and in a zarr store) are ``long_name``, ``source``, the stepper's class
        name ``stepper``, its constructor configuration ``stepper_config`` (the JSON text
        of :func:`slift_plugin.config.stepper_record`, which a checkpoint stores too),
        ``data_processor`` (its class name, when given), ``seed``, ``n_steps``, ``t0``,
        ``dt`` (only for a physical step), ``dtype``, ``device`` (its type),
        ``autocast_dtype`` (``"none"`` without) and ``slift_plugin_version``. The
        ``time`` coord has ``long_name = "time"`` (physical time, in the unit of the
        stepper's ``dt``) or ``"step"`` (a count of steps).

    Raises
    ------
    TypeError
        Before generating anything, on a count or seed that is not an integer, a ``t0``
        or ``dt`` that is not a real number, or a complex or non-numeric ``x0``/``mu``.
    ValueError
        Before generating anything, on a count below one, a seed out of range, a ``dt``
        that is not > 0 (given or the stepper's), a non-finite ``t0``, an unknown
        ``on_nonfinite``, an unusable device, an ``out`` path that is not a new or
        resumable ``.zarr`` store, a CUDA graph or autocast dtype this rollout cannot
        use, non-finite ``x0`` or ``mu``, or ``x0``/``mu`` whose shapes do not fit the
        stepper.
    FloatingPointError
        With ``on_nonfinite="raise"``, when a generated state is NaN or infinite.

    Warns
    -----
    RuntimeWarning
        With ``on_nonfinite="warn"``, when a generated state is NaN or infinite.

    Notes
    -----
    Under ``torch.distributed`` (a process group initialised), every rank generates its
    own whole chunks, ``shard_bounds(n, rank, world, chunk_size)``; in memory the full
    ensemble is gathered onto every rank, with ``out`` every rank writes its chunks and
    opens the finished store. The result equals the single-process one bit for bit.
    """
    n_steps, n_samples, chunk_size, seed = check_arguments(
        n_steps, n_samples, chunk_size, seed, on_nonfinite, out
    )
    from . import __version__  # at call time: slift_plugin/__init__ imports this module early
    from .checkpoint import stepper_record

    attrs: dict[str, object] = {
        "stepper": type(stepper).__name__,
        # the JSON text a checkpoint stores (strict JSON, never raises): what rebuilds the
        # stepper (slift_plugin.config.build_stepper), or why it cannot be described
        "stepper_config": stepper_record(stepper),
    }
    if data_processor is not None:
        stepper = ProcessedStepper(stepper, data_processor)
        attrs["data_processor"] = type(data_processor).__name__
    home_device, dtype = stepper.param_device_dtype()
    run_device = check_device(device, home_device)
    check_fast_paths(stepper, run_device, cuda_graph, autocast_dtype)
    t0, dt, times = time_axis(stepper, t0, dt, n_steps)
    windows, mu = inputs(stepper, x0, mu, n_samples, dtype)
    n = windows.shape[0]
    job = Job(
        stepper=stepper,
        windows=windows,
        mu=mu,
        times=times.tolist(),
        seed=seed,
        chunk_size=min(chunk_size, n),
        device=run_device,
        dtype=dtype,
        noise_shape=stepper.noise_shape(tuple(windows.shape[2:])),
        on_nonfinite=on_nonfinite,
    )
    # What generated the values, as strings and numbers (what netCDF and zarr both store;
    # no None, no NaN). Left out: chunk_size, cuda_graph and on_nonfinite, which do not
    # change the values: ensembles equal by contract stay identical, attrs included.
    attrs = {
        "long_name": "state",
        "source": f"slift_plugin {__version__} rollout",
        **attrs,
        "seed": seed,
        "n_steps": n_steps,
        "t0": t0,
        **({} if dt is None else {"dt": dt}),  # no dt: time counts steps (time_attrs)
        "dtype": str(dtype).removeprefix("torch."),
        "device": run_device.type,  # the type sets the noise stream; the index does not
        "autocast_dtype": str(autocast_dtype).removeprefix("torch.") if autocast_dtype else "none",
        "slift_plugin_version": __version__,
    }
    time_attrs = dict(STEP_TIME_ATTRS) if dt is None else {"long_name": TIME_LONG_NAME}
    labels = Labels(times, mu, coords, param_names, attrs, time_attrs)
    rank, size = world()
    # Whole chunks per rank: every rank runs exactly the chunks one process would run.
    shard = shard_bounds(n, rank, size, job.chunk_size)
    step = (GraphedStep if cuda_graph else EagerStep)(stepper, run_device, autocast_dtype)
    if out is None:
        return in_memory(job, labels, step, shard, progress)
    return to_store(
        job,
        labels,
        step,
        shard,
        out,
        t0=t0,
        dt=dt,
        autocast_dtype=autocast_dtype,
        progress=progress,
    )
