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

Failures: a rank that raises while the others wait at a collective leaves them waiting
until the process group's timeout (30 min by default), and then they fail with a timeout
that does not name the cause. Work that one rank does for all (rank 0 writing a
checkpoint, creating a store) runs inside :func:`fail_together`: every rank leaves the
block together, and if any rank raised, every other rank raises :class:`RankFailedError`
with that rank's error and traceback.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "RankFailedError",
    "all_gather_rows",
    "barrier",
    "fail_together",
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


def init_from_env(backend: str | None = None, timeout: float | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    With the NCCL backend, the current CUDA device is set to ``LOCAL_RANK`` first.

    Parameters
    ----------
    backend : str or None
        The ``torch.distributed`` backend; None picks ``nccl`` when CUDA is available,
        else ``gloo``.
    timeout : float or None
        Seconds any collective may wait for the other ranks before it fails (> 0);
        None keeps torch's default (30 min for gloo, 10 min for NCCL). It bounds how
        long a rank waits for one that hangs or died without closing its connections.

    Returns
    -------
    bool
        True when a group was initialised (or already existed), False when the process
        was not started by torchrun (no ``WORLD_SIZE``/``RANK`` in the environment).
    """
    _check_timeout(timeout)
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    kw = {} if timeout is None else {"timeout": timedelta(seconds=timeout)}
    dist.init_process_group(backend=backend, **kw)
    return True


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")


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


# -- failing together -----------------------------------------------------------------------
MAX_REPORT_BYTES = 16_384  # of a failed rank's error and traceback sent to the others


class RankFailedError(RuntimeError):
    """Another rank raised inside a :func:`fail_together` block that this rank completed.

    The message names the rank, what it was doing and its error; the failed rank's
    traceback is chained as the cause (``__cause__``) and kept in :attr:`reports`.

    Parameters
    ----------
    message : str
        The error message.
    reports : dict of int to str
        Error and traceback of every rank that failed, by rank.
    """

    def __init__(self, message: str, reports: dict[int, str]) -> None:
        super().__init__(message)
        self.reports = reports


class _RemoteTraceback(Exception):
    """The traceback of another rank, shown as the cause of a :class:`RankFailedError`."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


@contextlib.contextmanager
def fail_together(what: str, *, timeout: float | None = None) -> Iterator[None]:
    """Run a block on every rank; leave it together, and fail together if any rank fails.

    At the end of the block the ranks exchange whether their block raised: a rank whose
    block raised re-raises its own exception (noting any other failed rank), every other
    rank raises :class:`RankFailedError` naming the failed rank and its error, with its
    traceback. No rank leaves the block before every rank has finished it, so the block
    also replaces a ``barrier()`` after it. Typical use: work that rank 0 does for all::

        with fail_together("writing the checkpoint"):
            if is_main_process():
                save_checkpoint(path, payload)

    Every rank must enter the same blocks in the same order (it is a collective). A
    single process runs the block as it is. ``KeyboardInterrupt`` and other exceptions
    that are not ``Exception`` skip the exchange: the process is being stopped.

    Parameters
    ----------
    what : str
        What the block does, for the messages (``"writing the checkpoint"``).
    timeout : float or None
        Seconds (> 0) a rank waits at the end of the block for the others; past it,
        it raises ``TimeoutError``. None: the process group's timeout
        (:func:`init_from_env`). A rank that died closes its connections and the
        others fail at once, without waiting for the timeout.

    Yields
    ------
    None
        Inside the block.

    Raises
    ------
    RankFailedError
        On a rank whose block completed, if another rank's block raised.
    TimeoutError
        If another rank has not finished its block within ``timeout``.
    ValueError
        If ``what`` is empty or ``timeout`` is not positive.
    """
    if not isinstance(what, str) or not what:
        raise ValueError(f"what must be a non-empty description, got {what!r}")
    _check_timeout(timeout)
    if world()[1] == 1:
        yield
        return
    try:
        yield
    except Exception as err:
        try:
            others = _exchange_outcomes(what, _report(err), timeout)
        except Exception as lost:  # this rank's own error stays the one it raises
            err.add_note(f"the other ranks could not be told: {type(lost).__name__}: {lost}")
            others = {}
        for rank, report in sorted(others.items()):
            err.add_note(f"rank {rank} also failed while {what}: {_first_line(report)}")
        raise
    others = _exchange_outcomes(what, None, timeout)
    if others:
        failed = "; ".join(
            f"rank {r} failed while {what}: {_first_line(rep)}" for r, rep in sorted(others.items())
        )
        cause = _RemoteTraceback("\n\n".join(f"rank {r}:\n{rep}" for r, rep in others.items()))
        raise RankFailedError(f"{failed} (seen from rank {world()[0]})", others) from cause


def _report(err: BaseException) -> str:
    """``Type: message`` on the first line, then the traceback, cut to the byte limit."""
    try:
        lines = [f"{type(err).__name__}: {err}\n", *traceback.format_exception(err)]
    except Exception:  # a broken __str__ must not keep this rank out of the exchange
        lines = [f"{type(err).__name__} (its message could not be formatted)\n"]
    text = "".join(lines).encode()
    if len(text) > MAX_REPORT_BYTES:  # keep the head (the error) and the innermost frames
        half = MAX_REPORT_BYTES // 2
        text = text[:half] + b"\n[...]\n" + text[-half:]
    return text.decode(errors="replace")


def _first_line(report: str) -> str:
    return report.split("\n", 1)[0]


def _exchange_outcomes(what: str, own: str | None, timeout: float | None) -> dict[int, str]:
    """Every rank's report (failed ranks only, this rank excluded), gathered on every rank.

    Two gathers: the sizes of the reports (0: no failure), then, only if some rank
    failed, the reports themselves, padded to the longest.
    """
    rank, size = world()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":  # NCCL gathers device tensors only
        device = torch.device("cuda", torch.cuda.current_device())
    payload = b"" if own is None else own.encode()
    sizes = _gather(torch.tensor([len(payload)], device=device), size, what, timeout)
    lengths = [int(s) for s in sizes]
    if not any(lengths):
        return {}
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    if payload:  # frombuffer refuses an empty buffer
        padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    reports = _gather(padded, size, what, timeout)
    return {
        r: reports[r][:n].cpu().numpy().tobytes().decode(errors="replace")
        for r, n in enumerate(lengths)
        if n and r != rank
    }


def _gather(local: Tensor, size: int, what: str, timeout: float | None) -> list[Tensor]:
    """``all_gather`` that waits at most ``timeout`` seconds for the other ranks."""
    parts = [torch.empty_like(local) for _ in range(size)]
    start = time.monotonic()
    work = dist.all_gather(parts, local, async_op=True)
    try:
        if timeout is None:
            work.wait()
        else:
            work.wait(timedelta(seconds=timeout))
    except RuntimeError as err:
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise TimeoutError(
                f"rank {world()[0]} waited {waited:.1f} s (timeout {timeout} s) for the other "
                f"ranks to finish {what}"
            ) from err
        raise RankFailedError(
            f"rank {world()[0]} lost the other ranks while {what}: {err}", {}
        ) from err
    return parts
