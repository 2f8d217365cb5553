"""torch.distributed glue: who am I, which samples are mine, gather the rest.

Everything here is a no-op in a single process (no process group initialised), so the
same code runs unchanged under ``python`` and under ``torchrun --nproc_per_node=N``.
The library never initialises a process group itself: the user (or torchrun's
environment plus :func:`init_from_env`) does.

Sharding is by *contiguous ranges of whole chunks*: :func:`slift_plugin.rollout` gives
rank ``r`` the samples ``shard_bounds(n, r, world_size, chunk_size)``, so every rank runs
exactly the chunks (and, with ``out=``, writes exactly the zarr chunks) that one process
would. Randomness derives from ``(seed, sample block)``, never from the rank or the
chunking, so the ensemble is the same for any number of processes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_rows",
    "barrier",
    "init_from_env",
    "is_main_process",
    "shard_bounds",
    "world",
]


def world() -> tuple[int, int]:
    """This process's place in the default process group.

    Returns
    -------
    tuple of int
        ``(rank, world_size)``; ``(0, 1)`` without a process group.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (always True without a process group).

    Returns
    -------
    bool
        True on rank 0.
    """
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (``dist.barrier``); a no-op in a single process."""
    if world()[1] > 1:
        dist.barrier()


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    With the NCCL backend, the current CUDA device is set to ``LOCAL_RANK`` first.

    Parameters
    ----------
    backend : str or None
        The ``torch.distributed`` backend; None picks ``nccl`` when CUDA is available,
        else ``gloo``.

    Returns
    -------
    bool
        True when a group was initialised (or already existed), False when the process
        was not started by torchrun (no ``WORLD_SIZE``/``RANK`` in the environment).
    """
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def shard_bounds(n: int, rank: int, world_size: int, block: int) -> tuple[int, int]:
    """Samples ``[lo, hi)`` of rank ``rank``: a contiguous range of whole ``block``s.

    Blocks are dealt out as evenly as possible (the first ranks take one block more); a
    rank may get an empty range when there are fewer blocks than ranks.

    Parameters
    ----------
    n : int
        Samples in all (>= 0); the last block may be partial.
    rank : int
        The rank, ``0 <= rank < world_size``.
    world_size : int
        Number of ranks (>= 1).
    block : int
        Samples per block (>= 1).

    Returns
    -------
    tuple of int
        ``(lo, hi)`` with ``0 <= lo <= hi <= n``.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    if n < 0 or block < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need n >= 0, block >= 1 and 0 <= rank < world_size, got n={n}, block={block}, "
            f"rank={rank}, world_size={world_size}"
        )
    n_blocks = -(-n // block)
    per, extra = divmod(n_blocks, world_size)
    first = rank * per + min(rank, extra)
    count = per + (1 if rank < extra else 0)
    return min(n, first * block), min(n, (first + count) * block)


def all_gather_rows(local: Tensor, n: int, block: int) -> Tensor:
    """Concatenate every rank's :func:`shard_bounds` rows into the full ``(n, ...)`` tensor.

    With the NCCL backend the gather goes through the GPU, whatever ``local``'s device:
    every rank's shard is padded to the longest one and gathered into device memory, so
    the whole ensemble (``world_size`` times the longest shard) must fit in each GPU's
    memory before it is copied back. For ensembles larger than that, stream to a zarr
    store instead (``rollout(..., out="ens.zarr")``), which gathers nothing.

    Parameters
    ----------
    local : Tensor
        This rank's rows ``[lo, hi)`` of :func:`shard_bounds`, ``(hi - lo, ...)``.
    n : int
        Rows in all.
    block : int
        The block size the rows were sharded with.

    Returns
    -------
    Tensor
        The full ``(n, ...)`` tensor on every rank, on ``local``'s device; ``local``
        itself in a single process.
    """
    rank, size = world()
    if size == 1:
        return local
    bounds = [shard_bounds(n, r, size, block) for r in range(size)]
    longest = max(hi - lo for lo, hi in bounds)
    # all_gather needs equal shapes on every rank: pad to the longest shard.
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    if dist.get_backend() == "nccl" and not padded.is_cuda:
        padded = padded.cuda()
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat(
        [p[: hi - lo].to(local.device) for p, (lo, hi) in zip(parts, bounds, strict=True)]
    )
