"""Backbones for vector states.

A *lifted backbone* is a network ``G(window, label, cond) -> increment`` that also says
how its label is shaped (``label_dim`` and ``label_shape(grid)``). Vector backbones live
here; neural-operator backbones for fields live in :mod:`slift_plugin.adapters.neuralop`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected backbone for vector states: ``G([x, xi, c])``.

    Parameters
    ----------
    in_features:
        Size of the state window, ``history * d``.
    out_features:
        Size of one state, ``d``.
    label_dim:
        Size of the label ``xi`` concatenated to the input (0 = no label, a deterministic
        regression backbone).
    n_cond:
        Number of conditioning inputs (physics parameters) concatenated to the input.
    hidden, depth:
        Width and number of hidden layers.
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
        return (self.label_dim,) if self.label_dim else None

    def forward(self, x: Tensor, label: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        parts = [x]
        if self.label_dim:
            parts.append(label)
        if self.n_cond:
            parts.append(cond)
        return self.net(torch.cat(parts, dim=-1))
