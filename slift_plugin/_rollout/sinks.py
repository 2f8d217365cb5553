"""Where finished chunks go on the host.

:class:`HostDrain` takes a chunk off the run device (on CUDA through two pinned buffers,
so the copy and the sink's work overlap the next chunk's steps) and hands it to a sink:
:class:`MemorySink` for an ensemble held in memory, or
:class:`slift_plugin.store.EnsembleStore` for a zarr store. Apart from the engine so that
the loop only pushes chunks and never waits for the host, whatever the sink.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class MemorySink:
    """The ensemble rows ``[offset, offset + n)`` in host memory."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, offset: int) -> None:
        self.values = torch.empty(shape, dtype=dtype)
        self.offset = offset

    def write(self, lo: int, hi: int, values: Tensor) -> None:
        self.values[lo - self.offset : hi - self.offset].copy_(values)


class HostDrain:
    """Hands finished chunks (on the run device) to ``sink.write(lo, hi, host_tensor)``.

    On CUDA (``staged``), a chunk is copied into one of two pinned host buffers with
    ``non_blocking=True`` and handed to the sink one chunk later, after its copy event:
    the copy and the sink's work (e.g. zarr compression) overlap with the next chunk's
    steps, and the step loop never waits for the host. Other devices (CPU, MPS, XPU)
    copy synchronously: there is no CUDA event to tell when a non-blocking copy is done.
    ``staged=True`` off CUDA (tests) stages with synchronous copies.

    A chunk pushed with its device flag ``finite`` (:func:`.nonfinite.finite_flag`) is
    handed to ``on_nonfinite(lo, hi, host_tensor)`` before the sink when the flag is False;
    the flag travels with the chunk's copy, so reading it never waits for later work.
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
