"""fit(): one training loop for every stepper.

AdamW with a cosine learning-rate schedule over all optimisation steps, a progress bar,
periodic atomic checkpoints and exact resume. The shuffling of epoch ``e`` comes from a
generator seeded with ``(seed, e)``, so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    tensor_state,
)
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

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


def _steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
    if hasattr(dataset, "steps_per_epoch"):
        return dataset.steps_per_epoch(batch_size)
    return math.ceil(len(dataset) / batch_size)


def _batches(dataset: Dataset, batch_size: int, generator: torch.Generator):
    if hasattr(dataset, "iter_batches"):  # datasets that draw their own batches (DICE)
        yield from dataset.iter_batches(batch_size, generator)
        return
    perm = torch.randperm(len(dataset), generator=generator)
    if hasattr(dataset, "get_batch"):
        for idx in perm.split(batch_size):
            yield dataset.get_batch(idx)
    else:
        # Generic map-style datasets of dict items (e.g. neuraloperator datasets).
        yield from DataLoader(
            dataset, batch_size=batch_size, sampler=perm.tolist(), generator=generator
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
        batched without a DataLoader.
    epochs, batch_size, lr, weight_decay, min_lr_ratio, grad_clip:
        AdamW with cosine decay from ``lr`` to ``min_lr_ratio * lr`` over all steps.
    seed:
        Seeds the shuffling (epoch ``e`` uses ``hash(seed, e)``).
    checkpoint_dir, checkpoint_every:
        Write ``checkpoint_dir/last.pt`` atomically every ``checkpoint_every`` epochs and
        at the end; with ``resume=True`` an existing one is continued.

    Returns
    -------
    FitResult with the per-epoch mean training loss.
    """
    if len(dataset) == 0:
        raise ValueError("cannot fit on an empty dataset (len(dataset) == 0)")
    if epochs < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(
            f"epochs, batch_size and checkpoint_every must be >= 1, got {epochs}, "
            f"{batch_size}, {checkpoint_every}"
        )
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
    if ckpt_path is not None and resume and ckpt_path.exists():
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

    start = time.perf_counter()
    stepper.train()
    bar = tqdm(
        range(result.resumed_from_epoch, epochs),
        desc=description,
        disable=not progress,
        initial=result.resumed_from_epoch,
        total=epochs,
        dynamic_ncols=True,
    )
    for epoch in bar:
        g = torch.Generator().manual_seed(hash_seed(seed, epoch))
        total, count = torch.zeros((), device=device), 0
        for batch in _batches(dataset, batch_size, g):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = stepper.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch}; lower lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()
            n = batch["x"].shape[-len(stepper.state_shape) - 1] if "x" in batch else 1
            total += loss.detach() * n
            count += n
        result.losses.append(float(total) / count)
        bar.set_postfix(loss=f"{result.losses[-1]:.4g}")
        if ckpt_path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            write_checkpoint(epoch + 1)
    stepper.eval()
    result.epochs = epochs
    result.wall_time = time.perf_counter() - start
    result.checkpoint = ckpt_path
    return result
