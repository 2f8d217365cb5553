"""Energy-score training of a lifted backbone: the "probabilistic neural operator" baseline.

The same lifted backbone ``G(x_k, xi, mu)`` as :class:`slift_plugin.StochasticLifting`,
with the label injected in the same way, but trained as a generator: at every training
step each transition gets ``m`` *fresh* labels, hence ``m`` samples ``X_1..X_m`` of the
next (standardised) state, and the loss is the energy score, a strictly proper scoring
rule, of that ensemble against the observed next state ``y``::

    ES = 1/m sum_j ||X_j - y|| - 1/(2 m (m - 1)) sum_{j != l} ||X_j - X_l||

(the "fair" ensemble estimator, unbiased for the score of the model's law). Norms run over
the whole standardised state of one example. Sampling is that of Stochastic Lifting: one
backbone evaluation per step with a fresh label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .base import FreshNoiseTraining
from .lifting import StochasticLifting

__all__ = ["EnergyScoreLifting", "energy_score"]


def energy_score(observation: Tensor, ensemble: Tensor) -> Tensor:
    """Fair energy score of ``ensemble`` ``(B, m, D)`` against ``observation`` ``(B, D)``.

    ``mean_j ||X_j - y|| - 1/(2 m (m-1)) sum_{j != l} ||X_j - X_l||`` with Euclidean norms
    over ``D``. Needs ``m >= 2``. Lower is better; its expectation over ``y`` is minimised
    exactly when the members are drawn from the law of ``y``.

    Parameters
    ----------
    observation : Tensor
        The observed outcomes ``y`` ``(B, D)``.
    ensemble : Tensor
        ``m >= 2`` members ``X_1..X_m`` per observation, ``(B, m, D)``.

    Returns
    -------
    Tensor
        The score of each example ``(B,)``.

    Raises
    ------
    ValueError
        If ``observation`` is not 2-D or ``ensemble`` not 3-D, if their shapes do not
        match (``(B, D)`` against ``(B, m, D)``), or if ``m < 2``.
    """
    if observation.ndim != 2 or ensemble.ndim != 3:
        raise ValueError(
            f"energy_score needs observation (B, D) and ensemble (B, m, D), got "
            f"{tuple(observation.shape)} and {tuple(ensemble.shape)}"
        )
    b, m, d = ensemble.shape
    if observation.shape != (b, d):
        raise ValueError(
            f"observation must have shape ({b}, {d}) to match ensemble {tuple(ensemble.shape)}, "
            f"got {tuple(observation.shape)}"
        )
    if m < 2:
        raise ValueError(f"the fair energy score needs m >= 2 ensemble members, got {m}")
    skill = torch.linalg.vector_norm(ensemble - observation[:, None], dim=-1).mean(dim=1)
    # each unordered pair once: sum_{j != l} = 2 sum_{j < l}
    j, k = torch.triu_indices(m, m, offset=1, device=ensemble.device)
    spread = torch.linalg.vector_norm(ensemble[:, j] - ensemble[:, k], dim=-1).sum(dim=1)
    return skill - spread / (m * (m - 1))


class EnergyScoreLifting(FreshNoiseTraining, StochasticLifting):
    """A lifted backbone trained with the energy score over fresh labels.

    Training batches are ``{"x", "y", "index", "mu"?}`` dicts from
    :class:`slift_plugin.TransitionDataset` (or :class:`slift_plugin.WithFixedLabels`):
    the labels of example ``i`` are a function of ``(seed, training step, index i)``, so
    data-parallel training draws the labels of one process. A ``"label"`` entry (a fixed
    label) is ignored, since this method draws fresh labels at every step.

    Parameters
    ----------
    backbone : torch.nn.Module
        A lifted backbone with ``label_dim > 0``, exactly as for
        :class:`slift_plugin.StochasticLifting` (any label injection).
    state_shape : tuple of int or None
        ``(d,)`` or ``(C, *grid)``; grid entries may be ``None`` (any resolution).
    history, n_params : int
        As for :class:`slift_plugin.StochasticLifting`.
    n_members : int
        Samples per transition in the loss (``m >= 2``). The loss costs ``m`` backbone
        evaluations per transition; sampling costs one per step.
    residual : bool
        As for :class:`slift_plugin.StochasticLifting`.
    dt : float
        As for :class:`slift_plugin.StochasticLifting`.
    seed : int
        Seeds the training labels (with the step counter buffer ``training_step``).

    Raises
    ------
    TypeError
        If ``backbone`` is not a :class:`~slift_plugin.protocols.LiftedBackbone`.
    ValueError
        If the backbone does not fit the stepper (as for
        :class:`slift_plugin.StochasticLifting`), has ``label_dim == 0``, or if
        ``n_members`` is not an integer ``>= 2``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        state_shape: tuple[int | None, ...],
        *,
        history: int = 1,
        n_params: int = 0,
        n_members: int = 2,
        residual: bool = True,
        dt: float = math.nan,
        seed: int = 0,
    ) -> None:
        super().__init__(
            backbone, state_shape, history=history, n_params=n_params, residual=residual, dt=dt
        )
        if self.label_dim < 1:
            raise ValueError(
                "EnergyScoreLifting needs a backbone with label_dim > 0 (the label is its "
                f"noise input), got label_dim={self.label_dim}"
            )
        if isinstance(n_members, bool) or int(n_members) != n_members or n_members < 2:
            raise ValueError(
                f"n_members must be an integer >= 2 (the energy score's spread term compares "
                f"members), got {n_members!r}"
            )
        self.n_members = int(n_members)
        self.init_fresh_noise(seed)

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Fair energy score of ``n_members`` samples per transition, mean over the batch.

        The members of example ``i`` come from fresh labels drawn by
        :meth:`training_noise`; the score compares standardised states (the quantity
        ``g`` of :meth:`standardized_target`).

        Parameters
        ----------
        batch : Mapping[str, Tensor]
            ``{"x": (B, history*C, *grid), "y": (B, C, *grid), "index": (B,), "mu"?:
            (B, n_params)}``; a ``"label"`` entry is ignored.

        Returns
        -------
        Tensor
            The scalar mean of :func:`energy_score` over the batch, with a graph to the
            backbone's parameters.

        Raises
        ------
        TypeError
            If ``batch["x"]`` is not a tensor.
        ValueError
            If ``x`` does not fit the stepper or is an empty batch, ``y`` is not one
            state per example, ``index`` is missing or not one integer per example,
            ``mu`` is missing, unexpected or misshapen, or the backbone output is not
            one standardised state per member.
        """
        x, mu, m = batch["x"], batch.get("mu"), self.n_members
        self.check_window(x)
        target = self.standardized_target(x, batch["y"]).flatten(1)
        label_shape = self.noise_shape(tuple(x.shape[2:]))
        (labels,) = self.training_noise(batch, (m, *label_shape))
        # rows b*m .. b*m + m - 1 are the members of example b
        out = self.standardized_output(
            x.repeat_interleave(m, dim=0),
            labels.flatten(0, 1),
            None if mu is None else mu.repeat_interleave(m, dim=0),
        )
        if out.shape[1:] != batch["y"].shape[1:]:  # reshape would hide a wrong output size
            raise ValueError(
                f"backbone output has shape {tuple(out.shape)}, expected one standardised "
                f"state per member, {(out.shape[0], *batch['y'].shape[1:])}"
            )
        return energy_score(target, out.reshape(x.shape[0], m, -1)).mean()
