"""Fresh training noise for the baselines (flow matching, energy score), keyed by example.

Both baselines draw new noise at every training step. The noise of example ``i`` at step
``n`` is a pure function of ``(seed, n, i)``, with ``i`` the global example index that a
transition batch carries (``batch["index"]``): counter-based, like the fixed labels of
Stochastic Lifting, so it does not depend on how a batch is ordered or split over
processes, and a data-parallel run draws exactly the noise of one process.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .labels import IndexedGaussianLabels, hash_seed


class FreshNoiseTraining:
    """Mixin for steppers whose loss draws fresh noise at every training step.

    ``training_step`` is a buffer: it travels with ``state_dict`` and checkpoints, so a
    resumed :func:`slift_plugin.fit` draws exactly the noise an uninterrupted run would,
    and no draw touches the global RNG. Call :meth:`_init_fresh_noise` after
    ``nn.Module.__init__``.
    """

    seed: int
    training_step: Tensor
    training: bool

    def _init_fresh_noise(self, seed: int) -> None:
        self.seed = int(seed)
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long))

    def training_noise(self, batch: Mapping[str, Tensor], *shapes: tuple[int, ...]) -> list[Tensor]:
        """Standard normals ``(B, *shape)`` for each of ``shapes``, keyed by example index.

        Row ``b`` of the ``j``-th tensor is a function of ``(seed, training_step, j,
        batch["index"][b])`` only; the tensors take the device and dtype of ``batch["x"]``.
        In training mode the step counter then advances; in eval mode it stays, so an
        evaluation loss is repeatable and does not shift the noise of later steps.
        """
        x = batch["x"]
        index = batch.get("index")
        if index is None:
            raise ValueError(
                f"{type(self).__name__} draws its training noise per example from the global "
                "example index, but the batch has no 'index' entry; train on "
                "slift_plugin.TransitionDataset, or wrap a dataset of dict items in "
                "slift_plugin.WithFixedLabels, whose batches carry it"
            )
        if index.shape != (x.shape[0],) or index.is_floating_point():
            raise ValueError(
                f"batch['index'] must hold one integer per example, shape ({x.shape[0]},), "
                f"got {index.dtype} of shape {tuple(index.shape)}"
            )
        step = int(self.training_step)
        noise = [
            IndexedGaussianLabels(shape, hash_seed(self.seed, step, j))(index).to(
                x.device, x.dtype, non_blocking=True
            )
            for j, shape in enumerate(shapes)
        ]
        if self.training:
            self.training_step += 1
        return noise
