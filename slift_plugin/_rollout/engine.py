"""The chunk loop: every chunk of a rollout, step by step, into a drain.

:class:`Job` is what all chunks of one rollout share; :func:`execute` runs a list of
chunks into a sink with the stepper on the run device, and hands the stepper back on its
own device, in its own mode and with its own weights however the run ends. It knows
nothing of coordinates, processes or files: :mod:`.output` picks the chunks and the sink.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..stepper import Stepper
from .noise import SEED_BLOCK, BlockNoise
from .nonfinite import NonFiniteCheck, finite_flag
from .sinks import HostDrain


@dataclass
class Job:
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


def _generate(job: Job, chunks: Iterable[tuple[int, int]], drain: HostDrain, step, bar) -> None:
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
                    noise = BlockNoise(job.seed, lo, hi, noise_full[: hi - lo], scratch)
                _run_chunk(job, buf, noise, mu, step)
                traj = buf[:, h - 1 :]
                finite = None if drain.on_nonfinite is None else finite_flag(traj)
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


def _run_chunk(job: Job, buf: Tensor, noise: BlockNoise | None, mu: Tensor | None, step) -> None:
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


def execute(job: Job, chunks: list[tuple[int, int]], sink, step, progress: bool) -> None:
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
    check = None if job.on_nonfinite == "ignore" else NonFiniteCheck(job.on_nonfinite, job.times)
    held = _held_tensors(stepper)  # references, no copies
    try:
        stepper.to(job.device).eval()
        drain = HostDrain(sink, job.device, drain_shape, job.dtype, on_nonfinite=check)
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
