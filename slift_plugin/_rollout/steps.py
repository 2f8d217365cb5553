"""One rollout step: ``stepper.step`` as it is, or replayed from a CUDA graph.

The chunk loop calls a step object and never knows which kind it holds; the graph
capture, its static buffers and autocast stay here, out of the loop, and
:func:`check_fast_paths` refuses up front a graph or autocast dtype that cannot work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..stepper import Stepper

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def _autocast(device: torch.device, dtype: torch.dtype | None, *, cache: bool = True):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


class EagerStep:
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


class GraphedStep(EagerStep):
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


def check_fast_paths(
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
