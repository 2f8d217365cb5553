"""fit(): one training loop for every stepper.

AdamW with a cosine learning-rate schedule over all optimisation steps, a progress bar,
periodic atomic checkpoints and exact resume. The shuffling of epoch ``e`` comes from a
generator seeded with ``(seed, e)``, so a resumed run sees the same batches as an
uninterrupted one.

Under ``torchrun`` (a default process group initialised, e.g. by
:func:`slift_plugin.distributed.init_from_env`) the same loop trains data-parallel with
:class:`~torch.nn.parallel.DistributedDataParallel`. ``batch_size`` stays the *global*
batch: every rank draws the same seeded permutation and takes a contiguous share of
each global batch, DDP averages the gradients, and each rank's loss is weighted by its
share, so step ``i`` optimises the same loss on the same examples as a single process
(up to float round-off). Checkpoints hold no rank-specific state: a run may resume
with another number of processes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    tensor_state,
)
from .distributed import barrier, is_main_process, shard_bounds, world
from .labels import hash_seed
from .stepper import Stepper

CHECKPOINT_NAME = "last.pt"


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch mean training loss and timings."""

    losses: list[float] = field(default_factory=list)
    epochs: int = 0
    resumed_from_epoch: int = 0
    wall_time: float = 0.0
    checkpoint: Path | None = None
    world_size: int = 1

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


def _steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
    if hasattr(dataset, "steps_per_epoch"):
        return dataset.steps_per_epoch(batch_size)
    return math.ceil(len(dataset) / batch_size)


def _check_shardable(dataset: object, batch_size: int, world_size: int) -> None:
    """Refuse, before any work, what data-parallel training could not split exactly."""
    if world_size == 1:
        return
    if batch_size % world_size:
        raise ValueError(
            f"batch_size is the global batch, split evenly over the {world_size} processes; "
            f"it must be a multiple of {world_size}, got {batch_size}"
        )
    if hasattr(dataset, "iter_batches") and not hasattr(dataset, "shard_batch"):
        raise TypeError(
            f"{type(dataset).__name__} draws its own batches (iter_batches) and fit() does not "
            f"know their layout, so it cannot split them over {world_size} processes; give it "
            "shard_batch(batch, rank, world_size) (as SnapshotDataset has), or train in one "
            "process"
        )


def _index_shards(
    perm: Tensor, batch_size: int, rank: int, world_size: int
) -> Iterator[tuple[Tensor, float]]:
    """``(indices, share)`` of this rank for each global batch of ``perm``.

    Each global batch is cut into contiguous, nearly equal pieces (the first ranks take one
    more example when it does not divide); ``share`` is this rank's fraction of the
    global batch, 1.0 in one process.
    """
    for idx in perm.split(batch_size):
        lo, hi = shard_bounds(len(idx), rank, world_size, 1)
        if hi > lo:
            yield idx[lo:hi], (hi - lo) / len(idx)
        else:
            # A last batch with fewer examples than ranks: this rank must still take part
            # in the gradient all-reduce, so it computes one example's loss at weight 0.
            yield idx[:1], 0.0


def _batches(
    dataset: Dataset, batch_size: int, generator: torch.Generator, rank: int, world_size: int
) -> Iterator[tuple[dict[str, Tensor], float]]:
    """This rank's part of every global batch of one epoch, with its share (see above)."""
    if hasattr(dataset, "iter_batches"):  # datasets that draw their own batches (DICE)
        for batch in dataset.iter_batches(batch_size, generator):
            if world_size == 1:
                yield batch, 1.0
            else:
                yield dataset.shard_batch(batch, rank, world_size), 1.0 / world_size
        return
    perm = torch.randperm(len(dataset), generator=generator)
    shards = list(_index_shards(perm, batch_size, rank, world_size))
    if hasattr(dataset, "get_batch"):
        for idx, share in shards:
            yield dataset.get_batch(idx), share
    else:
        # Generic map-style datasets of dict items (e.g. neuraloperator datasets). The
        # generator is passed so that the loader never draws from the global RNG.
        loader = DataLoader(
            dataset, batch_sampler=[idx.tolist() for idx, _ in shards], generator=generator
        )
        yield from zip(loader, (share for _, share in shards), strict=True)


class _LossOf(nn.Module):
    """``forward(batch) = stepper.loss(batch)``.

    DistributedDataParallel arms its gradient all-reduce in ``forward``; steppers train
    through ``loss()``, so DDP wraps this module instead of the stepper.
    """

    def __init__(self, stepper: Stepper) -> None:
        super().__init__()
        self.stepper = stepper

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.stepper.loss(batch)


def _data_parallel(stepper: Stepper, device: torch.device) -> DistributedDataParallel:
    """Wrap ``stepper.loss`` in DDP. Construction broadcasts rank 0's parameters and
    buffers, so every rank starts from the same model whatever its local initialisation."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(_LossOf(stepper), device_ids=[index])
    return DistributedDataParallel(_LossOf(stepper))


def _sum_over_ranks(total: Tensor, count: int, world_size: int) -> tuple[Tensor, int]:
    """Sum a step's ``(loss * examples, examples)`` over all ranks."""
    if world_size == 1:
        return total, count
    both = torch.stack([total, torch.tensor(float(count), dtype=total.dtype, device=total.device)])
    dist.all_reduce(both)
    return both[0], round(float(both[1]))


def _check_ranks_agree(facts: dict[str, object], world_size: int) -> None:
    """Raise on every rank if the ranks disagree on what shapes the run.

    Different datasets or settings would train different models, and a checkpoint seen by
    some ranks only (no shared filesystem) would resume rank 0 alone: both silently.
    """
    if world_size == 1:
        return
    gathered: list[dict[str, object] | None] = [None] * world_size
    dist.all_gather_object(gathered, facts)
    by_rank = {key: [f[key] for f in gathered] for key in facts}
    differing = {key: v for key, v in by_rank.items() if any(x != v[0] for x in v)}
    if differing:
        raise RuntimeError(
            f"the {world_size} processes disagree on {sorted(differing)} (values by rank: "
            f"{differing}); every rank must call fit() with the same dataset and arguments, "
            "and see the same checkpoint_dir (a shared filesystem)"
        )


def fit(
    stepper: Stepper,
    dataset: Dataset,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    min_lr_ratio: float = 0.0,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: bool = True,
    progress: bool = True,
    description: str = "fit",
) -> FitResult:
    """Train ``stepper`` on ``dataset`` by minimising ``stepper.loss(batch)``.

    Parameters
    ----------
    stepper:
        Any :class:`Stepper`. ``stepper.prepare(dataset)`` runs first (normalisation).
    dataset:
        A map-style dataset of dict items; datasets with ``get_batch(indices)`` are
        batched without a DataLoader, datasets with ``iter_batches`` draw their own
        (and, to train data-parallel, split them with ``shard_batch(batch, rank, W)``).
    epochs, batch_size, lr, weight_decay, min_lr_ratio, grad_clip:
        AdamW with cosine decay from ``lr`` to ``min_lr_ratio * lr`` over all steps.
        ``batch_size`` is the global batch; under a process group of ``W`` ranks it must
        be a multiple of ``W`` and each rank computes ``batch_size / W`` examples.
    seed:
        Seeds the shuffling (epoch ``e`` uses ``hash(seed, e)``), the same on every rank.
    device:
        Defaults to the stepper's device; under an NCCL process group, to this rank's
        current CUDA device.
    checkpoint_dir, checkpoint_every:
        Write ``checkpoint_dir/last.pt`` atomically every ``checkpoint_every`` epochs and
        at the end (rank 0 only; the others wait); with ``resume=True`` an existing one is
        continued by every rank, so ``checkpoint_dir`` must be on a shared filesystem.

    Returns
    -------
    FitResult with the per-epoch mean training loss (over all ranks' examples).
    """
    if len(dataset) == 0:
        raise ValueError("cannot fit on an empty dataset (len(dataset) == 0)")
    if epochs < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(
            f"epochs, batch_size and checkpoint_every must be >= 1, got {epochs}, "
            f"{batch_size}, {checkpoint_every}"
        )
    rank, world_size = world()
    _check_shardable(dataset, batch_size, world_size)
    if device is None and world_size > 1 and dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())  # set per rank by torchrun
    if device is not None:
        stepper.to(device)
    device = stepper.param_device_dtype()[0]
    stepper.prepare(dataset)
    params = [p for p in stepper.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(stepper).__name__} has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = _steps_per_epoch(dataset, batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * steps_per_epoch, eta_min=min_lr_ratio * lr
    )
    result = FitResult()
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    # Everything that shapes the optimisation: a resume with other values would not
    # continue the same run.
    config = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "min_lr_ratio": min_lr_ratio,
        "grad_clip": grad_clip,
        "seed": seed,
        "n_examples": len(dataset),
    }
    resuming = ckpt_path is not None and resume and ckpt_path.exists()
    _check_ranks_agree({"config": config, "resume from a checkpoint": resuming}, world_size)
    if resuming:
        state = load_checkpoint(ckpt_path, map_location=device)
        if state.get("config") != config:
            raise CheckpointError(
                f"checkpoint {ckpt_path} was written with {state.get('config')}, "
                f"cannot resume with {config}; use another checkpoint_dir or resume=False"
            )
        load_model_state(stepper, state["model"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result.losses = list(state["losses"])
        result.resumed_from_epoch = int(state["epoch"])

    def write_checkpoint(epoch: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": tensor_state(stepper),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "losses": result.losses,
                "config": config,
            },
        )

    # DDP only under a process group: one process keeps the plain, hook-free stepper.
    loss_of = stepper.loss if world_size == 1 else _data_parallel(stepper, device)
    start = time.perf_counter()
    stepper.train()
    bar = tqdm(
        range(result.resumed_from_epoch, epochs),
        desc=description,
        disable=not progress or not is_main_process(),
        initial=result.resumed_from_epoch,
        total=epochs,
        dynamic_ncols=True,
    )
    for epoch in bar:
        g = torch.Generator().manual_seed(hash_seed(seed, epoch))
        total, count = torch.zeros((), device=device), 0
        for batch, share in _batches(dataset, batch_size, g, rank, world_size):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = loss_of(batch)
            n = batch["x"].shape[-len(stepper.state_shape) - 1] if "x" in batch else 1
            n = n if share else 0  # a weight-0 stand-in example (see _index_shards)
            # Summed over ranks before backward, so every rank sees the same value and a
            # non-finite loss stops all of them together instead of deadlocking DDP.
            step_total, step_count = _sum_over_ranks(loss.detach() * n, n, world_size)
            if not torch.isfinite(step_total):
                raise FloatingPointError(
                    f"loss became {float(step_total) / max(step_count, 1)} at epoch {epoch}; "
                    "lower lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks; weighting by share * W turns that average
            # into the gradient of the global-batch mean, also for an uneven last batch.
            scale = share * world_size
            (loss if scale == 1.0 else loss * scale).backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()
            total += step_total
            count += step_count
        result.losses.append(float(total) / count)
        bar.set_postfix(loss=f"{result.losses[-1]:.4g}")
        if ckpt_path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            if is_main_process():
                write_checkpoint(epoch + 1)
            barrier()  # no rank runs ahead (or returns and reads it) before the file is whole
    stepper.eval()
    result.epochs = epochs
    result.world_size = world_size
    result.wall_time = time.perf_counter() - start
    result.checkpoint = ckpt_path
    return result
