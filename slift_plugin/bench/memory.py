"""Peak memory of a piece of work: device allocator on CUDA, live tensor bytes on CPU.

On CUDA the caching allocator already keeps the statistic
(``torch.cuda.max_memory_allocated``). The CPU allocator keeps none, and process RSS
mixes in the interpreter, the allocator's free lists and everything allocated before, so
on CPU :class:`TensorMemoryTracker` counts what the work itself holds: every tensor an
operator returns is attributed to its storage, and a storage's bytes are live from its
first appearance until the last tensor viewing it is freed. That is the quantity
``max_memory_allocated`` reports on a GPU, up to the allocator's rounding.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

T = TypeVar("T")

__all__ = ["TensorMemoryTracker", "peak_memory"]


class TensorMemoryTracker(TorchDispatchMode):
    """Track live tensor storage bytes created inside the ``with`` block.

    Tensors that existed before the block (weights, inputs) are not counted unless an
    operator inside returns a view of them, in which case their storage counts while that
    view lives: work that slices its input keeps the input alive, and that is memory the
    work needs.

    Attributes
    ----------
    current : int
        Bytes of the tracked storages alive now.
    peak : int
        The largest value ``current`` has taken.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [nbytes, live views]

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._storages[key]

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0:  # empty tensors own no memory
            return
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


def peak_memory(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, int]:
    """Run ``fn()``; return its result and the peak memory it allocated, in bytes.

    CUDA: the allocator's peak above what was allocated at the start. CPU: the peak of
    live tensor storage created during the call (:class:`TensorMemoryTracker`); this pass
    is slower than a plain call, so time the work separately.

    Parameters
    ----------
    fn : callable
        The work, called once without arguments.
    device : torch.device or str
        Where the work allocates: a CUDA device, or anything else for the CPU tracker.

    Returns
    -------
    result : object
        What ``fn()`` returned.
    peak : int
        Peak bytes allocated by the call.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - base
    with TensorMemoryTracker() as tracker:
        result: Any = fn()
    return result, tracker.peak
