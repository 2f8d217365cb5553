"""rollout(): batched, seeded, chunked generation of trajectory ensembles.

Randomness is derived from ``(seed, sample block)``: samples are grouped in blocks of
:data:`SEED_BLOCK`, each block owns a generator seeded with ``hash(seed, block)``, and a
step draws each block's noise from its own generator. The ensemble is therefore the same
for any ``chunk_size`` (and, later, any number of processes sharding the samples).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from .data import tensor_to_ensemble
from .labels import hash_seed
from .stepper import Stepper

SEED_BLOCK = 256


def _as_tensor(x: object, name: str) -> Tensor:
    if isinstance(x, xr.DataArray):
        x = x.values
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if not t.is_floating_point():
        t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains {int((~torch.isfinite(t)).sum())} NaN/Inf values")
    return t


def _initial_windows(stepper: Stepper, x0: Tensor, n_samples: int | None) -> Tensor:
    """Bring ``x0`` to ``(n_samples, history*C, *grid)``."""
    state_ndim = len(stepper.state_shape)
    h = stepper.history
    if x0.ndim == state_ndim:  # one state for every sample
        x0 = x0.unsqueeze(0).unsqueeze(0)
    elif x0.ndim == state_ndim + 1:  # (n, *state): one state per sample
        x0 = x0.unsqueeze(1)
    elif x0.ndim != state_ndim + 2:
        raise ValueError(
            f"x0 must have shape {stepper.state_shape} (one state), (n_samples, *state), or "
            f"(n_samples, history={h}, *state); got {tuple(x0.shape)}"
        )
    # x0 is now (n, h0, *state)
    if x0.shape[1] != h:
        raise ValueError(
            f"this stepper needs a window of history={h} initial states, got {x0.shape[1]} "
            f"(x0 shape {tuple(x0.shape)})"
        )
    if n_samples is None:
        n_samples = x0.shape[0]
    if x0.shape[0] == 1:
        x0 = x0.expand(n_samples, *x0.shape[1:])
    elif x0.shape[0] != n_samples:
        raise ValueError(f"x0 has {x0.shape[0]} samples but n_samples={n_samples}")
    window = x0.reshape(n_samples, h * x0.shape[2], *x0.shape[3:])
    stepper.check_window(window, "x0 (as a window)")
    return window


def _block_generators(seed: int, lo: int, hi: int, device: torch.device) -> list:
    """``(generator, block_size, start, stop)`` for the blocks overlapping samples [lo, hi)."""
    out = []
    for b in range(lo // SEED_BLOCK, (hi - 1) // SEED_BLOCK + 1):
        g = torch.Generator(device=device).manual_seed(hash_seed(seed, b))
        b0 = b * SEED_BLOCK
        out.append((g, max(lo, b0) - b0, min(hi, b0 + SEED_BLOCK) - b0))
    return out


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
) -> xr.DataArray:
    """Generate ``n_samples`` trajectories of ``n_steps`` steps from ``x0``.

    Parameters
    ----------
    stepper:
        Any trained :class:`Stepper`; one ``stepper.step`` call per output step.
    x0:
        One state ``state_shape`` (shared), per-sample states ``(n_samples, *state)``,
        or windows ``(n_samples, history, *state)``.
    mu:
        Physics parameters ``(n_params,)`` (shared) or ``(n_samples, n_params)``.
    seed:
        All noise derives from ``(seed, sample block)``: same seed, same ensemble,
        whatever ``chunk_size``.
    chunk_size:
        Samples generated together; bounds device memory.
    device:
        Where to run (defaults to the stepper's device). Each chunk stays on the device
        for all steps and is copied to host memory once.
    t0, dt:
        Time coordinate ``t0 + k*dt``; ``dt`` defaults to ``stepper.dt``.
    coords:
        Extra coords for the result (``channel`` and grid coords of a reference).

    Returns
    -------
    DataArray ``(sample, time, channel, *grid)`` with ``n_steps + 1`` times, the first
    being the last state of ``x0``.
    """
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if n_samples is not None and int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    home_device, dtype = stepper.param_device_dtype()
    run_device = torch.device(device) if device is not None else home_device
    windows = _initial_windows(stepper, _as_tensor(x0, "x0").to(dtype), n_samples)
    n = windows.shape[0]
    if mu is not None:
        mu = _as_tensor(mu, "mu").to(dtype)
        if mu.ndim == 1:
            mu = mu.expand(n, -1)
    stepper.check_mu(mu, n)
    dt = stepper.dt if dt is None else float(dt)
    times = t0 + (dt if math.isfinite(dt) else 1.0) * np.arange(n_steps + 1)

    c = stepper.n_channels
    grid = tuple(windows.shape[2:])
    out = torch.empty((n, n_steps + 1, c, *grid), dtype=dtype)
    noise_shape = stepper.noise_shape(grid)
    was_training = stepper.training
    bar = tqdm(total=n * n_steps, disable=not progress, desc="rollout", unit="traj-step")
    # The stepper runs on run_device in eval mode and is handed back as it came.
    stepper.to(run_device).eval()
    try:
        _generate(stepper, windows, mu, out, times, seed, chunk_size, run_device, noise_shape, bar)
    finally:
        stepper.to(home_device).train(was_training)
        bar.close()
    attrs = {"stepper": type(stepper).__name__, "seed": seed, "dt": dt, "n_steps": n_steps}
    return tensor_to_ensemble(
        out,
        times,
        coords=coords,
        mu=None if mu is None else mu.cpu(),
        param_names=param_names,
        attrs=attrs,
    )


def _generate(stepper, windows, mu, out, times, seed, chunk_size, run_device, noise_shape, bar):
    """Fill ``out`` (host, ``(n, n_steps + 1, C, *grid)``) chunk by chunk."""
    n, n_steps = out.shape[0], out.shape[1] - 1
    c, dtype, grid = stepper.n_channels, out.dtype, tuple(out.shape[3:])
    # Steppers that differentiate inside a step (DICE) cannot run under inference_mode;
    # they enable gradients locally and return detached states.
    needs_grad = getattr(stepper, "requires_grad_in_step", False)
    with torch.no_grad() if needs_grad else torch.inference_mode():
        for lo in range(0, n, chunk_size):
            hi = min(n, lo + chunk_size)
            window = windows[lo:hi].to(run_device)
            chunk_mu = None if mu is None else mu[lo:hi].to(run_device)
            traj = torch.empty((hi - lo, n_steps + 1, c, *grid), dtype=dtype, device=run_device)
            traj[:, 0] = window[:, (stepper.history - 1) * c :]
            blocks = _block_generators(seed, lo, hi, run_device) if noise_shape else []
            for k in range(n_steps):
                noise = None
                if noise_shape is not None:
                    draws = [
                        torch.randn(
                            (SEED_BLOCK, *noise_shape), generator=g, device=run_device, dtype=dtype
                        )[start:stop]
                        for g, start, stop in blocks
                    ]
                    # one block (small ensembles, or chunks aligned to blocks): no copy
                    noise = draws[0] if len(draws) == 1 else torch.cat(draws)
                x_next = stepper.step(window, noise, mu=chunk_mu, t=float(times[k]))
                traj[:, k + 1] = x_next
                window = (
                    torch.cat([window[:, c:], x_next], dim=1) if stepper.history > 1 else x_next
                )
            out[lo:hi] = traj.cpu()
            bar.update((hi - lo) * n_steps)
