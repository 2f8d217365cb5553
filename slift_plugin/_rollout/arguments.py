"""The up-front checks of what :func:`~slift_plugin.rollout.rollout` is given.

Everything a caller can get wrong (counts, seed, action, time axis, device, ``x0`` and
``mu``) is refused here before any chunk runs or any store is created, and brought to the
form the engine takes (Python ints, one window per sample). Apart from the engine so that
the checks read as one list, and so that the torchsde adapter, which bypasses ``rollout``
when it needs a graph to ``y0``, refuses exactly what ``rollout`` refuses.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from ..stepper import Stepper
from .noise import SEED_MAX
from .nonfinite import NONFINITE_ACTIONS


def _as_tensor(x: object, name: str) -> Tensor:
    if isinstance(x, xr.DataArray):
        x = x.values
    if not isinstance(x, Tensor):
        x = np.asarray(x)
        if x.dtype.kind not in "biufc":  # strings, objects: torch's own error is obscure
            raise TypeError(f"{name} must hold real numbers, got an array of dtype {x.dtype}")
    t = torch.as_tensor(x)
    if t.is_complex():  # a cast to the stepper's dtype would drop the imaginary part
        raise TypeError(f"{name} must be real, got the complex dtype {t.dtype}")
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


def _integer(value: object, name: str, expected: str = "an integer") -> int:
    """``value`` as an int; bools, floats and strings are refused rather than truncated."""
    if not isinstance(value, bool | np.bool_):
        with contextlib.suppress(TypeError):
            return operator.index(value)
    raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")


def _real(value: object, name: str) -> float:
    """``value`` as a float; bools and strings, which ``float()`` would take, are refused."""
    number = None
    if not isinstance(value, bool | np.bool_ | str | bytes):
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)
    if number is None:
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return number


def check_arguments(
    n_steps: int,
    n_samples: int | None,
    chunk_size: int,
    seed: int,
    on_nonfinite: str,
    out: str | os.PathLike | None,
) -> tuple[int, int | None, int, int]:
    """Refuse, before any work, bad counts, seeds and actions and an unusable ``out`` path.

    Parameters
    ----------
    n_steps, chunk_size : int
        Integers >= 1.
    n_samples : int or None
        An integer >= 1 when given.
    seed : int
        An integer in ``[0, SEED_MAX]``.
    on_nonfinite : str
        One of :data:`NONFINITE_ACTIONS`.
    out : str or os.PathLike or None
        A zarr store path (see :func:`slift_plugin.store.check_store_path`), or None.

    Returns
    -------
    tuple
        ``(n_steps, n_samples, chunk_size, seed)`` as Python ints (``n_samples`` may be
        None).

    Raises
    ------
    TypeError
        If a count or the seed is not an integer (a bool, a float, a string).
    ValueError
        On the first value out of range.
    """
    n_steps, chunk_size = _integer(n_steps, "n_steps"), _integer(chunk_size, "chunk_size")
    if n_samples is not None:
        n_samples = _integer(n_samples, "n_samples")
    for name, count in (("n_steps", n_steps), ("chunk_size", chunk_size), ("n_samples", n_samples)):
        if count is not None and count < 1:
            raise ValueError(f"{name} must be >= 1, got {count}")
    seeds = "an integer in [0, 2**63 - 1]"
    seed = _integer(seed, "seed", seeds)
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be {seeds}, got {seed}")
    if not (isinstance(on_nonfinite, str) and on_nonfinite in NONFINITE_ACTIONS):
        raise ValueError(f"on_nonfinite must be one of {NONFINITE_ACTIONS}, got {on_nonfinite!r}")
    if out is not None:  # zarr is only needed (and imported) for out-of-core rollouts
        from ..store import check_store_path

        check_store_path(out)
    return n_steps, n_samples, chunk_size, seed


def time_axis(
    stepper: Stepper, t0: float, dt: float | None, n_steps: int
) -> tuple[float, float | None, np.ndarray]:
    """The time coordinates ``t0 + k * dt`` of the ``n_steps + 1`` output states.

    Parameters
    ----------
    stepper : Stepper
        Its ``dt`` is the default step; ``nan`` (no physical step) counts time in steps,
        ``t0 + k``.
    t0 : float
        A finite real number.
    dt : float or None
        A finite real number > 0, or None for the stepper's.
    n_steps : int
        Steps after ``t0``.

    Returns
    -------
    t0 : float
        As used.
    dt : float or None
        The physical step; None when time counts steps (no ``dt`` given and the
        stepper's is nan). None rather than nan: it goes into attributes and the zarr
        fingerprint, whose JSON has no NaN.
    times : numpy.ndarray
        ``(n_steps + 1,)`` increasing times.

    Raises
    ------
    TypeError
        If ``t0`` or ``dt`` is not a real number.
    ValueError
        If ``t0`` is not finite or the step is not finite and > 0: the time coordinate
        would repeat, run backwards or be NaN.
    """
    t0 = _real(t0, "t0")
    if not math.isfinite(t0):
        raise ValueError(f"t0 must be finite, got {t0}")
    if dt is None:
        dt, name = float(stepper.dt), f"the stepper's dt ({type(stepper).__name__}.dt)"
        if math.isnan(dt):  # a stepper without a physical step counts time in steps
            return t0, None, t0 + 1.0 * np.arange(n_steps + 1)
    else:
        dt, name = _real(dt, "dt"), "dt"
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(
            f"{name} must be a finite step > 0, got {dt}: the times t0 + k*dt must increase"
        )
    return t0, dt, t0 + dt * np.arange(n_steps + 1)


def check_device(device: str | torch.device | None, home: torch.device) -> torch.device:
    """``device`` (else the stepper's ``home``), refused up front where no tensor can live.

    Parameters
    ----------
    device : str or torch.device or None
        As given to :func:`~slift_plugin.rollout.rollout`.
    home : torch.device
        The stepper's device.

    Returns
    -------
    torch.device
        The device to run on.

    Raises
    ------
    ValueError
        If ``device`` names no device, is ``meta`` (no data: the stepper would come back
        without its weights), or cannot hold a tensor here (no such backend or index).
    """
    try:
        run = home if device is None else torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device: {exc}") from exc
    shown = "the stepper's device" if device is None else f"device={device!r}"
    if run.index is not None and run.index < 0:  # torch keeps 8 bits: "cuda:999" -> -25
        raise ValueError(f"{shown} has no valid device index (torch reads it as {run})")
    if run.type == "meta":
        raise ValueError(
            f"rollout cannot run on the meta device ({shown}): meta tensors hold no values, "
            "so nothing would be computed and the stepper would lose its weights; use a "
            "device with memory, e.g. 'cpu' or 'cuda'"
        )
    try:
        torch.empty(0, device=run)
    except Exception as exc:  # AssertionError, RuntimeError, NotImplementedError by backend
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"rollout cannot run on {run} ({shown}): {first_line}") from exc
    return run


def inputs(
    stepper: Stepper,
    x0: Tensor | np.ndarray | xr.DataArray,
    mu: Tensor | np.ndarray | None,
    n_samples: int | None,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """``x0`` and ``mu`` as one window and one parameter vector per sample.

    Parameters
    ----------
    stepper : Stepper
        Checks the window and ``mu`` against its shapes.
    x0 : Tensor or numpy.ndarray or xarray.DataArray
        See :func:`~slift_plugin.rollout.rollout`.
    mu : Tensor or numpy.ndarray or None
        ``(n_params,)`` (shared) or ``(n_samples, n_params)``.
    n_samples : int or None
        Defaults to the number of samples in ``x0``.
    dtype : torch.dtype
        The stepper's dtype.

    Returns
    -------
    windows : Tensor
        ``(n_samples, history*C, *grid)``, possibly an expanded view.
    mu : Tensor or None
        ``(n_samples, n_params)``, possibly an expanded view.
    """
    windows = _initial_windows(stepper, _as_tensor(x0, "x0").to(dtype), n_samples)
    n = windows.shape[0]
    if mu is not None:
        mu = _as_tensor(mu, "mu").to(dtype)
        if mu.ndim == 1:
            mu = mu.expand(n, -1)
    stepper.check_mu(mu, n)
    return windows, mu
