"""The interfaces a stepper and ``fit`` expect from the objects a user hands them.

They are structural (:class:`typing.Protocol`): a backbone or a dataset qualifies by what it
has, not by what it inherits, so a user's own network or a neuraloperator dataset works
without subclassing anything from this package. The steppers' construction checks and
:func:`slift_plugin.fit` refer to these protocols, and their error messages name them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "DrawnBatches",
    "IndexedBatches",
    "LiftedBackbone",
    "Potential",
    "ShardableBatches",
    "VelocityBackbone",
]


@runtime_checkable
class LiftedBackbone(Protocol):
    """A network ``G(x, label, cond)`` that also says how its label is shaped.

    ``x`` is the standardised window ``(B, history*C, *grid)`` (or ``(B, history*d)``),
    ``label`` is ``(B, *label_shape(grid))`` or ``None``, ``cond`` is ``(B, n_cond)`` or
    ``None``; the result has one state's shape, ``(B, C, *grid)`` / ``(B, d)``.
    :class:`slift_plugin.MLP` and
    :func:`slift_plugin.adapters.neuralop.lifted_operator` build such networks.

    Attributes
    ----------
    label_dim : int
        Size of the label per point (0: the network takes no label).
    n_cond : int
        Number of conditioning inputs ``cond`` (standardised physics parameters).
    """

    label_dim: int
    n_cond: int

    def label_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Per-sample label shape on a grid.

        Parameters
        ----------
        grid_shape : tuple of int
            The grid of the states (``()`` for vectors).

        Returns
        -------
        tuple of int or None
            The label's shape without the batch axis; None when the network takes no
            label.
        """
        ...

    def __call__(self, x: Tensor, label: Tensor | None, cond: Tensor | None) -> Tensor: ...


@runtime_checkable
class VelocityBackbone(Protocol):
    """A label-free network ``v(x, None, cond)`` whose input width it declares.

    The input width is declared as ``window_channels`` (fields) or ``in_features``
    (vectors); :class:`slift_plugin.FlowMatching` checks it against the stepper.

    Attributes
    ----------
    n_cond : int
        Number of conditioning inputs.
    """

    n_cond: int

    def __call__(self, x: Tensor, label: None, cond: Tensor | None) -> Tensor: ...


@runtime_checkable
class Potential(Protocol):
    """A scalar potential ``s(x, t, cond) -> (B,)``, for :class:`slift_plugin.DICE`.

    ``x`` is a standardised state batch ``(B, C, *grid)`` / ``(B, d)``, ``t`` the
    standardised time ``(B,)``. It must be twice differentiable in ``x``.

    Attributes
    ----------
    n_cond : int
        Number of conditioning inputs ``cond`` (standardised physics parameters).
    """

    n_cond: int

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor: ...


@runtime_checkable
class IndexedBatches(Protocol):
    """A dataset that assembles a batch from example indices without a DataLoader."""

    def __len__(self) -> int: ...

    def get_batch(self, index: Tensor) -> dict[str, Tensor]:
        """The batch of examples ``index`` as a dict of tensors.

        Parameters
        ----------
        index : Tensor
            Example indices ``(B,)``.

        Returns
        -------
        dict of str to Tensor
            The batch, each entry with leading axis ``B``.
        """
        ...


@runtime_checkable
class DrawnBatches(Protocol):
    """A dataset that draws its own batches (DICE's snapshots: times and particles)."""

    def __len__(self) -> int: ...

    def steps_per_epoch(self, batch_size: int) -> int:
        """Number of batches :meth:`iter_batches` yields per epoch.

        Parameters
        ----------
        batch_size : int
            The batch size of the epoch.

        Returns
        -------
        int
            Batches (optimisation steps) per epoch.
        """
        ...

    def iter_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[dict[str, Tensor]]:
        """One epoch of batches, every draw from ``generator``.

        Parameters
        ----------
        batch_size : int
            The batch size.
        generator : torch.Generator
            The source of every random draw (seeded per epoch by :func:`slift_plugin.fit`).

        Yields
        ------
        dict of str to Tensor
            One batch.
        """
        ...


@runtime_checkable
class ShardableBatches(DrawnBatches, Protocol):
    """Drawn batches that data-parallel training can split over ranks."""

    def shard_batch(
        self, batch: Mapping[str, Tensor], rank: int, world_size: int
    ) -> dict[str, Tensor]:
        """This rank's part of ``batch``.

        Parameters
        ----------
        batch : Mapping[str, Tensor]
            One global batch, as :meth:`iter_batches` yields it.
        rank : int
            This process's rank, ``0 <= rank < world_size``.
        world_size : int
            Processes that split the batch.

        Returns
        -------
        dict of str to Tensor
            The examples of ``batch`` this rank computes.
        """
        ...
