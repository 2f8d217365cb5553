"""Backbones for vector states.

:class:`MLP` is a :class:`~slift_plugin.protocols.LiftedBackbone`: a network
``G(window, label, cond) -> increment`` that also says how its label is shaped
(``label_dim`` and ``label_shape(grid)``). :class:`PotentialMLP` is a
:class:`~slift_plugin.protocols.Potential` for DICE. Neural-operator backbones for fields
live in :mod:`slift_plugin.adapters.neuralop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "PotentialMLP"]


class MLP(nn.Module):
    """Fully connected backbone for vector states: ``G([x, xi, c])``.

    Parameters
    ----------
    in_features : int
        Size of the state window, ``history * d``.
    out_features : int
        Size of one state, ``d``.
    label_dim : int
        Size of the label ``xi`` concatenated to the input (0 = no label, a deterministic
        regression backbone).
    n_cond : int
        Number of conditioning inputs (physics parameters) concatenated to the input.
    hidden, depth : int
        Width and number of hidden layers.
    activation : callable
        Builds the activation module after each hidden layer (default ``nn.SiLU``).
        Checkpoints record it by name when it is one of
        :data:`slift_plugin.config.ACTIVATIONS` with its default arguments; any other
        makes the stepper not describable (its weights still save, and
        ``load_stepper(path, stepper)`` loads them).

    Raises
    ------
    ValueError
        If a size is below one (``label_dim`` and ``n_cond`` below zero).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        label_dim: int = 32,
        n_cond: int = 0,
        hidden: int = 128,
        depth: int = 3,
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if min(in_features, out_features, hidden, depth) < 1 or min(label_dim, n_cond) < 0:
            raise ValueError(
                "MLP needs in_features, out_features, hidden, depth >= 1 and "
                f"label_dim, n_cond >= 0; got in_features={in_features}, "
                f"out_features={out_features}, hidden={hidden}, depth={depth}, "
                f"label_dim={label_dim}, n_cond={n_cond}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.label_dim = label_dim
        self.n_cond = n_cond
        layers: list[nn.Module] = []
        width = in_features + label_dim + n_cond
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def label_shape(self, grid_shape: tuple[int, ...] = ()) -> tuple[int, ...] | None:
        """Per-sample label shape: ``(label_dim,)``, whatever the grid.

        Parameters
        ----------
        grid_shape : tuple of int
            Ignored (vector states have no grid).

        Returns
        -------
        tuple of int or None
            ``(label_dim,)``, or None when ``label_dim`` is 0.
        """
        return (self.label_dim,) if self.label_dim else None

    def forward(self, x: Tensor, label: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """Evaluate the network on ``[x, label, cond]``.

        Parameters
        ----------
        x : Tensor
            Windows ``(B, in_features)``.
        label : Tensor or None
            Labels ``(B, label_dim)``; ignored when ``label_dim`` is 0.
        cond : Tensor or None
            Conditioning inputs ``(B, n_cond)``; ignored when ``n_cond`` is 0.

        Returns
        -------
        Tensor
            ``(B, out_features)``.
        """
        parts = [x]
        if self.label_dim:
            parts.append(label)
        if self.n_cond:
            parts.append(cond)
        return self.net(torch.cat(parts, dim=-1))


class PotentialMLP(nn.Module):
    """Scalar potential ``s(x, t, mu)`` for vector states: an MLP on ``[x, t, mu]``.

    Smooth activations (SiLU) because training differentiates ``grad_x s`` again.
    ``periods`` marks periodic coordinates (e.g. the position of a particle in a periodic
    box): such a coordinate enters as ``cos``/``sin`` of ``2 pi x / period``, so the
    potential and its velocity are periodic, and :class:`DICE` leaves it unnormalised.

    Parameters
    ----------
    dim : int
        Size of one state, ``d``.
    n_params : int
        Number of conditioning inputs (physics parameters); stored as ``n_cond``.
    hidden, depth : int
        Width and number of hidden layers.
    periods : sequence of (float or None), or None
        One entry per coordinate: its period, or None for a non-periodic coordinate;
        None makes every coordinate non-periodic.

    Raises
    ------
    ValueError
        If a size is below one, ``n_params < 0``, or ``periods`` does not list ``dim``
        positive periods or None.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_params: int = 0,
        hidden: int = 128,
        depth: int = 3,
        periods: Sequence[float | None] | None = None,
    ) -> None:
        super().__init__()
        if min(dim, hidden, depth) < 1 or n_params < 0:
            raise ValueError(
                f"PotentialMLP needs dim, hidden, depth >= 1 and n_params >= 0, got dim={dim}, "
                f"hidden={hidden}, depth={depth}, n_params={n_params}"
            )
        periods = list(periods) if periods is not None else [None] * dim
        if len(periods) != dim or any(p is not None and not p > 0 for p in periods):
            raise ValueError(f"periods must list {dim} positive periods or None, got {periods}")
        self.dim, self.n_cond, self.periods = dim, n_params, periods
        self._periodic = [i for i, p in enumerate(periods) if p is not None]
        self._plain = [i for i, p in enumerate(periods) if p is None]
        self.register_buffer(
            "_wavenumbers", torch.tensor([2 * math.pi / periods[i] for i in self._periodic])
        )
        layers: list[nn.Module] = []
        width = len(self._plain) + 2 * len(self._periodic) + 1 + n_params
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Evaluate the potential.

        Parameters
        ----------
        x : Tensor
            States ``(B, dim)``.
        t : Tensor
            Times ``(B,)``.
        cond : Tensor or None
            Conditioning inputs ``(B, n_cond)``; ignored when ``n_cond`` is 0.

        Returns
        -------
        Tensor
            The potential ``(B,)``.
        """
        parts = [x[:, self._plain], t[:, None]]
        if self._periodic:
            phase = x[:, self._periodic] * self._wavenumbers
            parts += [torch.cos(phase), torch.sin(phase)]
        if self.n_cond:
            parts.append(cond)
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1)
