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
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from .data import tensor_to_ensemble
from .data.ensemble import STEP_TIME_ATTRS, TIME_LONG_NAME
from .distributed import all_gather_rows, fail_together, shard_bounds, world
from .labels import hash_seed
from .processing import ProcessedStepper
from .stepper import Stepper

__all__ = ["AUTOCAST_DTYPES", "NONFINITE_ACTIONS", "SEED_BLOCK", "SEED_MAX", "rollout"]

SEED_BLOCK = 256
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
#: Largest seed: seeds are ints in ``[0, SEED_MAX]``, so that they fit an int64 attribute
#: (netCDF, zarr) and no two seeds alias modulo ``2**64`` (``-1`` and ``2**64 - 1`` did).
SEED_MAX = 2**63 - 1
#: What ``rollout(on_nonfinite=...)`` may do when a trajectory turns NaN or infinite.
NONFINITE_ACTIONS = ("raise", "warn", "ignore")


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


# -- noise ----------------------------------------------------------------------------------
class _BlockNoise:
    """The noise of samples ``[lo, hi)`` for one step after another, drawn in place.

    Every seed block draws all its ``SEED_BLOCK`` rows from its own generator each step,
    also when the chunk covers only part of the block: a draw's values depend on its
    size, so this is what keeps the noise of a sample independent of the chunking.
    Whole blocks are drawn straight into ``buffer`` (``(hi - lo, *noise_shape)``); a
    partial block goes through ``scratch`` (``(SEED_BLOCK, *noise_shape)``) and one copy.
    """

    def __init__(self, seed: int, lo: int, hi: int, buffer: Tensor, scratch: Tensor) -> None:
        self.buffer, self._scratch, self._plan = buffer, scratch, []
        for block in range(lo // SEED_BLOCK, (hi - 1) // SEED_BLOCK + 1):
            b0 = block * SEED_BLOCK
            start, stop = max(lo, b0) - b0, min(hi, b0 + SEED_BLOCK) - b0
            g = torch.Generator(device=buffer.device).manual_seed(hash_seed(seed, block))
            self._plan.append((g, start, stop, buffer[b0 + start - lo : b0 + stop - lo]))

    def draw(self) -> Tensor:
        """Fill and return the buffer with the next step's noise, ``(hi - lo, *noise_shape)``."""
        for g, start, stop, dst in self._plan:
            if stop - start == SEED_BLOCK:
                torch.randn(dst.shape, generator=g, out=dst)
            else:
                torch.randn(self._scratch.shape, generator=g, out=self._scratch)
                dst.copy_(self._scratch[start:stop])
        return self.buffer


# -- one step: eager, or replayed from a CUDA graph ------------------------------------------
def _autocast(device: torch.device, dtype: torch.dtype | None, *, cache: bool = True):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


class _EagerStep:
    """``stepper.step`` as it is (optionally under autocast)."""

    def __init__(self, stepper: Stepper, device: torch.device, autocast_dtype=None) -> None:
        self.stepper, self.device, self.autocast_dtype = stepper, device, autocast_dtype

    def __call__(self, window: Tensor, noise: Tensor | None, mu: Tensor | None, t: float):
        with _autocast(self.device, self.autocast_dtype):
            return self.stepper.step(window, noise, mu=mu, t=t)


@dataclass
class _StaticStep:
    """Static buffers of one batch size (created on first use), the output, the replay."""

    window: Tensor | None = None
    noise: Tensor | None = None
    mu: Tensor | None = None
    out: Tensor | None = None
    replay: Callable[[], None] | None = None


class _GraphedStep(_EagerStep):
    """``stepper.step`` captured once per batch size as a CUDA graph over static buffers.

    A call copies the window (and mu) into the static inputs and replays the graph. The
    static noise input of a batch size is the rollout's own noise buffer (sliced to that
    size, hence at the same address at every step), which the caller fills in place,
    outside the graph, from the per-block generators: the random stream is the eager one
    and no copy is needed. The returned tensor is the graph's static output: it is
    overwritten by the next replay, so the caller copies it out (it does, into the
    trajectory). The time ``t`` of the capture is baked into the graph, hence only
    steppers whose step ignores ``t``.

    ``capture=False`` runs the same buffer plumbing eagerly (CPU tests of this logic).
    """

    def __init__(self, stepper, device, autocast_dtype=None, *, capture: bool = True) -> None:
        super().__init__(stepper, device, autocast_dtype)
        self.capture = capture
        self._static: dict[int, _StaticStep] = {}

    def __call__(self, window: Tensor, noise: Tensor | None, mu: Tensor | None, t: float):
        s = self._static.setdefault(window.shape[0], _StaticStep())
        if s.window is None:
            s.window = torch.empty_like(window, memory_format=torch.contiguous_format)
            s.mu = None if mu is None else torch.empty_like(mu)
            s.noise = noise  # the rollout's buffer, refilled in place before every call
        s.window.copy_(window)
        if mu is not None:
            s.mu.copy_(mu)
        if s.replay is None:
            self._build(s, t)
        s.replay()
        return s.out

    def _run(self, s: _StaticStep, t: float, cache: bool = True) -> Tensor:
        with _autocast(self.device, self.autocast_dtype, cache=cache):
            return self.stepper.step(s.window, s.noise, mu=s.mu, t=t)

    def _build(self, s: _StaticStep, t: float) -> None:
        if not self.capture:

            def replay() -> None:
                s.out = self._run(s, t)

            s.replay = replay
            return
        # The recipe of torch.cuda.graphs: warm up on a side stream (lazy library
        # initialisation must not happen during capture), then capture. Autocast's weight
        # cache must be off inside a graph.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._run(s, t, cache=False)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            s.out = self._run(s, t, cache=False)
        s.replay = graph.replay


def _check_fast_paths(
    stepper: Stepper, device: torch.device, cuda_graph: bool, autocast_dtype: torch.dtype | None
) -> None:
    """Refuse a CUDA graph or an autocast dtype that this rollout cannot use.

    Parameters
    ----------
    stepper : Stepper
        Its ``cuda_graph_safe`` says whether its step may be captured.
    device : torch.device
        The run device; a CUDA graph needs CUDA.
    cuda_graph : bool
        Whether the rollout asks for a CUDA graph.
    autocast_dtype : torch.dtype or None
        One of :data:`AUTOCAST_DTYPES`, or None.

    Raises
    ------
    ValueError
        On the first setting that cannot work.
    """
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise ValueError(
            f"autocast_dtype must be one of {AUTOCAST_DTYPES} or None, got {autocast_dtype!r}"
        )
    if not cuda_graph:
        return
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; this rollout runs on {device}")
    if not stepper.cuda_graph_safe:
        raise ValueError(
            "cuda_graph=True needs a stepper whose step is pure tensor work that ignores t; "
            f"{type(stepper).__name__} declares cuda_graph_safe = False"
        )


# -- chunks to the host -----------------------------------------------------------------------
def _finite_flag(traj: Tensor) -> Tensor:
    """A 0-d bool on ``traj``'s device: True when every value is finite; no host sync.

    One reduction without a temporary of ``traj``'s size: min and max propagate NaN, and
    an infinite value is the min or the max.
    """
    low, high = torch.aminmax(traj)
    return torch.isfinite(low) & torch.isfinite(high)


class _NonFiniteCheck:
    """What happens to a chunk whose device flag says it holds NaN or Inf.

    Called with the chunk on the host ``(hi - lo, n_steps + 1, C, *grid)`` (time 0 is
    the initial state) before it reaches the sink: ``"raise"`` raises a
    FloatingPointError, so the chunk is never written (nor marked done in a store);
    ``"warn"`` warns once per rollout and lets the chunk through.
    """

    def __init__(self, action: str, times: list[float]) -> None:
        self.action, self.times, self.warned = action, times, False

    def __call__(self, lo: int, hi: int, values: Tensor) -> None:
        if self.action == "warn" and self.warned:
            return
        bad = ~torch.isfinite(values.reshape(hi - lo, values.shape[1], -1)).all(-1)
        step = int(bad.any(0).nonzero()[0, 0])  # (sample, time) -> the earliest time
        sample = lo + int(bad[:, step].nonzero()[0, 0])
        message = (
            f"rollout produced NaN/Inf, first at step {step} (time {self.times[step]:g}) of "
            f"sample {sample} (the earliest in samples [{lo}, {hi}), "
            f"{int(bad.any(1).sum())} of which hold NaN/Inf)"
        )
        if self.action == "raise":
            raise FloatingPointError(
                f"{message}. Samples [{lo}, {hi}) were not kept (nor marked done in a zarr "
                "store); on_nonfinite='warn' keeps them, 'ignore' skips this check"
            )
        self.warned = True
        warnings.warn(f"{message} (later chunks are not reported)", RuntimeWarning, stacklevel=2)


class _MemorySink:
    """The ensemble rows ``[offset, offset + n)`` in host memory."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, offset: int) -> None:
        self.values = torch.empty(shape, dtype=dtype)
        self.offset = offset

    def write(self, lo: int, hi: int, values: Tensor) -> None:
        self.values[lo - self.offset : hi - self.offset].copy_(values)


class _HostDrain:
    """Hands finished chunks (on the run device) to ``sink.write(lo, hi, host_tensor)``.

    On CUDA (``staged``), a chunk is copied into one of two pinned host buffers with
    ``non_blocking=True`` and handed to the sink one chunk later, after its copy event:
    the copy and the sink's work (e.g. zarr compression) overlap with the next chunk's
    steps, and the step loop never waits for the host. Other devices (CPU, MPS, XPU)
    copy synchronously: there is no CUDA event to tell when a non-blocking copy is done.
    ``staged=True`` off CUDA (tests) stages with synchronous copies.

    A chunk pushed with its device flag ``finite`` (:func:`_finite_flag`) is handed to
    ``on_nonfinite(lo, hi, host_tensor)`` before the sink when the flag is False; the
    flag travels with the chunk's copy, so reading it never waits for later work.
    """

    def __init__(
        self,
        sink,
        device: torch.device,
        shape,
        dtype,
        *,
        staged: bool | None = None,
        on_nonfinite: Callable[[int, int, Tensor], None] | None = None,
    ):
        self.sink, self.device, self.on_nonfinite = sink, device, on_nonfinite
        cuda = device.type == "cuda"
        self.staged = cuda if staged is None else staged
        n_buffers = 2 if self.staged else 0
        self._buffers = [torch.empty(shape, dtype=dtype, pin_memory=cuda) for _ in range(n_buffers)]
        self._flags = [torch.empty((), dtype=torch.bool, pin_memory=cuda) for _ in range(n_buffers)]
        self._turn = 0
        self._pending: tuple | None = None

    def push(self, lo: int, hi: int, traj: Tensor, finite: Tensor | None = None) -> None:
        if not self.staged:
            self._hand_over(lo, hi, traj.cpu(), finite)
            return
        buf, flag = self._buffers[self._turn][: hi - lo], None
        cuda = self.device.type == "cuda"
        buf.copy_(traj, non_blocking=cuda)
        if finite is not None:
            flag = self._flags[self._turn]
            flag.copy_(finite, non_blocking=cuda)
        self._turn ^= 1
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        # This chunk is pending before the previous one is handed over: should that one
        # fail (a non-finite chunk, a full disk), the caller's flush still writes this one.
        previous, self._pending = self._pending, (lo, hi, buf, flag, event)
        self._finish(previous)

    def flush(self) -> None:
        """Hand the chunk still in flight (if any) to the sink."""
        pending, self._pending = self._pending, None
        self._finish(pending)

    def _finish(self, pending: tuple | None) -> None:
        if pending is None:
            return
        lo, hi, buf, flag, event = pending
        if event is not None:
            event.synchronize()
        self._hand_over(lo, hi, buf, flag)

    def _hand_over(self, lo: int, hi: int, values: Tensor, finite: Tensor | None) -> None:
        if finite is not None and self.on_nonfinite is not None and not bool(finite):
            self.on_nonfinite(lo, hi, values)
        self.sink.write(lo, hi, values)


# -- the engine -------------------------------------------------------------------------------
@dataclass
class _Job:
    """Everything a chunk needs, shared by all chunks of one rollout."""

    stepper: Stepper
    windows: Tensor  # (n, history*C, *grid) on the host; may be an expanded view
    mu: Tensor | None  # (n, n_params)
    times: list[float]  # n_steps + 1
    seed: int
    chunk_size: int
    device: torch.device
    dtype: torch.dtype
    noise_shape: tuple[int, ...] | None
    on_nonfinite: str = "raise"  # one of NONFINITE_ACTIONS

    @property
    def n_steps(self) -> int:
        return len(self.times) - 1

    @property
    def state_shape(self) -> tuple[int, ...]:
        """``(C, *grid)`` of the states actually rolled out."""
        return (self.stepper.n_channels, *self.windows.shape[2:])


def _generate(job: _Job, chunks: Iterable[tuple[int, int]], drain: _HostDrain, step, bar) -> None:
    """Roll out every chunk ``[lo, hi)`` and push its trajectory to ``drain``.

    The trajectory buffer ``(chunk, history - 1 + n_steps + 1, C, *grid)`` also holds
    the ``history - 1`` older initial states in front, so that the window of step ``k``
    is the view ``buffer[:, k : k + history]`` with channels merged: no concatenation,
    no ring to rotate. Buffers are allocated once and sliced for a shorter last chunk.
    Unless the drain ignores blow-ups, a finished chunk is pushed with its finite flag.
    """
    h, (c, *grid), chunk_size = job.stepper.history, job.state_shape, job.chunk_size
    # Steppers that differentiate inside a step (DICE) cannot run under inference_mode;
    # they enable gradients locally and return detached states.
    with torch.no_grad() if job.stepper.requires_grad_in_step else torch.inference_mode():
        kw = {"dtype": job.dtype, "device": job.device}
        traj_full = torch.empty((chunk_size, h + job.n_steps, c, *grid), **kw)
        noise_full = scratch = None
        if job.noise_shape is not None:
            noise_full = torch.empty((chunk_size, *job.noise_shape), **kw)
            scratch = torch.empty((SEED_BLOCK, *job.noise_shape), **kw)
        try:
            for lo, hi in chunks:
                buf = traj_full[: hi - lo]
                buf[:, :h].copy_(job.windows[lo:hi].reshape(hi - lo, h, c, *grid))
                mu = None if job.mu is None else job.mu[lo:hi].to(job.device)
                noise = None
                if noise_full is not None:
                    noise = _BlockNoise(job.seed, lo, hi, noise_full[: hi - lo], scratch)
                _run_chunk(job, buf, noise, mu, step)
                traj = buf[:, h - 1 :]
                finite = None if drain.on_nonfinite is None else _finite_flag(traj)
                drain.push(lo, hi, traj, finite)
                bar.update((hi - lo) * job.n_steps)
        except BaseException:
            # The chunk in flight was finished before the failure (a chunk is pushed only
            # when complete): hand it over, so that a resumed rollout keeps it. A failure
            # of this hand-over must not hide the original error.
            with contextlib.suppress(Exception):
                drain.flush()
            raise
        drain.flush()


def _run_chunk(job: _Job, buf: Tensor, noise: _BlockNoise | None, mu: Tensor | None, step) -> None:
    """Fill ``buf[:, h:]`` step by step; one ``step`` call per output step, no host sync."""
    h = job.stepper.history
    window = buf[:, 0] if h == 1 else buf[:, :h].flatten(1, 2)
    for k in range(job.n_steps):
        x_next = step(window, None if noise is None else noise.draw(), mu, job.times[k])
        buf[:, h + k].copy_(x_next)  # also casts an autocast result to the stepper's dtype
        if h > 1:
            window = buf[:, k + 1 : k + 1 + h].flatten(1, 2)
        else:  # the step's own output is contiguous; a cast one is read back from buf
            window = x_next if x_next.dtype == job.dtype else buf[:, h + k]


# -- public API -------------------------------------------------------------------------------
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


def _check_arguments(
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
        from .store import check_store_path

        check_store_path(out)
    return n_steps, n_samples, chunk_size, seed


def _time_axis(
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


def _run_device(device: str | torch.device | None, home: torch.device) -> torch.device:
    """``device`` (else the stepper's ``home``), refused up front where no tensor can live.

    Parameters
    ----------
    device : str or torch.device or None
        As given to :func:`rollout`.
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


def _inputs(
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
        See :func:`rollout`.
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


@dataclass
class _Labels:
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


def _in_memory(
    job: _Job, labels: _Labels, step: _EagerStep, shard: tuple[int, int], progress: bool
) -> xr.DataArray:
    """Generate this rank's samples ``shard`` in host memory; gather the whole ensemble.

    Parameters
    ----------
    job : _Job
        The rollout.
    labels : _Labels
        Coords and attrs of the result.
    step : _EagerStep
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
    sink = _MemorySink((hi - lo, job.n_steps + 1, *job.state_shape), job.dtype, lo)
    chunks = [(a, min(a + chunk_size, hi)) for a in range(lo, hi, chunk_size)]
    with fail_together("generating the ensemble"):  # no rank left waiting in the gather
        _execute(job, chunks, sink, step, progress)
    return labels.ensemble(all_gather_rows(sink.values, n, chunk_size))


def _to_store(
    job: _Job,
    labels: _Labels,
    step: _EagerStep,
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
    job : _Job
        The rollout.
    labels : _Labels
        Coords and attrs of the result.
    step : _EagerStep
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
    from .store import EnsembleStore, fingerprint

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
        _execute(job, store.pending(*shard), store, step, progress)
    return store.result()


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
    n_steps, n_samples, chunk_size, seed = _check_arguments(
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
    run_device = _run_device(device, home_device)
    _check_fast_paths(stepper, run_device, cuda_graph, autocast_dtype)
    t0, dt, times = _time_axis(stepper, t0, dt, n_steps)
    windows, mu = _inputs(stepper, x0, mu, n_samples, dtype)
    n = windows.shape[0]
    job = _Job(
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
    labels = _Labels(times, mu, coords, param_names, attrs, time_attrs)
    rank, size = world()
    # Whole chunks per rank: every rank runs exactly the chunks one process would run.
    shard = shard_bounds(n, rank, size, job.chunk_size)
    step = (_GraphedStep if cuda_graph else _EagerStep)(stepper, run_device, autocast_dtype)
    if out is None:
        return _in_memory(job, labels, step, shard, progress)
    return _to_store(
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


def _execute(job: _Job, chunks: list[tuple[int, int]], sink, step, progress: bool) -> None:
    """Run ``chunks`` into ``sink`` with the stepper on the run device, in eval mode.

    The stepper is handed back on its own device and in its own train/eval mode, with
    its own weights also when the run or the move back fails.
    """
    stepper = job.stepper
    home_device, _ = stepper.param_device_dtype()
    was_training = stepper.training
    n_work = sum(hi - lo for lo, hi in chunks) * job.n_steps
    bar = tqdm(total=n_work, disable=not progress, desc="rollout", unit="traj-step")
    drain_shape = (job.chunk_size, job.n_steps + 1, *job.state_shape)
    check = None if job.on_nonfinite == "ignore" else _NonFiniteCheck(job.on_nonfinite, job.times)
    held = _held_tensors(stepper)  # references, no copies
    try:
        stepper.to(job.device).eval()
        drain = _HostDrain(sink, job.device, drain_shape, job.dtype, on_nonfinite=check)
        _generate(job, chunks, drain, step, bar)
    finally:
        try:
            stepper.to(home_device)
        except Exception:
            # The weights could not come back (a device that lost them, a move cut short):
            # the stepper's own tensors, held since before the move, are put back instead.
            # Whatever failed in the run still propagates; the stepper is as it was.
            _put_back(held)
        stepper.train(was_training)
        bar.close()


def _held_tensors(module: torch.nn.Module) -> list[tuple]:
    """Every parameter and buffer slot of ``module``, with the tensor, data and grad in it."""
    held = []
    for m in module.modules():
        for slots in (m._parameters, m._buffers):
            for name, t in slots.items():
                if t is not None:
                    grad = t.grad
                    held.append((slots, name, t, t.data, grad, None if grad is None else grad.data))
    return held


def _put_back(held: list[tuple]) -> None:
    """Undo ``Module.to`` on the slots of :func:`_held_tensors`.

    ``Module.to`` either swaps a tensor's ``.data`` (and its grad's) or puts a new tensor
    in the slot (e.g. to or from ``meta``): restore both.
    """
    for slots, name, t, data, grad, grad_data in held:
        t.data = data
        if grad is not None:
            grad.data = grad_data
        t.grad = grad
        slots[name] = t
