"""torchsde glue.

The only module of the project that imports :mod:`torchsde`. It holds the helpers that
let the rest of the package integrate SDEs written in torchsde's interface (a
``torch.nn.Module`` with ``noise_type``, ``sde_type``, ``f(t, y)`` and ``g(t, y)``)
reproducibly, from an explicit seed.

Shapes follow torchsde: a state is ``(batch, d)``, times are ``(n_times,)`` and a solution
is ``(n_times, batch, d)``.
"""

from __future__ import annotations

import math

import torch
import torchsde

__all__ = ["integrate_sde"]

_NOISE_TYPES = ("diagonal", "general", "additive", "scalar")


def _brownian_dim(sde: torch.nn.Module, d: int) -> int:
    noise_type = getattr(sde, "noise_type", None)
    if noise_type == "diagonal":
        return d
    if noise_type in ("general", "additive"):
        size = getattr(sde, "brownian_size", None)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(
                f"an SDE with noise_type={noise_type!r} must define a positive integer "
                f"attribute `brownian_size`; got {size!r}"
            )
        return size
    if noise_type == "scalar":
        return 1
    raise ValueError(f"sde.noise_type must be one of {_NOISE_TYPES}; got {noise_type!r}")


def integrate_sde(
    sde: torch.nn.Module,
    y0: torch.Tensor,
    ts: torch.Tensor,
    *,
    dt: float,
    seed: int,
    method: str = "euler",
) -> torch.Tensor:
    """Integrate an SDE with a fixed step and a reproducible Brownian path.

    The Brownian motion is a :class:`torchsde.BrownianInterval` on ``[ts[0], ts[-1]]`` with
    ``entropy=seed`` and the step ``dt`` as its query-size hint (about 25x faster for
    fixed-step solves than no hint). The same ``(seed, batch, brownian size, dtype, device,
    ts, dt)`` therefore gives the same path.

    Args:
        sde: a module in torchsde's interface: attributes ``noise_type`` and ``sde_type``,
            methods ``f(t, y)`` and ``g(t, y)``. For ``noise_type="general"`` (or
            ``"additive"``) it must also define ``brownian_size`` (an int).
        y0: initial state, shape ``(batch, d)``, floating point and finite.
        ts: output times, shape ``(n_times,)`` with ``n_times >= 2``, strictly increasing.
        dt: solver step, ``0 < dt <= min(diff(ts))`` (up to a relative rounding tolerance).
        seed: non-negative integer entropy of the Brownian motion.
        method: a fixed-step torchsde method name (default ``"euler"``).

    Returns:
        The solution at ``ts``, shape ``(n_times, batch, d)``, dtype and device of ``y0``.
        torchsde steps by accumulating ``t + dt`` (here in float64) and linearly
        interpolates to each output time, so with ``min(diff(ts)) / dt`` an integer the
        outputs are the solver states up to rounding (~1e-15 in time).

    Raises:
        ValueError: if any argument does not have the shape or value described above.
    """
    if not isinstance(y0, torch.Tensor) or y0.ndim != 2:
        got = tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__
        raise ValueError(f"y0 must be a tensor of shape (batch, d); got {got}")
    if not y0.is_floating_point():
        raise ValueError(f"y0 must be a floating-point tensor; got dtype {y0.dtype}")
    if y0.shape[0] == 0 or y0.shape[1] == 0:
        raise ValueError(f"y0 must be non-empty; got shape {tuple(y0.shape)}")
    if not bool(torch.isfinite(y0).all()):
        raise ValueError("y0 contains NaN or Inf values")
    if not isinstance(ts, torch.Tensor) or ts.ndim != 1:
        got = tuple(ts.shape) if isinstance(ts, torch.Tensor) else type(ts).__name__
        raise ValueError(f"ts must be a 1-D tensor of times; got {got}")
    if ts.numel() < 2:
        raise ValueError(f"ts must hold at least 2 times; got {ts.numel()}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("ts contains NaN or Inf values")
    gaps = torch.diff(ts.double())
    if not bool((gaps > 0).all()):
        raise ValueError("ts must be strictly increasing")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt):
        raise ValueError(f"dt must be a finite positive number; got {dt!r}")
    dt = float(dt)
    min_gap = float(gaps.min())
    if dt <= 0:
        raise ValueError(f"dt must be > 0; got {dt}")
    if dt > min_gap * (1 + 1e-9):
        raise ValueError(
            f"dt must be <= the smallest gap between output times ({min_gap}); got {dt}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    if getattr(sde, "sde_type", None) not in ("ito", "stratonovich"):
        raise ValueError(
            f"sde.sde_type must be 'ito' or 'stratonovich'; got {getattr(sde, 'sde_type', None)!r}"
        )

    batch, d = y0.shape
    bm = torchsde.BrownianInterval(
        t0=float(ts[0]),
        t1=float(ts[-1]),
        size=(batch, _brownian_dim(sde, d)),
        dtype=y0.dtype,
        device=y0.device,
        entropy=seed,
        dt=dt,
    )
    # Times in float64 so that torchsde's accumulated `t + dt` lands on the output times.
    ts = ts.to(device=y0.device, dtype=torch.float64)
    return torchsde.sdeint(sde, y0, ts, bm=bm, method=method, dt=dt)
