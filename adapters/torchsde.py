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
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torchsde

from .._rollout.arguments import check_arguments, time_axis
from .._rollout.noise import BlockNoise
from .._rollout.nonfinite import NonFiniteCheck
from ..checkpoint import load_stepper
from ..rollout import SEED_BLOCK, rollout
from ..stepper import Stepper

__all__ = ["DICESDE", "GridBrownian", "SDEStepper", "dice_sde", "integrate_sde", "sdeint"]

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


# torchsde.sdeint's integrator options, with the values that keep its meaning here.
_INTEGRATOR_OPTIONS = ("method", "dt", "adaptive", "rtol", "atol", "dt_min", "options")
_REFUSED_OPTIONS = {
    "logqp": "the KL term of a latent SDE needs a drift and a diffusion; a learned stepper "
    "has neither",
    "extra": "there is no solver state to return: the stepper is the integrator",
    "extra_solver_state": "there is no solver state to resume: the stepper is the integrator",
    "names": "it renames the drift/diffusion methods of an SDE module; a stepper has none",
}


def _check_solver_options(options: Mapping[str, object]) -> None:
    """Refuse what would change the result; check the integrator options as torchsde does."""
    for key, value in options.items():
        if key in _REFUSED_OPTIONS:
            if value in (None, False):  # torchsde's defaults: nothing asked for
                continue
            raise ValueError(f"sdeint({key}=...) is not supported: {_REFUSED_OPTIONS[key]}")
        if key not in _INTEGRATOR_OPTIONS:
            raise TypeError(
                f"sdeint() got an unexpected keyword argument {key!r} (torchsde's options: "
                f"{', '.join(_INTEGRATOR_OPTIONS + tuple(_REFUSED_OPTIONS))}, bm)"
            )
    method = options.get("method")
    methods = sorted(v for k, v in vars(torchsde.settings.METHODS).items() if k[0] != "_")
    if method is not None and method not in methods:
        raise ValueError(f"method must be one of torchsde's {methods}, got {method!r}")
    if options.get("adaptive", False):
        raise ValueError(
            "sdeint(adaptive=True) is not supported: the stepper takes fixed steps of "
            "stepper.dt (one network call each); there is no error estimate to adapt to"
        )


def _seed_from(generator: torch.Generator | None, bm: object) -> int:
    """The rollout seed when none is given: see the "Randomness" paragraph of sdeint."""
    if generator is not None:
        return int(torch.randint(2**62, (), generator=generator))
    if bm is not None:
        # torchsde keeps the entropy on the interval (BrownianTree and BrownianPath wrap one)
        entropy = getattr(bm, "_entropy", getattr(getattr(bm, "_interval", None), "_entropy", None))
        if not isinstance(entropy, int):
            raise ValueError(
                f"cannot read an entropy from bm ({type(bm).__name__}); pass seed= or a "
                "torchsde.BrownianInterval/BrownianTree"
            )
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 2)
    return int(torch.randint(2**62, ()))  # torch's global generator: torch.manual_seed


def _as_times(ts: object) -> object:
    """``ts`` as a float64 tensor when it is a list or tuple of numbers (torchsde accepts
    those too); anything else is returned unchanged for the callers' own checks."""
    if isinstance(ts, (list, tuple)):
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in ts):
            raise ValueError(f"ts must be a 1-D tensor or a list of numbers; got {ts!r}")
        return torch.tensor(ts, dtype=torch.float64)
    return ts


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

    Parameters
    ----------
    sde : torch.nn.Module
        A module in torchsde's interface: attributes ``noise_type`` and ``sde_type``,
        methods ``f(t, y)`` and ``g(t, y)``. For ``noise_type="general"`` (or
        ``"additive"``) it must also define ``brownian_size`` (an int).
    y0 : torch.Tensor
        Initial state ``(batch, d)``, floating point and finite.
    ts : torch.Tensor or list of float
        Output times ``(n_times,)`` with ``n_times >= 2``, strictly increasing.
    dt : float
        Solver step, ``0 < dt <= min(diff(ts))`` (up to a relative rounding tolerance).
    seed : int
        Non-negative integer entropy of the Brownian motion.
    method : str
        A fixed-step torchsde method name (default ``"euler"``).

    Returns
    -------
    torch.Tensor
        The solution at ``ts``, ``(n_times, batch, d)``, dtype and device of ``y0``.
        torchsde steps by accumulating ``t + dt`` (here in float64) and linearly
        interpolates to each output time, so with ``min(diff(ts)) / dt`` an integer the
        outputs are the solver states up to rounding (~1e-15 in time).

    Raises
    ------
    ValueError
        If any argument does not have the shape or value described above.
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
    ts = _as_times(ts)
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


# -- learned steppers in torchsde's call shape --------------------------------------------------
def _step_count(stepper, ts: torch.Tensor) -> list[int]:
    """Output indices ``k`` with ``ts[k] = ts[0] + k * stepper.dt``; raises otherwise."""
    dt = float(stepper.dt)
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"the stepper has no valid step dt ({dt}); set stepper.dt")
    if not isinstance(ts, torch.Tensor) or ts.ndim != 1 or ts.numel() < 2:
        got = tuple(ts.shape) if isinstance(ts, torch.Tensor) else type(ts).__name__
        raise ValueError(f"ts must be a 1-D tensor of at least two times, got {got}")
    offsets = (ts.double() - float(ts[0])) / dt
    steps = torch.round(offsets)
    # float32 times such as 0.05 * k carry ~1e-7 relative error: allow 1e-4 of a step
    if not torch.allclose(offsets, steps, rtol=0, atol=1e-4) or (steps[1:] <= steps[:-1]).any():
        raise ValueError(
            f"ts must be increasing multiples of the stepper's trained step dt={dt} from ts[0]; "
            f"got ts - ts[0] = {(ts - ts[0]).tolist()[:8]}... (no resampling is done)"
        )
    return [int(k) for k in steps]


def _as_stepper(stepper: object, y0: object) -> Stepper:
    """``stepper`` itself, or the stepper a checkpoint path describes (``load_stepper``).

    A rebuilt stepper lives on ``y0``'s device: the caller has no stepper to move.
    """
    if isinstance(stepper, (str, os.PathLike)):
        device = y0.device if isinstance(y0, torch.Tensor) else "cpu"
        stepper = load_stepper(stepper, map_location=device)
    if not isinstance(stepper, Stepper):
        raise TypeError(
            "sdeint's first argument must be a slift Stepper or the path of its checkpoint; "
            f"got {type(stepper).__name__} (a torchsde SDE goes to torchsde.sdeint, or "
            "through SDEStepper)"
        )
    if stepper.history != 1:  # torchsde's y0 is one state; a window needs several
        raise ValueError(
            f"sdeint needs a Markov stepper (history=1); got history={stepper.history}"
        )
    return stepper


def _records_graph(y0: torch.Tensor, mu: object) -> bool:
    """Whether sdeint differentiates: grad mode is on and ``y0`` or ``mu`` requires grad."""
    inputs = (y0, mu)
    return torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in inputs
    )


def _chunk_with_graph(
    stepper: Stepper,
    x: torch.Tensor,
    mu: torch.Tensor | None,
    lo: int,
    seed: int,
    times: list[float],
) -> torch.Tensor:
    """Samples ``[lo, lo + len(x))`` of :func:`rollout`, with autograd: ``(n, len(times), ...)``.

    The noise is rollout's own (:class:`slift_plugin._rollout.noise.BlockNoise` for the same
    samples), so the values are those of the rollout chunk.
    """
    noise_shape = stepper.noise_shape(tuple(x.shape[2:]))
    noise = None
    if noise_shape is not None:
        kw = {"dtype": x.dtype, "device": x.device}
        buffer = torch.empty((x.shape[0], *noise_shape), **kw)
        scratch = torch.empty((SEED_BLOCK, *noise_shape), **kw)
        noise = BlockNoise(seed, lo, lo + x.shape[0], buffer, scratch)
    states = [x]
    for t in times[:-1]:
        # draw() refills one buffer in place; the graph may keep the last step's noise
        eps = None if noise is None else noise.draw().clone()
        states.append(stepper.step(states[-1], eps, mu=mu, t=t))
        if not states[-1].requires_grad:
            raise ValueError(
                f"{type(stepper).__name__}.step returns states without a graph, so sdeint "
                "cannot differentiate it (for DICE, use dice_sde() with torchsde.sdeint); "
                "pass y0 without requires_grad for the ensemble alone"
            )
    return torch.stack(states, 1)


def _rollout_with_graph(
    stepper: Stepper,
    x0: torch.Tensor,
    n_steps: int,
    *,
    mu: object,
    seed: int,
    chunk_size: int,
    t0: float,
    on_nonfinite: str,
) -> torch.Tensor:
    """``rollout(stepper, x0, n_steps, ...).values`` as a tensor with a graph to ``x0``,
    ``mu`` and the stepper's parameters: ``(n, n_steps + 1, C, *grid)``.

    The same chunks, noise, times, eval mode and stepper dtype as :func:`rollout`, so
    each step call sees the inputs it sees there; it runs where the stepper is.
    """
    device, dtype = stepper.param_device_dtype()
    if x0.device != device:  # moving the stepper, as rollout does, would cut its graph
        raise ValueError(
            f"a differentiable sdeint runs on the stepper's device ({device}); y0 is on "
            f"{x0.device}: move one of them"
        )
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("y0 contains NaN/Inf values")
    x0, n = x0.to(dtype), x0.shape[0]
    if mu is not None:
        mu = torch.as_tensor(mu).to(device=device, dtype=dtype)
        mu = mu.expand(n, -1) if mu.ndim == 1 else mu
    stepper.check_mu(mu, n)
    times = time_axis(stepper, t0, None, n_steps)[2].tolist()
    check = None if on_nonfinite == "ignore" else NonFiniteCheck(on_nonfinite, times)
    chunk_size, parts, was_training = min(int(chunk_size), n), [], stepper.training
    stepper.eval()
    try:
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            part = _chunk_with_graph(
                stepper, x0[lo:hi], None if mu is None else mu[lo:hi], lo, seed, times
            )
            if check is not None and not bool(torch.isfinite(part).all()):
                check(lo, hi, part.detach().cpu())
            parts.append(part)
    finally:
        stepper.train(was_training)
    return torch.cat(parts)


def sdeint(
    stepper: Stepper | str | os.PathLike,
    y0: torch.Tensor,
    ts: torch.Tensor | Sequence[float],
    *,
    mu: torch.Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    grid_shape: tuple[int, ...] | None = None,
    chunk_size: int = 65536,
    on_nonfinite: str = "raise",
    bm: object = None,
    **solver_options: object,
) -> torch.Tensor:
    """Run a learned slift stepper with the call shape and output layout of ``torchsde.sdeint``.

    ``y0`` is ``(batch, state_size)``; field states ``(C, *grid)`` are passed flattened to
    ``C * prod(grid)`` as torchsde requires (give ``grid_shape`` for resolution-agnostic
    steppers). ``ts`` must be ``ts[0] + k * stepper.dt`` for increasing integers ``k``: one
    stepper call per ``dt``, never resampled.

    Randomness, as in torchsde, is fresh per call unless fixed: ``seed`` fixes it; else one
    draw of ``generator``; else ``bm``'s entropy (a ``torchsde.BrownianInterval`` or
    ``BrownianTree`` built with ``entropy=``: the same ``bm`` gives the same ensemble,
    another entropy another one; the learned noise is not ``bm``'s Brownian path); else
    one draw of torch's global generator, so ``torch.manual_seed`` reproduces a call and
    successive calls differ.

    torchsde options: those that only choose or tune torchsde's numerical integrator
    (``method``, ``dt``, ``adaptive=False``, ``rtol``, ``atol``, ``dt_min``, ``options``)
    have no counterpart, because the stepper is the integrator (one network call per
    ``stepper.dt``): they are checked as torchsde checks them (a method torchsde does not
    know is refused) and otherwise have no effect, so that switching a script changes the
    import and the first argument only. Options that change what is computed or returned
    (``adaptive=True``, ``logqp``, ``extra``, ``extra_solver_state``, ``names``) and any
    keyword torchsde does not have are refused with the reason.

    Dtypes: the stepper computes in its own dtype (that of its parameters), ``y0`` cast to
    it; the result is cast back to the dtype of ``y0``, as ``torchsde.sdeint`` returns.
    ``y0`` must therefore be a real floating-point tensor: an integer or bool ``y0`` would
    give a truncated (integer) path, and a complex one would lose its imaginary part, so
    both are refused rather than promoted. ``ts`` may be a tensor or, as in torchsde, a
    list or tuple of numbers (read in float64).

    Gradients: when grad mode is on and ``y0`` (or a tensor ``mu``) requires grad, the
    steps are recorded by autograd, as ``torchsde.sdeint`` records its solver steps: the
    result is differentiable with respect to ``y0``, ``mu`` and every stepper parameter
    that requires grad (for the parameters alone, pass ``y0.requires_grad_()``); the
    noise is a constant. The path is the sampling path: the same chunks, noise draws,
    eval mode and dtype as :func:`slift_plugin.rollout`, so the values equal those of
    the call without gradients (bit for bit on the CPU, where it is tested). Every
    step's activations are kept for the backward pass (memory grows with batch x steps;
    ``chunk_size`` does not bound it), and the steps run on the stepper's device, which
    must be ``y0``'s. The step must be differentiable: a stepper whose step returns
    states without a graph (DICE: use :func:`dice_sde` with ``torchsde.sdeint``) is
    refused; StochasticLifting, MeanRegression, EnergyScoreLifting and FlowMatching
    differentiate (FlowMatching's in-place Euler buffers are none that its graph keeps;
    autograd would raise at ``backward`` rather than return a wrong gradient).

    Without gradients (under ``torch.no_grad()``, or with inputs that do not require
    grad, as a torchsde script that samples calls it), the ensemble is generated by
    :func:`slift_plugin.rollout` under ``torch.inference_mode`` from ``y0.detach()``,
    and the result does not require grad although a trained stepper's parameters do:
    a plain sampling call stays as fast and lean as ``rollout``.

    Parameters
    ----------
    stepper : Stepper or str or os.PathLike
        A trained slift stepper with a finite step ``stepper.dt`` and ``history=1``, or
        the path of its checkpoint, which ``slift_plugin.load_stepper(path)`` rebuilds
        (written by :func:`slift_plugin.save_stepper` or :func:`slift_plugin.fit`): a
        torchsde script then swaps the SDE object for a file name.
    y0 : torch.Tensor
        Initial states ``(batch, state_size)``, ``state_size = C * prod(grid)``; a real
        floating-point dtype (float16, bfloat16, float32 or float64). Requiring grad
        makes the result differentiable (see above).
    ts : torch.Tensor or sequence of float
        Output times ``(n_times,)``, ``n_times >= 2``: ``ts[0] + k * stepper.dt`` for
        increasing integers ``k``.
    mu : torch.Tensor or None
        Physics parameters ``(n_params,)`` or ``(batch, n_params)``; requiring grad
        makes the result differentiable (see above).
    seed : int or None
        Seed of the rollout's noise.
    generator : torch.Generator or None
        Used for one draw of the seed when ``seed`` is None (a generator seeded with 0
        when both are None).
    grid_shape : tuple of int or None
        The grid of field states; needed for resolution-agnostic steppers.
    chunk_size : int
        Samples generated together (see :func:`slift_plugin.rollout`).
    on_nonfinite : str
        What a NaN/Inf state does (see :func:`slift_plugin.rollout`): ``"raise"`` (the
        default, naming the first step and sample), ``"warn"`` or ``"ignore"``.
        ``torchsde.sdeint`` returns NaN paths silently; pass ``"ignore"`` for that.
    bm : torchsde.BrownianInterval, BrownianTree or None
        Used for its entropy only (see above).
    **solver_options : object
        torchsde's integrator options (``method``, ``dt``, ``adaptive``, ``rtol``,
        ``atol``, ``dt_min``, ``options``), checked and without effect (see above).

    Returns
    -------
    torch.Tensor
        ``(n_times, batch, state_size)`` in the dtype and device of ``y0``, computed in
        the stepper's dtype; with a graph when ``y0`` or ``mu`` requires grad.

    Raises
    ------
    TypeError
        If ``stepper`` is neither a :class:`slift_plugin.Stepper` nor a path (a torchsde
        SDE, say), or an unknown keyword is given.
    ValueError
        If ``y0`` is not a real floating-point ``(batch, state_size)`` tensor for the
        stepper's state, ``ts`` is not on the stepper's step, the stepper has no valid
        ``dt`` or a history above one, a resolution-agnostic stepper gets no
        ``grid_shape``, an option cannot be honoured, or a differentiable call has
        ``y0`` off the stepper's device or a stepper whose step has no graph.
    FloatingPointError
        With ``on_nonfinite="raise"``, when a state is NaN or infinite.
    slift_plugin.CheckpointError
        If a checkpoint path cannot be read or rebuilt into a stepper.
    """
    stepper = _as_stepper(stepper, y0)
    if not isinstance(y0, torch.Tensor) or y0.ndim != 2:
        got = tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__
        raise ValueError(f"y0 must be a tensor of shape (batch, state_size); got {got}")
    if not y0.is_floating_point():  # the cast back to y0's dtype would truncate the path
        raise ValueError(
            f"y0 must be a real floating-point tensor; got dtype {y0.dtype} (convert it "
            "first, e.g. y0.float(): the result is returned in y0's dtype)"
        )
    ts = _as_times(ts)
    steps = _step_count(stepper, ts)
    grid = tuple(grid_shape) if grid_shape is not None else tuple(stepper.grid_shape)
    if any(g is None for g in grid):
        raise ValueError("this stepper is resolution-agnostic: pass grid_shape=(...)")
    state_shape = (stepper.n_channels, *grid)
    if y0.shape[1] != math.prod(state_shape):
        raise ValueError(
            f"y0 has state size {y0.shape[1]}, but the stepper's state {state_shape} flattens "
            f"to {math.prod(state_shape)}"
        )
    _check_solver_options(solver_options)
    if seed is None:
        seed = _seed_from(generator, bm)
    x0 = y0.reshape(y0.shape[0], *state_shape)
    run = dict(mu=mu, seed=seed, chunk_size=chunk_size, t0=float(ts[0]), on_nonfinite=on_nonfinite)
    if _records_graph(y0, mu):
        _, _, run["chunk_size"], run["seed"] = check_arguments(
            steps[-1], None, chunk_size, seed, on_nonfinite, None
        )
        values = _rollout_with_graph(stepper, x0, steps[-1], **run)[:, steps]
    else:
        ens = rollout(stepper, x0.detach(), steps[-1], device=y0.device, **run)
        values = torch.as_tensor(ens.values)[:, steps]  # (batch, len(ts), *state)
    return values.reshape(y0.shape[0], len(steps), -1).transpose(0, 1).to(y0)


class GridBrownian(torchsde.BaseBrownian):
    """A Brownian path on the grid ``t0 + j h`` built from given standard normal draws.

    ``increments`` is ``(n_steps, batch, m)``: ``W(t0 + (j+1) h) - W(t0 + j h) =
    sqrt(h) * increments[j]``. Queries must fall on the grid (fixed-step solvers with
    ``dt = h``). This is how :class:`SDEStepper` takes its randomness from the explicit
    noise of the :class:`slift_plugin.Stepper` contract.

    Parameters
    ----------
    t0 : float
        Start of the grid.
    h : float
        Grid spacing.
    increments : torch.Tensor
        Standard normal draws ``(n_steps, batch, m)``.

    Raises
    ------
    ValueError
        When queried off the grid, or for a Levy area (``return_U`` / ``return_A``).
    """

    def __init__(self, t0: float, h: float, increments: torch.Tensor) -> None:
        self.t0, self.h = float(t0), float(h)
        zero = torch.zeros_like(increments[:1])
        self._w = torch.cat([zero, math.sqrt(h) * increments]).cumsum(0)

    def _index(self, t) -> int:
        j = (float(t) - self.t0) / self.h
        k = round(j)
        # torchsde accumulates t + dt in the dtype of ts: allow float32 round-off
        if abs(j - k) > 1e-3 or not 0 <= k < self._w.shape[0]:
            raise ValueError(f"GridBrownian queried at t={float(t)}, off its grid (h={self.h})")
        return k

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U or return_A:
            raise ValueError("GridBrownian has no Levy area: use 'euler' or 'milstein'")
        if tb is None:
            return self._w[self._index(ta)]
        return self._w[self._index(tb)] - self._w[self._index(ta)]

    def __repr__(self) -> str:
        return f"GridBrownian(t0={self.t0}, h={self.h}, shape={tuple(self.shape)})"

    @property
    def dtype(self):
        """dtype of the path."""
        return self._w.dtype

    @property
    def device(self):
        """Device of the path."""
        return self._w.device

    @property
    def shape(self):
        """Shape of one value of the path, ``(batch, m)``."""
        return self._w.shape[1:]

    @property
    def levy_area_approximation(self):
        """``"none"``: the path has no Levy area."""
        return "none"


_GRID_METHODS = ("euler", "milstein")


class SDEStepper(Stepper):
    """Any torchsde SDE (a physics model or a trained neural SDE) as a slift stepper.

    One :meth:`step` integrates the SDE with ``torchsde.sdeint`` from ``t`` to ``t + dt`` in
    fixed steps of ``dt_internal``. Its Brownian increments are the explicit noise of the
    stepper contract, ``(dt / dt_internal, brownian_size)`` standard normals per sample, fed
    to torchsde through a :class:`GridBrownian`. ``rollout`` draws them from
    ``(seed, sample block)``, so ensembles do not depend on chunking, and
    ``rollout``/``evaluate``/benchmarks treat physics SDEs and learned steppers alike.

    States are vectors ``(batch, d)`` as in torchsde. Methods: ``"euler"`` (Ito, any noise
    type) and ``"milstein"`` (diagonal or scalar noise).

    Parameters
    ----------
    sde : torch.nn.Module
        An Ito SDE in torchsde's interface (``noise_type``, ``sde_type``, ``f``, ``g``;
        ``brownian_size`` for general or additive noise).
    state_size : int
        ``d``, the size of a state.
    dt : float
        Output step, > 0.
    dt_internal : float
        Solver step, > 0; ``dt / dt_internal`` must be an integer.
    method : str
        ``"euler"`` or ``"milstein"``.

    Attributes
    ----------
    sde : torch.nn.Module
        The SDE.
    brownian_size : int
        Brownian dimensions per sample.
    n_internal : int
        Solver steps per output step.
    dt_internal : float
        The solver step, ``dt / n_internal``.

    Raises
    ------
    ValueError
        If the SDE is not Ito or has no valid noise type / ``brownian_size``, ``method``
        is unknown or does not support the noise type, or the steps are not as described.
    """

    def __init__(
        self,
        sde: torch.nn.Module,
        state_size: int,
        *,
        dt: float,
        dt_internal: float,
        method: str = "euler",
    ) -> None:
        super().__init__((int(state_size),), dt=dt)
        sde_type = getattr(sde, "sde_type", None)
        if sde_type != "ito":
            raise ValueError(f"SDEStepper integrates Ito SDEs; sde.sde_type is {sde_type!r}")
        self.brownian_size = _brownian_dim(sde, int(state_size))
        if method not in _GRID_METHODS:
            raise ValueError(f"method must be one of {_GRID_METHODS}, got {method!r}")
        if method == "milstein" and sde.noise_type not in ("diagonal", "scalar"):
            raise ValueError(
                f"milstein needs diagonal or scalar noise; sde.noise_type is {sde.noise_type!r}"
            )
        if not (dt_internal > 0 and dt > 0):
            raise ValueError(f"dt and dt_internal must be > 0, got {dt}, {dt_internal}")
        n = dt / dt_internal
        if abs(n - round(n)) > 1e-6 * max(1.0, n):
            raise ValueError(f"dt / dt_internal must be an integer, got {dt} / {dt_internal}")
        self.sde = sde
        self.method = method
        self.n_internal = int(round(n))
        self.dt_internal = dt / self.n_internal

    def noise_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.n_internal, self.brownian_size)

    def step(self, window, noise=None, *, mu=None, t=None):
        self.check_window(window)
        self.check_mu(mu, window.shape[0])
        expected = (window.shape[0], self.n_internal, self.brownian_size)
        if noise is None or tuple(noise.shape) != expected:
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(f"SDEStepper needs noise of shape {expected}, got {got}")
        t0 = 0.0 if t is None else float(t)
        bm = GridBrownian(t0, self.dt_internal, noise.transpose(0, 1))
        ts = torch.tensor([t0, t0 + self.dt], dtype=window.dtype, device=window.device)
        ys = torchsde.sdeint(self.sde, window, ts, bm=bm, method=self.method, dt=self.dt_internal)
        return ys[-1]

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Refused: this stepper integrates a given SDE, there is nothing to fit here.

        Parameters
        ----------
        batch : Mapping[str, torch.Tensor]
            Ignored.

        Raises
        ------
        TypeError
            Always; train a neural SDE's networks with torchsde's own tools, then wrap it.
        """
        raise TypeError(
            f"{type(self).__name__} integrates a given torchsde SDE and has no training loss; "
            "train a neural SDE with torchsde (e.g. sdeint_adjoint), then wrap it"
        )


class DICESDE(torch.nn.Module):
    """A trained DICE model as a torchsde SDE: drift ``grad_x s(x, t, mu)``, diffusion sigma.

    Ito, diagonal noise. States are flattened ``(batch, C * prod(grid))`` as torchsde
    requires; for fields the diffusion is ``sigma / sqrt(h)`` per cell (space-time white
    noise on the unit domain, cell volume ``h``), matching :meth:`DICE.step`. The drift
    keeps its graph when gradients are enabled, so ``torchsde.sdeint_adjoint`` and
    backpropagation through ``torchsde.sdeint`` both reach the potential's parameters.

    Parameters
    ----------
    dice : DICE
        A trained :class:`slift_plugin.DICE`.
    mu : torch.Tensor or None
        Physics parameters ``(n_params,)``, shared by the whole batch.
    grid_shape : tuple of int or None
        The grid of field states; needed for resolution-agnostic models.

    Raises
    ------
    ValueError
        If the model is resolution-agnostic and no ``grid_shape`` is given.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, dice, mu: torch.Tensor | None = None, grid_shape=None) -> None:
        super().__init__()
        self.dice = dice
        grid = tuple(grid_shape) if grid_shape is not None else tuple(dice.grid_shape)
        if any(g is None for g in grid):
            raise ValueError("this DICE model is resolution-agnostic: pass grid_shape=(...)")
        self.state_shape = (dice.n_channels, *grid)
        self.register_buffer(
            "mu", None if mu is None else torch.as_tensor(mu, dtype=torch.float32).reshape(1, -1)
        )
        cell = 1.0 / math.prod(grid) if grid else 1.0
        self.diffusion = dice.sigma / math.sqrt(cell)

    def _mu(self, batch: int):
        return None if self.mu is None else self.mu.expand(batch, -1)

    def f(self, t, y):
        """Drift: the DICE velocity ``grad_x s(x, t, mu)``.

        Parameters
        ----------
        t : torch.Tensor
            Time.
        y : torch.Tensor
            Flattened states ``(batch, C * prod(grid))``.

        Returns
        -------
        torch.Tensor
            ``(batch, C * prod(grid))``, with a graph to the potential's parameters when
            gradients are enabled.
        """
        x = y.reshape(y.shape[0], *self.state_shape)
        v, _ = self.dice.velocity(x, t, self._mu(y.shape[0]), create_graph=torch.is_grad_enabled())
        return v.reshape(y.shape[0], -1)

    def g(self, t, y):
        """Diagonal diffusion, ``sigma`` (``sigma / sqrt(h)`` per cell for fields).

        Parameters
        ----------
        t : torch.Tensor
            Time (unused).
        y : torch.Tensor
            Flattened states ``(batch, C * prod(grid))``.

        Returns
        -------
        torch.Tensor
            ``(batch, C * prod(grid))``, constant.
        """
        return torch.full_like(y, self.diffusion)


def dice_sde(dice, mu: torch.Tensor | None = None, grid_shape=None) -> DICESDE:
    """``DICESDE(dice, mu, grid_shape)``: see :class:`DICESDE`.

    Parameters
    ----------
    dice : DICE
        A trained :class:`slift_plugin.DICE`.
    mu : torch.Tensor or None
        Physics parameters ``(n_params,)``, shared by the whole batch.
    grid_shape : tuple of int or None
        The grid of field states; needed for resolution-agnostic models.

    Returns
    -------
    DICESDE
    """
    return DICESDE(dice, mu, grid_shape)
