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

A resume continues the same run or refuses: the checkpoint records the settings, a
fingerprint of the data (its length, the label seed, a digest of a fixed sample of its
examples with their labels) and of the stepper (class and plain hyperparameters of
every submodule, among them a flow-matching noise seed), and any difference is an error
naming it. While a run writes into ``checkpoint_dir`` it holds a lock there, so a second
run into the same folder fails at once instead of overwriting the first one's file.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import (
    CONFIG_KEY,
    CheckpointError,
    check_model_state,
    load_checkpoint,
    load_model_state,
    lock_checkpoint_dir,
    save_checkpoint,
    tensor_state,
)
from .config import stepper_record
from .distributed import fail_together, is_main_process, shard_bounds, world
from .labels import hash_seed
from .protocols import DrawnBatches, IndexedBatches, ShardableBatches
from .selection import Selection
from .stepper import Stepper

__all__ = ["CHECKPOINT_NAME", "FitResult", "fit"]

CHECKPOINT_NAME = "last.pt"


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch mean training loss and timings.

    Attributes
    ----------
    losses : list of float
        Mean training loss of every epoch (over all ranks' examples), including the
        epochs of a resumed checkpoint.
    epochs : int
        Epochs of the whole run.
    resumed_from_epoch : int
        Epochs already done by the checkpoint the run resumed from (0: a fresh run).
    wall_time : float
        Seconds spent training in this call.
    checkpoint : pathlib.Path or None
        The checkpoint written, or None without ``checkpoint_dir``.
    world_size : int
        Processes that trained together.
    held_out_scores : list of float
        With ``held_out``: its score after every epoch (lower is better).
    best_epoch : int or None
        With ``held_out``: the epoch (1-based) whose weights the stepper holds at the end.
    stopped_early : bool
        True when ``held_out.patience`` ended the run before ``epochs``.
    """

    losses: list[float] = field(default_factory=list)
    epochs: int = 0
    resumed_from_epoch: int = 0
    wall_time: float = 0.0
    checkpoint: Path | None = None
    world_size: int = 1
    held_out_scores: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def final_loss(self) -> float:
        """Mean loss of the last epoch (nan before any)."""
        return self.losses[-1] if self.losses else math.nan


def _steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
    """Optimiser steps per epoch: what the dataset says, else ``ceil(len / batch_size)``."""
    if isinstance(dataset, DrawnBatches):
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
    if isinstance(dataset, DrawnBatches) and not isinstance(dataset, ShardableBatches):
        raise TypeError(
            f"{type(dataset).__name__} draws its own batches (iter_batches) and fit() does not "
            f"know their layout, so it cannot split them over {world_size} processes; make it "
            "a slift_plugin.protocols.ShardableBatches with shard_batch(batch, rank, "
            "world_size) (as SnapshotDataset is), or train in one process"
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
    if isinstance(dataset, DrawnBatches):  # datasets that draw their own batches (DICE)
        for batch in dataset.iter_batches(batch_size, generator):
            if world_size == 1:
                yield batch, 1.0
            else:
                yield dataset.shard_batch(batch, rank, world_size), 1.0 / world_size
        return
    perm = torch.randperm(len(dataset), generator=generator)
    shards = list(_index_shards(perm, batch_size, rank, world_size))
    if isinstance(dataset, IndexedBatches):
        for idx, share in shards:
            yield dataset.get_batch(idx), share
    else:
        # Generic map-style datasets of dict items (e.g. neuraloperator datasets). The
        # generator is passed so that the loader never draws from the global RNG.
        loader = DataLoader(
            dataset, batch_sampler=[idx.tolist() for idx, _ in shards], generator=generator
        )
        yield from zip(loader, (share for _, share in shards), strict=True)


# A data fingerprint reads at most this many examples and about this many values (4 MB
# of float32), so that it costs next to nothing beside an epoch even for large fields.
_FINGERPRINT_EXAMPLES = 64
_FINGERPRINT_VALUES = 2**20


def _sample_of(dataset: Dataset, batch_size: int) -> list[Mapping[str, object]]:
    """A fixed sample of ``dataset``: evenly spaced examples, first and last included.

    As many examples as fit in ``_FINGERPRINT_VALUES`` values (2 to
    ``_FINGERPRINT_EXAMPLES``); a dataset that draws its own batches gives its first
    batch under a fixed seed.
    """
    if isinstance(dataset, DrawnBatches):
        return [next(iter(dataset.iter_batches(batch_size, torch.Generator().manual_seed(0))))]

    def fetch(index: Tensor) -> list[Mapping[str, object]]:
        if isinstance(dataset, IndexedBatches):
            return [dataset.get_batch(index)]
        items = (dataset[i] for i in index.tolist())
        return [item if isinstance(item, Mapping) else _as_mapping(item) for item in items]

    first = fetch(torch.tensor([0]))
    per_example = sum(v.numel() for s in first for v in s.values() if torch.is_tensor(v))
    n = len(dataset)
    k = min(n, _FINGERPRINT_EXAMPLES, max(2, _FINGERPRINT_VALUES // max(per_example, 1)))
    return fetch(torch.linspace(0, n - 1, k).round().long().unique())


def _as_mapping(item: object) -> Mapping[str, object]:
    """A tuple or list item (a ``TensorDataset``'s) keyed by position, so that its tensors
    enter the digest; anything else under one key."""
    if isinstance(item, tuple | list):
        return {str(i): value for i, value in enumerate(item)}
    return {"item": item}


def _digest(samples: list[Mapping[str, object]]) -> str:
    """SHA-256 of the tensors (dtype, shape, bytes) and plain numbers of ``samples``."""
    digest = hashlib.sha256()
    for sample in samples:
        for key in sorted(sample, key=str):
            value = sample[key]
            if torch.is_tensor(value):
                flat = value.detach().reshape(-1)
                digest.update(f"{key}:{flat.dtype}:{tuple(value.shape)}".encode())
                stride = math.ceil(flat.numel() / _FINGERPRINT_VALUES)
                flat = flat[::stride].cpu().contiguous() if stride > 1 else flat.cpu()
                digest.update(flat.view(torch.uint8).numpy().tobytes())
            elif isinstance(value, int | float | str):
                digest.update(f"{key}={value!r}".encode())
    return digest.hexdigest()[:24]


def _data_fingerprint(
    dataset: Dataset, batch_size: int, held_out: Selection | None
) -> dict[str, object]:
    """What identifies the training data of a run, cheaply (see the module docstring).

    Parameters
    ----------
    dataset : Dataset
        The training set; its ``labels`` (if any) are part of the sampled examples.
    batch_size : int
        The batch a dataset that draws its own batches is sampled with.
    held_out : Selection or None
        Its data are fingerprinted too: selection on other data is another run.

    Returns
    -------
    dict of str to object
        Plain values, compared key by key on resume.
    """
    labels = getattr(dataset, "labels", None)
    facts: dict[str, object] = {
        "examples": len(dataset),
        "label seed": getattr(labels, "seed", None),
        "sampled examples digest": _digest(_sample_of(dataset, batch_size)),
    }
    if held_out is not None:
        facts["held-out examples digest"] = _digest(_sample_of(held_out.data, batch_size))
    return facts


def _plain(value: object) -> object:
    """``value`` as plain data that compares equal to itself (NaN does not, "nan" does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _is_plain(value: object) -> bool:
    """None, a number, a string, or a (short) sequence of those."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, tuple | list) and len(value) <= 64 and all(map(_is_plain, value))


def _stepper_fingerprint(stepper: nn.Module) -> dict[str, object]:
    """Class and plain public attributes of ``stepper`` and every submodule, flattened.

    The hyperparameters that the weights' shapes do not reveal (a noise seed, the
    residual form, a label injection, an activation's name) are what this adds to the
    key and shape check of the state dict.
    """
    facts: dict[str, object] = {}
    for name, module in stepper.named_modules():
        prefix = f"{name}." if name else ""
        facts[f"{prefix}class"] = type(module).__qualname__
        for key, value in sorted(vars(module).items()):
            if not key.startswith("_") and key != "training" and _is_plain(value):
                facts[prefix + key] = _plain(value)
    return facts


def _differences(stored: object, current: dict[str, object]) -> list[str]:
    """``key: stored vs current`` for every key whose values differ."""
    stored = stored if isinstance(stored, dict) else {}
    absent = "(not recorded)"
    return [
        f"{key}: {stored.get(key, absent)!r} in the checkpoint, {current.get(key, absent)!r} now"
        for key in sorted(set(stored) | set(current), key=str)
        if stored.get(key, absent) != current.get(key, absent)
    ]


@contextmanager
def _holding(checkpoint_dir: str | os.PathLike | None, rank: int) -> Iterator:
    """Hold ``checkpoint_dir`` for the run (rank 0 takes its lock). Whatever stops rank 0
    (a held folder, an unwritable one) stops every rank with the cause, not at a barrier."""
    with ExitStack() as stack:
        with fail_together("taking the lock of checkpoint_dir"):
            if checkpoint_dir is not None and rank == 0:
                stack.enter_context(lock_checkpoint_dir(checkpoint_dir))
        yield


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


@dataclass
class _Run:
    """What the phases of one :func:`fit` share: the model, its optimiser and the record.

    Attributes
    ----------
    stepper : Stepper
        The stepper being trained (never the DDP wrapper).
    params : list of torch.nn.Parameter
        Its trainable parameters, the ones the optimiser and the clipping see.
    optimizer : torch.optim.Optimizer
        AdamW over ``params``.
    scheduler : torch.optim.lr_scheduler.LRScheduler
        The cosine schedule, stepped once per optimisation step.
    config : dict
        Everything that shapes the optimisation; stored in and checked against checkpoints.
    ckpt_path : pathlib.Path or None
        ``checkpoint_dir / last.pt``, or None when the run writes no checkpoints.
    device : torch.device
        Where the stepper and the batches live.
    rank, world_size : int
        This process's place in the process group, ``(0, 1)`` without one.
    result : FitResult
        Filled in as the run goes (losses, resumed epoch).
    best_model : dict of str to Tensor or None
        With held-out selection: a CPU copy of the best epoch's weights so far.
    fingerprint : dict
        With checkpoints: ``{"data": ..., "stepper": ...}``, stored in and checked
        against checkpoints (see :func:`_data_fingerprint`, :func:`_stepper_fingerprint`).
    """

    stepper: Stepper
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: dict[str, object]
    ckpt_path: Path | None
    device: torch.device
    rank: int
    world_size: int
    result: FitResult = field(default_factory=FitResult)
    best_model: dict[str, Tensor] | None = None
    fingerprint: dict[str, dict[str, object]] = field(default_factory=dict)


def _check_arguments(
    dataset: Dataset, epochs: int, batch_size: int, checkpoint_every: int, world_size: int
) -> None:
    """Refuse, before any work, what no training run could do.

    Parameters
    ----------
    dataset : Dataset
        The training set; must not be empty.
    epochs, batch_size, checkpoint_every : int
        Each must be >= 1.
    world_size : int
        Processes in the group; the batches must split over them (:func:`_check_shardable`).

    Raises
    ------
    ValueError, TypeError
        On the first argument that cannot work.
    """
    if hasattr(dataset, "iter_batches") and not isinstance(dataset, DrawnBatches):
        # half a protocol would silently fall back to index batches
        raise TypeError(
            f"{type(dataset).__name__} has iter_batches but is not a "
            "slift_plugin.protocols.DrawnBatches: it also needs __len__ and "
            "steps_per_epoch(batch_size)"
        )
    if len(dataset) == 0:
        raise ValueError("cannot fit on an empty dataset (len(dataset) == 0)")
    if epochs < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(
            f"epochs, batch_size and checkpoint_every must be >= 1, got {epochs}, "
            f"{batch_size}, {checkpoint_every}"
        )
    _check_shardable(dataset, batch_size, world_size)


def _place(stepper: Stepper, device: str | torch.device | None, world_size: int) -> torch.device:
    """Move ``stepper`` to ``device`` (if given) and return the device it now lives on.

    Parameters
    ----------
    stepper : Stepper
        Moved in place.
    device : str or torch.device or None
        None keeps the stepper where it is, except under NCCL, where each rank must train
        on its own GPU.
    world_size : int
        Processes in the group.

    Returns
    -------
    torch.device
        The device of the stepper's parameters.
    """
    if device is None and world_size > 1 and dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())  # set per rank by torchrun
    if device is not None:
        stepper.to(device)
    return stepper.param_device_dtype()[0]


def _setup(
    stepper: Stepper,
    dataset: Dataset,
    config: dict[str, object],
    *,
    device: str | torch.device | None,
    checkpoint_dir: str | os.PathLike | None,
    checkpoint_every: int,
) -> _Run:
    """Check the arguments, place and prepare ``stepper``, build its optimiser and schedule.

    Parameters
    ----------
    stepper : Stepper
        Moved to ``device``; ``stepper.prepare(dataset)`` computes its normalisation.
    dataset : Dataset
        The training set.
    config : dict
        The settings of :func:`fit` that shape the optimisation (``epochs``,
        ``batch_size``, ``lr``, ``weight_decay``, ``min_lr_ratio``, ``grad_clip``,
        ``seed``, ``n_examples``).
    device : str or torch.device or None
        See :func:`fit`.
    checkpoint_dir : str or os.PathLike or None
        Where ``last.pt`` goes, if anywhere.
    checkpoint_every : int
        Checked here, used by :func:`fit`.

    Returns
    -------
    _Run
        A fresh run, before any resume.
    """
    rank, world_size = world()
    _check_arguments(dataset, config["epochs"], config["batch_size"], checkpoint_every, world_size)
    device = _place(stepper, device, world_size)
    stepper.prepare(dataset)
    params = [p for p in stepper.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(stepper).__name__} has no trainable parameters")
    lr = config["lr"]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config["weight_decay"])
    total_steps = config["epochs"] * _steps_per_epoch(dataset, config["batch_size"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=config["min_lr_ratio"] * lr
    )
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    return _Run(stepper, params, optimizer, scheduler, config, ckpt_path, device, rank, world_size)


def _check_same_run(run: _Run, state: dict, path: Path) -> None:
    """Raise unless checkpoint ``state`` was written by this very run (settings, data,
    stepper), naming what differs and how to start afresh."""
    afresh = f"to start afresh use another checkpoint_dir, delete {path}, or pass resume=False"
    if state.get("config") != run.config:
        raise CheckpointError(
            f"checkpoint {path} was written with {state.get('config')}, "
            f"cannot resume with {run.config}; use another checkpoint_dir or resume=False"
        )
    stored = state.get("fingerprint")
    if not isinstance(stored, dict):
        raise CheckpointError(
            f"checkpoint {path} does not record the data and stepper it was trained with "
            f"(an older slift_plugin wrote it), so cannot resume a run it may not belong to; "
            f"{afresh}"
        )
    for part, what in (("data", "other data or labels"), ("stepper", "another stepper")):
        differing = _differences(stored.get(part), run.fingerprint[part])
        if differing:
            raise CheckpointError(
                f"checkpoint {path} cannot resume this run: it was trained on {what} "
                f"({'; '.join(differing[:6])}); pass the same to continue it, or {afresh}"
            )


def _restore(run: _Run, state: dict, path: Path) -> None:
    """Load model, optimiser, schedule and record from a checked ``state``.

    Raises
    ------
    CheckpointError
        If an entry is missing or malformed (naming it), or the weights do not fit.
    """
    try:
        epoch, losses = state["epoch"], list(state["losses"])
        if not isinstance(epoch, int) or not 0 <= epoch <= run.config["epochs"]:
            raise ValueError(f"epoch must be an int in [0, {run.config['epochs']}], got {epoch!r}")
        if len(losses) != epoch or not all(isinstance(v, float | int) for v in losses):
            raise ValueError(f"losses must be {epoch} numbers, got {losses[:5]!r}...")
        check_model_state(run.stepper, state["model"], path)
        if state.get("best_model") is not None:
            check_model_state(run.stepper, state["best_model"], path)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if "held_out" in run.config:
            run.result.held_out_scores = list(state["held_out_scores"])
            run.result.best_epoch = state["best_epoch"]
            run.result.stopped_early = bool(state["stopped_early"])
            run.best_model = state["best_model"]
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is malformed ({type(exc).__name__}: {exc}): damaged, or not "
            "written by fit(); use another checkpoint_dir or resume=False"
        ) from exc
    load_model_state(run.stepper, state["model"], path)
    run.result.losses = losses
    run.result.resumed_from_epoch = epoch


def _resume(run: _Run, resume: bool) -> None:
    """Continue from ``run.ckpt_path`` if it exists and ``resume`` is set.

    Restores the model, the optimiser, the schedule, the losses so far and the epoch,
    after checking that the checkpoint belongs to this run.

    Parameters
    ----------
    run : _Run
        Updated in place.
    resume : bool
        False starts afresh (a later checkpoint overwrites the old one).

    Raises
    ------
    CheckpointError
        If the checkpoint was written with another ``config``, other data or labels, or
        another stepper, or is malformed or does not fit the stepper.
    RuntimeError
        If the ranks disagree on the config, the fingerprints or on whether there is a
        checkpoint.
    """
    path = run.ckpt_path
    resuming = path is not None and resume and path.exists()
    facts = {"config": run.config, "fingerprint": run.fingerprint}
    _check_ranks_agree({**facts, "resume from a checkpoint": resuming}, run.world_size)
    if not resuming:
        return
    state = load_checkpoint(path, map_location=run.device)
    _check_same_run(run, state, path)
    _restore(run, state, path)


def _train_epoch(
    run: _Run,
    loss_of: Callable[[dict[str, Tensor]], Tensor],
    dataset: Dataset,
    epoch: int,
) -> float:
    """One pass over ``dataset``: an optimisation step per global batch.

    Parameters
    ----------
    run : _Run
        The run; its optimiser and schedule advance.
    loss_of : callable
        ``batch -> loss``: ``run.stepper.loss``, or its DDP wrapper under a process group.
    dataset : Dataset
        The training set.
    epoch : int
        Seeds the shuffling, with ``run.config["seed"]``.

    Returns
    -------
    float
        The mean loss over the epoch's examples, on all ranks.

    Raises
    ------
    FloatingPointError
        On every rank, when a batch's loss is not finite.
    """
    batch_size, grad_clip = run.config["batch_size"], run.config["grad_clip"]
    g = torch.Generator().manual_seed(hash_seed(run.config["seed"], epoch))
    total, count = torch.zeros((), device=run.device), 0
    for batch, share in _batches(dataset, batch_size, g, run.rank, run.world_size):
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        loss = loss_of(batch)
        # A weight-0 stand-in example (see _index_shards) counts for nothing.
        n = run.stepper.examples_in(batch) if share else 0
        # Summed over ranks before backward, so every rank sees the same value and a
        # non-finite loss stops all of them together instead of deadlocking DDP.
        step_total, step_count = _sum_over_ranks(loss.detach() * n, n, run.world_size)
        if not torch.isfinite(step_total):
            raise FloatingPointError(
                f"loss became {float(step_total) / max(step_count, 1)} at epoch {epoch}; "
                "lower lr or check the data"
            )
        run.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; weighting by share * W turns that average
        # into the gradient of the global-batch mean, also for an uneven last batch.
        scale = share * run.world_size
        (loss if scale == 1.0 else loss * scale).backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.params, grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        total += step_total
        count += step_count
    return float(total) / count


def _select(run: _Run, held_out: Selection, epoch: int) -> float:
    """Score epoch ``epoch`` on the held-out data; keep its weights if best; maybe stop.

    Parameters
    ----------
    run : _Run
        Its result gains the score; ``best_model``, ``best_epoch`` and ``stopped_early``
        are updated.
    held_out : Selection
        The held-out criterion.
    epoch : int
        Epochs completed (1-based).

    Returns
    -------
    float
        This epoch's score; ``inf`` when it was not finite (the samples blew up), which
        never becomes the best, so that one bad epoch of a long run does not end it
        (:func:`_train` raises if no epoch had a finite score).
    """
    result = run.result
    score = held_out.score(run.stepper, run.device)
    if not math.isfinite(score):
        score = math.inf
    result.held_out_scores.append(score)
    if math.isfinite(score) and (
        result.best_epoch is None or score < min(result.held_out_scores[:-1])
    ):
        result.best_epoch = epoch
        run.best_model = {k: v.detach().cpu().clone() for k, v in tensor_state(run.stepper).items()}
    patience = held_out.patience
    since = epoch - (result.best_epoch or 0)  # no finite score yet: counted from the start
    result.stopped_early = patience is not None and since >= patience
    return score


def _write_checkpoint(run: _Run, epoch: int) -> None:
    """Write ``run.ckpt_path`` after ``epoch`` epochs (rank 0), and wait for it (all ranks).

    Parameters
    ----------
    run : _Run
        The run; ``run.ckpt_path`` must be set.
    epoch : int
        Epochs completed, the epoch a resume starts from.
    """
    # Leaving together also keeps any rank from reading the file before it is whole; a
    # failed write on rank 0 fails every rank, instead of leaving them at the next barrier.
    with fail_together(f"writing the checkpoint of epoch {epoch}"):
        if is_main_process():
            payload = {
                "model": tensor_state(run.stepper),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "epoch": epoch,
                "losses": run.result.losses,
                "config": run.config,
                "fingerprint": run.fingerprint,
                # so that load_stepper(path) rebuilds the stepper without its code
                CONFIG_KEY: stepper_record(run.stepper),
            }
            if "held_out" in run.config:
                payload |= {
                    "held_out_scores": run.result.held_out_scores,
                    "best_epoch": run.result.best_epoch,
                    "stopped_early": run.result.stopped_early,
                    "best_model": run.best_model,
                }
            save_checkpoint(run.ckpt_path, payload)


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
    held_out: Selection | None = None,
) -> FitResult:
    """Train ``stepper`` on ``dataset`` by minimising ``stepper.loss(batch)``.

    Parameters
    ----------
    stepper : Stepper
        Any :class:`Stepper`. ``stepper.prepare(dataset)`` runs first (normalisation).
        Each batch's loss is weighted by ``stepper.examples_in(batch)`` in the epoch mean.
    dataset : Dataset
        A map-style dataset of dict items, batched by a DataLoader; an
        :class:`~slift_plugin.protocols.IndexedBatches` (``get_batch(indices)``) is
        batched without one; a :class:`~slift_plugin.protocols.DrawnBatches`
        (``iter_batches``) draws its own, and must be a
        :class:`~slift_plugin.protocols.ShardableBatches` to train data-parallel.
    epochs, batch_size : int
        Passes over the data, and examples per optimisation step. ``batch_size`` is the
        global batch; under a process group of ``W`` ranks it must be a multiple of
        ``W`` and each rank computes ``batch_size / W`` examples.
    lr, weight_decay, min_lr_ratio : float
        AdamW with cosine decay from ``lr`` to ``min_lr_ratio * lr`` over all steps.
    grad_clip : float or None
        Clip the gradient norm to this value; None does not clip.
    seed : int
        Seeds the shuffling (epoch ``e`` uses ``hash(seed, e)``), the same on every rank.
    device : str or torch.device or None
        Defaults to the stepper's device; under an NCCL process group, to this rank's
        current CUDA device.
    checkpoint_dir : str or os.PathLike or None
        Write ``checkpoint_dir/last.pt`` atomically every ``checkpoint_every`` epochs and
        at the end (rank 0 only; the others wait); with ``resume=True`` an existing one is
        continued by every rank, so ``checkpoint_dir`` must be on a shared filesystem.
        The folder is created, checked and locked (a lock file removed at the end) before
        any work, so one folder serves one run at a time.
    checkpoint_every : int
        Epochs between checkpoints.
    resume : bool
        Continue from an existing ``checkpoint_dir/last.pt``, which must have been
        written with the same settings, data (length, label seed, sampled values) and
        stepper (class and hyperparameters, seeds included); False starts afresh.
    progress : bool
        Show a progress bar (on rank 0), labelled ``description``.
    description : str
        The progress bar's label.
    held_out : Selection or None
        Score the stepper on held-out data after every epoch, keep the best epoch's
        weights, and stop after ``held_out.patience`` epochs without improvement:
        :class:`slift_plugin.HeldOut` (transitions; fair energy score of fresh-noise
        samples) or :class:`slift_plugin.HeldOutPopulations` (populations; energy
        distance of rollouts, for DICE), see :mod:`slift_plugin.selection`. The curve is
        ``FitResult.held_out_scores`` and shows in the progress bar; an epoch whose
        samples blew up scores ``inf`` and is never kept.

    Returns
    -------
    FitResult
        The per-epoch mean training loss (over all ranks' examples) and timings.

    Raises
    ------
    ValueError
        Before training, on an empty dataset, counts below one, a ``batch_size`` that
        does not split over the ranks, or a stepper without trainable parameters.
    TypeError
        Under a process group, for a dataset that draws its own batches but cannot
        shard them; for a ``held_out`` that is not a :class:`Selection`.
    CheckpointError
        Before training, when ``checkpoint_dir`` is a file, cannot be written, or is
        held by another live run; when resuming a checkpoint written with other
        settings, on other data or labels, for another stepper, or malformed.
    RuntimeError
        When the ranks disagree on the settings, the data or on the checkpoint.
    FloatingPointError
        On every rank, when a batch's loss is not finite; with ``held_out``, at the end
        when no epoch's held-out score was finite.
    """
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
    if held_out is not None:
        if not isinstance(held_out, Selection):
            raise TypeError(
                f"held_out {type(held_out).__name__} is not a slift_plugin.selection.Selection; "
                "use slift_plugin.HeldOut or slift_plugin.HeldOutPopulations"
            )
        config["held_out"] = held_out.facts()
    rank, world_size = world()
    # The folder is checked and held before any work, so that a bad or busy one fails
    # before the first step rather than at the first checkpoint.
    with _holding(checkpoint_dir, rank):
        # Taken before prepare() and training can change the stepper's attributes.
        stepper_facts = _stepper_fingerprint(stepper) if checkpoint_dir is not None else {}
        run = _setup(
            stepper,
            dataset,
            config,
            device=device,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
        )
        if run.ckpt_path is not None:
            data_facts = _data_fingerprint(dataset, batch_size, held_out)
            run.fingerprint = {"data": data_facts, "stepper": stepper_facts}
        _resume(run, resume)
        return _train(
            run,
            dataset,
            held_out,
            checkpoint_every=checkpoint_every,
            progress=progress,
            description=description,
        )


def _train(
    run: _Run,
    dataset: Dataset,
    held_out: Selection | None,
    *,
    checkpoint_every: int,
    progress: bool,
    description: str,
) -> FitResult:
    """The epochs of :func:`fit` after setup and resume: train, select, checkpoint.

    Parameters
    ----------
    run : _Run
        The set-up (possibly resumed) run.
    dataset : Dataset
        The training set.
    held_out : Selection or None
        Held-out selection, as for :func:`fit`.
    checkpoint_every : int
        Epochs between checkpoints (and one at the end), when ``run.ckpt_path`` is set.
    progress : bool
        Show a progress bar (on rank 0).
    description : str
        Its label.

    Returns
    -------
    FitResult
        The whole run's record.
    """
    stepper, result, epochs = run.stepper, run.result, run.config["epochs"]
    # DDP only under a process group: one process keeps the plain, hook-free stepper.
    loss_of = stepper.loss if run.world_size == 1 else _data_parallel(stepper, run.device)
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
        if result.stopped_early:  # resumed from a run that had stopped
            break
        result.losses.append(_train_epoch(run, loss_of, dataset, epoch))
        postfix = {"loss": f"{result.losses[-1]:.4g}"}
        if held_out is not None:
            postfix["held_out"] = f"{_select(run, held_out, epoch + 1):.4g}"
        bar.set_postfix(postfix)
        done = epoch + 1
        last = done == epochs or result.stopped_early
        if run.ckpt_path is not None and (done % checkpoint_every == 0 or last):
            _write_checkpoint(run, done)
    if held_out is not None and run.best_model is None:
        raise FloatingPointError(
            f"the held-out score was not finite after any of the {len(result.losses)} epochs "
            "(the samples blew up); the weights are the last epoch's"
        )
    if run.best_model is not None:
        load_model_state(stepper, run.best_model, run.ckpt_path or "the best epoch")
    stepper.eval()
    result.epochs = len(result.losses)  # fewer than asked when held_out stopped the run
    result.world_size = run.world_size
    result.wall_time = time.perf_counter() - start
    result.checkpoint = run.ckpt_path
    return result
