"""Reference stochastic differential equations and their ground-truth data generators.

The SDE classes follow torchsde's interface (``torch.nn.Module`` with ``noise_type``,
``sde_type``, ``f(t, y)`` and ``g(t, y)`` on states of shape ``(batch, d)``) but do not
import torchsde; the generators integrate them through
:func:`slift_plugin.adapters.torchsde.integrate_sde` with a fine internal step
``dt_internal`` and keep the state at the coarse output times ``t0 + k * dt``,
``k = 0..n_steps``.

Every generator returns an :class:`xarray.DataArray` named ``"state"`` with float32 values,
dims ``("sample", "time", "channel")``, coords ``time`` (physical time) and ``channel``
(names), and attrs that record every parameter. The randomness comes only from ``seed``
(the entropy of the Brownian motion); nothing is seeded globally. The same seed and the same
arguments give the same ensemble; note that changing ``n_samples`` changes the Brownian
path of every sample (torchsde draws the whole batch at once).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ._xarray import (
    check_device,
    check_float,
    check_positive_int,
    check_seed,
    check_substeps,
    output_times,
    state_array,
)

__all__ = [
    "LORENZ63_X0",
    "METHODS",
    "DoubleWellSDE",
    "Lorenz63SDE",
    "OrnsteinUhlenbeckSDE",
    "double_well",
    "lorenz63",
    "ornstein_uhlenbeck",
    "ou_transition_moments",
]

#: Fixed-step Ito methods of torchsde that the generators accept (all support diagonal noise).
METHODS = ("euler", "milstein", "srk")

#: Default Lorenz-63 initial state: the state reached at t = 20 by the deterministic system
#: (s=10, r=28, b=8/3; RK4 with step 1e-4) from (1, 1, 1), rounded to two decimals. It lies
#: on the attractor, so the ensemble spreads along the attractor instead of first relaxing
#: onto it.
LORENZ63_X0 = (13.79, 12.95, 34.90)


# ----------------------------------------------------------------------------------------
# SDEs in torchsde's interface
# ----------------------------------------------------------------------------------------


class _AdditiveNoiseSDE(torch.nn.Module):
    """torchsde's interface (Ito, diagonal noise) with one noise amplitude on every
    component: a subclass gives the drift ``f`` and the :attr:`amplitude`."""

    noise_type = "diagonal"
    sde_type = "ito"

    @property
    def amplitude(self) -> float:
        """The additive noise amplitude."""
        raise NotImplementedError

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Diagonal diffusion: :attr:`amplitude` on every component.

        Parameters
        ----------
        t : torch.Tensor
            Time (unused).
        y : torch.Tensor
            States ``(batch, d)``.

        Returns
        -------
        torch.Tensor
            ``(batch, d)``, filled with the amplitude.
        """
        return torch.full_like(y, self.amplitude)


class OrnsteinUhlenbeckSDE(_AdditiveNoiseSDE):
    """Ornstein-Uhlenbeck process ``dX = -theta (X - center) dt + sigma dW`` (Ito, diagonal).

    States have shape ``(batch, d)`` for any ``d``.

    Parameters
    ----------
    theta : float or torch.Tensor
        Mean-reversion rate, a float or a tensor ``(batch,)`` (one rate per sample, e.g. a
        physics parameter); stored as a buffer.
    center : float
        The mean the process reverts to.
    sigma : float
        Noise amplitude (>= 0).

    Raises
    ------
    ValueError
        If ``theta`` is a tensor that is not 1-D.
    """

    def __init__(self, theta: float | torch.Tensor = 1.0, center: float = 0.0, sigma: float = 0.5):
        super().__init__()
        if isinstance(theta, torch.Tensor):
            if theta.ndim != 1:
                raise ValueError(
                    f"theta must be a float or a tensor of shape (batch,); got {tuple(theta.shape)}"
                )
            self.register_buffer("theta", theta)
        else:
            self.register_buffer("theta", torch.tensor(float(theta)))
        self.center = float(center)
        self.sigma = float(sigma)

    def _rate(self, y: torch.Tensor) -> torch.Tensor:
        theta = self.theta.to(y.dtype)
        return theta[:, None] if theta.ndim == 1 else theta

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Drift ``-theta (y - center)``.

        Parameters
        ----------
        t : torch.Tensor
            Time (unused: the system is autonomous).
        y : torch.Tensor
            States ``(batch, d)``.

        Returns
        -------
        torch.Tensor
            The drift, ``(batch, d)``.
        """
        return -self._rate(y) * (y - self.center)

    @property
    def amplitude(self) -> float:
        """The additive noise amplitude, ``sigma``."""
        return self.sigma


class DoubleWellSDE(_AdditiveNoiseSDE):
    """Double-well diffusion ``dX = (X - X^3) dt + sigma dW`` (Ito, diagonal).

    The drift is ``-V'(X)`` for the potential ``V(x) = (x^2 - 1)^2 / 4``, with wells at
    ``x = -1`` and ``x = +1`` and a barrier of height 1/4 at ``x = 0``.

    Parameters
    ----------
    sigma : float
        Noise amplitude (>= 0).
    """

    def __init__(self, sigma: float = 0.5):
        super().__init__()
        self.sigma = float(sigma)

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Drift ``y - y^3``.

        Parameters
        ----------
        t : torch.Tensor
            Time (unused: the system is autonomous).
        y : torch.Tensor
            States ``(batch, d)``.

        Returns
        -------
        torch.Tensor
            The drift, ``(batch, d)``.
        """
        return y - y**3

    @property
    def amplitude(self) -> float:
        """The additive noise amplitude, ``sigma``."""
        return self.sigma


class Lorenz63SDE(_AdditiveNoiseSDE):
    """Stochastic Lorenz-63 with additive diagonal noise (Ito), state ``(x, y, z)``::

    dx = s (y - x) dt       + noise dW_1
    dy = (x (r - z) - y) dt + noise dW_2
    dz = (x y - b z) dt     + noise dW_3

    Parameters
    ----------
    s, r, b : float
        Lorenz parameters (the classical 10, 28, 8/3).
    noise : float
        Additive noise amplitude (>= 0).
    """

    def __init__(self, s: float = 10.0, r: float = 28.0, b: float = 8.0 / 3.0, noise: float = 1.0):
        super().__init__()
        self.s = float(s)
        self.r = float(r)
        self.b = float(b)
        self.noise = float(noise)

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Drift of the deterministic Lorenz-63 system.

        Parameters
        ----------
        t : torch.Tensor
            Time (unused: the system is autonomous).
        y : torch.Tensor
            States ``(batch, 3)``.

        Returns
        -------
        torch.Tensor
            The drift, ``(batch, 3)``.
        """
        x1, x2, x3 = y[:, 0], y[:, 1], y[:, 2]
        return torch.stack(
            (self.s * (x2 - x1), x1 * (self.r - x3) - x2, x1 * x2 - self.b * x3), dim=-1
        )

    @property
    def amplitude(self) -> float:
        """The additive noise amplitude, ``noise``."""
        return self.noise


# ----------------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------------


def ou_transition_moments(x, dt, theta, center, sigma):
    """Exact mean and variance of the OU transition ``X_{t+dt} | X_t = x``.

    ``mean = center + (x - center) exp(-theta dt)`` and
    ``var = sigma^2 / (2 theta) (1 - exp(-2 theta dt))`` (the transition is Gaussian).
    Arguments broadcast against each other (floats, numpy arrays or torch tensors; with any
    tensor argument the computation is done in torch).

    Parameters
    ----------
    x : float or array_like or torch.Tensor
        The state at time ``t``.
    dt : float or array_like or torch.Tensor
        The time step.
    theta : float or array_like or torch.Tensor
        Mean-reversion rate, > 0.
    center : float or array_like or torch.Tensor
        The long-time mean.
    sigma : float or array_like or torch.Tensor
        Noise amplitude.

    Returns
    -------
    mean : numpy.ndarray or torch.Tensor
        The transition mean, broadcast shape of the arguments.
    var : numpy.ndarray or torch.Tensor
        The transition variance, broadcast shape of the arguments.

    Raises
    ------
    ValueError
        If ``theta <= 0`` anywhere (checked when no argument is a tensor).
    """
    if any(isinstance(a, torch.Tensor) for a in (x, dt, theta, center, sigma)):
        theta_t = torch.as_tensor(theta, dtype=torch.float64)
        decay = torch.exp(-theta_t * dt)
        mean = center + (torch.as_tensor(x) - center) * decay
        var = sigma**2 / (2 * theta_t) * (1 - torch.exp(-2 * theta_t * dt))
        return mean, var
    theta = np.asarray(theta, dtype=np.float64)
    if np.any(theta <= 0):
        raise ValueError("theta must be > 0 for the OU transition moments")
    decay = np.exp(-theta * dt)
    mean = center + (np.asarray(x, dtype=np.float64) - center) * decay
    var = np.asarray(sigma, dtype=np.float64) ** 2 / (2 * theta) * (1 - np.exp(-2 * theta * dt))
    return mean, var


# ----------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    return str(method)


def _initial_state(
    x0, n_samples: int, dim: int, device: torch.device, name: str = "x0"
) -> tuple[torch.Tensor, object]:
    """x0 as a float32 tensor ``(n_samples, dim)`` and a netCDF-safe record of it for attrs.

    Accepted: a real number (every sample, every component), an array of shape ``(dim,)``
    (every sample), ``(n_samples,)`` when ``dim == 1``, or ``(n_samples, dim)``.
    """
    if isinstance(x0, (int, float, np.integer, np.floating)) and not isinstance(x0, bool):
        value = check_float(name, x0)
        return torch.full((n_samples, dim), value, dtype=torch.float32, device=device), value
    try:
        arr = np.asarray(
            x0.detach().cpu() if isinstance(x0, torch.Tensor) else x0, dtype=np.float64
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number or a numeric array; got {x0!r}") from err
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf values")
    if arr.shape == (dim,):
        record: object = [float(v) for v in arr]
        arr = np.broadcast_to(arr, (n_samples, dim))
    elif dim == 1 and arr.shape in ((n_samples,), (n_samples, 1)):
        arr, record = arr.reshape(n_samples, 1), "per-sample array"
    elif arr.shape == (n_samples, dim):
        record = "per-sample array"
    else:
        expected = f"a number, ({dim},) or ({n_samples}, {dim})"
        if dim == 1:
            expected = f"a number, ({n_samples},) or ({n_samples}, 1)"
        raise ValueError(f"{name} must be {expected}; got shape {arr.shape}")
    return torch.as_tensor(np.array(arr), dtype=torch.float32, device=device), record


def _run(
    sde: torch.nn.Module,
    y0: torch.Tensor,
    *,
    t0: float,
    dt: float,
    n_steps: int,
    n_sub: int,
    seed: int,
    method: str,
) -> tuple[torch.Tensor, np.ndarray]:
    """Integrate and return ``(values (sample, time, channel), times)``."""
    from ..adapters.torchsde import integrate_sde

    times = output_times(t0, dt, n_steps)
    ts = torch.as_tensor(times, dtype=torch.float64, device=y0.device)
    with torch.no_grad():
        ys = integrate_sde(sde.to(y0.device), y0, ts, dt=dt / n_sub, seed=seed, method=method)
    return ys.permute(1, 0, 2), times


def _common(n_samples, n_steps, dt, dt_internal, seed, method, device, t0):
    n_samples = check_positive_int("n_samples", n_samples)
    n_steps = check_positive_int("n_steps", n_steps)
    dt = check_float("dt", dt, positive=True)
    n_sub = check_substeps(dt, dt_internal)
    seed = check_seed(seed)
    method = _check_method(method)
    device = check_device(device)
    t0 = check_float("t0", t0)
    return n_samples, n_steps, dt, float(dt_internal), n_sub, seed, method, device, t0


def ornstein_uhlenbeck(
    n_samples: int = 4096,
    n_steps: int = 10,
    dt: float = 0.1,
    *,
    x0=1.0,
    theta=1.0,
    center: float = 0.0,
    sigma: float = 0.5,
    dim: int = 1,
    dt_internal: float = 1e-3,
    seed: int = 0,
    t0: float = 0.0,
    method: str = "euler",
    device: str | torch.device = "cpu",
) -> xr.DataArray:
    """Ornstein-Uhlenbeck ensemble ``dX = -theta (X - center) dt + sigma dW`` in ``dim`` dims.

    Parameters
    ----------
    n_samples : int
        Number of independent trajectories.
    n_steps : int
        Number of coarse output steps (``n_steps + 1`` times, ``t0`` included).
    dt : float
        Output step.
    x0 : float or array_like
        Initial state: a number, an array ``(dim,)``, ``(n_samples,)`` (``dim == 1``) or
        ``(n_samples, dim)``.
    theta : float or array_like
        Mean-reversion rate > 0: a number, or a 1-D array of length ``n_samples`` (one
        rate per sample). With an array, the result carries the coord ``mu_theta`` with
        dims ``("sample",)``: the physics parameter in the layout of
        :mod:`slift_plugin.data`.
    center : float
        Long-time mean.
    sigma : float
        Noise amplitude (>= 0).
    dim : int
        State dimension (independent components).
    dt_internal : float
        Euler step; ``dt / dt_internal`` must be an integer.
    seed : int
        Entropy of the Brownian motion (the only source of randomness).
    t0 : float
        Time of the first output.
    method : str
        torchsde fixed-step method, one of :data:`METHODS`.
    device : str or torch.device
        Where to integrate.

    Returns
    -------
    xarray.DataArray
        ``"state"`` with dims ``("sample", "time", "channel")``, channels ``["x"]``
        (``dim == 1``) or ``["x0", "x1", ...]``.

    Raises
    ------
    ValueError
        If an argument is out of range or of the wrong shape, or ``dt / dt_internal`` is
        not an integer.
    """
    n_samples, n_steps, dt, dt_internal, n_sub, seed, method, device, t0 = _common(
        n_samples, n_steps, dt, dt_internal, seed, method, device, t0
    )
    dim = check_positive_int("dim", dim)
    center = check_float("center", center)
    sigma = check_float("sigma", sigma, nonneg=True)
    params = None
    if isinstance(theta, (int, float, np.integer, np.floating)) and not isinstance(theta, bool):
        theta_val = check_float("theta", theta, positive=True)
        theta_t: float | torch.Tensor = theta_val
        theta_attr: object = theta_val
    else:
        try:
            arr = np.asarray(
                theta.detach().cpu() if isinstance(theta, torch.Tensor) else theta,
                dtype=np.float64,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"theta must be a number or a 1-D array; got {theta!r}") from err
        if arr.shape != (n_samples,):
            raise ValueError(
                f"theta must be a number or a 1-D array of length n_samples={n_samples}; "
                f"got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError("theta must be finite and > 0 for every sample")
        theta_t = torch.as_tensor(arr, dtype=torch.float32, device=device)
        theta_attr = "per-sample (coord mu_theta)"
        params = {"theta": arr}
    y0, x0_attr = _initial_state(x0, n_samples, dim, device)
    sde = OrnsteinUhlenbeckSDE(theta_t, center, sigma)
    values, times = _run(
        sde, y0, t0=t0, dt=dt, n_steps=n_steps, n_sub=n_sub, seed=seed, method=method
    )
    channels = ["x"] if dim == 1 else [f"x{i}" for i in range(dim)]
    attrs = {
        "system": "ornstein_uhlenbeck",
        "equation": "dX = -theta (X - center) dt + sigma dW",
        "theta": theta_attr,
        "center": center,
        "sigma": sigma,
        "dim": dim,
        "x0": x0_attr,
        "t0": t0,
        "dt": dt,
        "dt_internal": dt_internal,
        "n_steps": n_steps,
        "n_samples": n_samples,
        "seed": seed,
        "method": method,
    }
    return state_array(
        values, times, channels, attrs=attrs, params=params, long_name="Ornstein-Uhlenbeck state"
    )


def double_well(
    n_samples: int = 4096,
    n_steps: int = 20,
    dt: float = 2.0,
    *,
    x0=0.0,
    sigma: float = 0.5,
    dt_internal: float = 1e-2,
    seed: int = 0,
    t0: float = 0.0,
    method: str = "euler",
    device: str | torch.device = "cpu",
) -> xr.DataArray:
    """Double-well ensemble ``dX = (X - X^3) dt + sigma dW`` (potential ``(x^2 - 1)^2 / 4``).

    Defaults (``dt = 2``, ``sigma = 0.5``, ``x0 = 0``) are chosen so that one coarse
    transition from ``x = 0`` is clearly bimodal: the unstable linearisation
    ``dX = X dt + sigma dW`` amplifies the noise by ``e^{dt}`` over one step, and the cubic
    term then pushes the samples into the wells. Measured with 20000 samples (seed 0): the
    histogram of ``X_{dt}`` from ``x0 = 0`` (bins of 0.1) peaks at ``x = -0.95`` and
    ``x = +0.95``, 50.4% of the samples end at ``X < 0``, and the probability of
    ``|x| < 0.2`` is 0.47 times that of ``|x - 1| < 0.2`` (or of ``|x + 1| < 0.2``).
    A shorter step is not bimodal yet: with ``dt = 1`` that ratio is 1.85 (``sigma = 0.5``)
    or 1.1 (``sigma = 0.7``), the density still peaks near 0. Over the later steps the noise
    (barrier 1/4 against ``sigma^2 / 2 = 0.125``) makes samples hop between the wells now and
    then (7% of the default steps change the sign of ``X``), so a rollout is a stochastic
    switching process, not a relaxation. The default ensemble (4096 x 20 steps, 4000 Euler
    steps) generates in about 0.5 s on one CPU thread.

    Parameters
    ----------
    n_samples, n_steps : int
        Ensemble size and number of output steps.
    dt : float
        Output step.
    x0 : float or array_like
        A number, or an array of shape ``(1,)``, ``(n_samples,)`` or ``(n_samples, 1)``.
    sigma : float
        Noise amplitude (>= 0).
    dt_internal : float
        Euler step; ``dt / dt_internal`` must be an integer.
    seed : int
        As in :func:`ornstein_uhlenbeck`.
    t0 : float
        As in :func:`ornstein_uhlenbeck`.
    method : str
        As in :func:`ornstein_uhlenbeck`.
    device : str or torch.device
        As in :func:`ornstein_uhlenbeck`.

    Returns
    -------
    xarray.DataArray
        ``"state"`` with dims ``("sample", "time", "channel")``, channel ``["x"]``.

    Raises
    ------
    ValueError
        If an argument is out of range or of the wrong shape, or ``dt / dt_internal`` is
        not an integer.
    """
    n_samples, n_steps, dt, dt_internal, n_sub, seed, method, device, t0 = _common(
        n_samples, n_steps, dt, dt_internal, seed, method, device, t0
    )
    sigma = check_float("sigma", sigma, nonneg=True)
    y0, x0_attr = _initial_state(x0, n_samples, 1, device)
    values, times = _run(
        DoubleWellSDE(sigma),
        y0,
        t0=t0,
        dt=dt,
        n_steps=n_steps,
        n_sub=n_sub,
        seed=seed,
        method=method,
    )
    attrs = {
        "system": "double_well",
        "equation": "dX = (X - X^3) dt + sigma dW",
        "sigma": sigma,
        "x0": x0_attr,
        "t0": t0,
        "dt": dt,
        "dt_internal": dt_internal,
        "n_steps": n_steps,
        "n_samples": n_samples,
        "seed": seed,
        "method": method,
    }
    return state_array(values, times, ["x"], attrs=attrs, long_name="double-well state")


def lorenz63(
    n_samples: int = 1024,
    n_steps: int = 100,
    dt: float = 0.05,
    *,
    x0=None,
    s: float = 10.0,
    r: float = 28.0,
    b: float = 8.0 / 3.0,
    noise: float = 1.0,
    dt_internal: float = 1e-3,
    seed: int = 0,
    t0: float = 0.0,
    method: str = "euler",
    device: str | torch.device = "cpu",
) -> xr.DataArray:
    """Stochastic Lorenz-63 ensemble with additive noise ``noise * dW`` on each component.

    Parameters
    ----------
    n_samples, n_steps : int
        Ensemble size and number of output steps.
    dt : float
        Output step.
    x0 : array_like or None
        Initial state, an array of shape ``(3,)`` (every sample) or ``(n_samples, 3)``.
        None: :data:`LORENZ63_X0` ``= (13.79, 12.95, 34.90)``, a point on the attractor
        (the deterministic state at t = 20 from (1, 1, 1)); all samples start there and
        the noise and the chaos spread them along the attractor.
    s, r, b : float
        Lorenz parameters (the classical 10, 28, 8/3).
    noise : float
        Additive noise amplitude (>= 0).
    dt_internal : float
        Euler step; ``dt / dt_internal`` must be an integer.
    seed : int
        As in :func:`ornstein_uhlenbeck`.
    t0 : float
        As in :func:`ornstein_uhlenbeck`.
    method : str
        As in :func:`ornstein_uhlenbeck`.
    device : str or torch.device
        As in :func:`ornstein_uhlenbeck`.

    Returns
    -------
    xarray.DataArray
        ``"state"`` with dims ``("sample", "time", "channel")``, channels
        ``["x", "y", "z"]``.

    Raises
    ------
    ValueError
        If an argument is out of range or of the wrong shape, or ``dt / dt_internal`` is
        not an integer.
    FloatingPointError
        If the integration produced NaN/Inf (reduce ``dt_internal``).
    """
    n_samples, n_steps, dt, dt_internal, n_sub, seed, method, device, t0 = _common(
        n_samples, n_steps, dt, dt_internal, seed, method, device, t0
    )
    s = check_float("s", s)
    r = check_float("r", r)
    b = check_float("b", b)
    noise = check_float("noise", noise, nonneg=True)
    if x0 is None:
        x0 = np.asarray(LORENZ63_X0)
    if isinstance(x0, (int, float, np.integer, np.floating)):
        raise ValueError(f"x0 must be an array of shape (3,) or ({n_samples}, 3); got a number")
    y0, x0_attr = _initial_state(x0, n_samples, 3, device)
    values, times = _run(
        Lorenz63SDE(s, r, b, noise),
        y0,
        t0=t0,
        dt=dt,
        n_steps=n_steps,
        n_sub=n_sub,
        seed=seed,
        method=method,
    )
    if not bool(torch.isfinite(values).all()):
        raise FloatingPointError(
            "Lorenz-63 integration produced NaN/Inf; reduce dt_internal (explicit Euler)"
        )
    attrs = {
        "system": "lorenz63",
        "equation": "dx = s(y-x) dt + noise dW1; dy = (x(r-z)-y) dt + noise dW2; "
        "dz = (xy-bz) dt + noise dW3",
        "s": s,
        "r": r,
        "b": b,
        "noise": noise,
        "x0": x0_attr,
        "t0": t0,
        "dt": dt,
        "dt_internal": dt_internal,
        "n_steps": n_steps,
        "n_samples": n_samples,
        "seed": seed,
        "method": method,
    }
    return state_array(values, times, ["x", "y", "z"], attrs=attrs, long_name="Lorenz-63 state")
