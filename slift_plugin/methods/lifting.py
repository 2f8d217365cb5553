"""Stochastic Lifting (Berman, Blickhan, Peherstorfer 2026) and its MSE baseline.

Training pairs every transition ``(x_k, x_{k+1})`` with one fixed label ``xi ~ N(0, I)``
(see :mod:`slift_plugin.labels`) and regresses::

    x_{k+1} = x_k + delta_std * G(normalise(x_k), xi, normalise(mu))

The labels act as extra input coordinates, so the map can reach several next states from
nearly the same ``x_k`` instead of averaging them. Sampling draws a fresh ``xi`` every
step: one backbone evaluation per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from ..labels import IndexedGaussianLabels
from ..protocols import LiftedBackbone
from .base import TransitionStepper

__all__ = ["Criterion", "MeanRegression", "StochasticLifting", "mean_squared_error"]

Criterion = Callable[[Tensor, Tensor], Tensor]


def mean_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean of ``(prediction - target)**2`` over every entry, the default criterion.

    Parameters
    ----------
    prediction : Tensor
        The prediction, e.g. ``(B, C, *grid)``.
    target : Tensor
        The target, of the shape of ``prediction`` (or one that broadcasts with it).

    Returns
    -------
    Tensor
        The scalar mean squared error.
    """
    return torch.mean((prediction - target) ** 2)


class StochasticLifting(TransitionStepper):
    """Stochastic Lifting stepper around a lifted backbone.

    Normalisation (per channel state mean/std, per channel increment std, parameter
    mean/std) lives in buffers, so it travels with ``state_dict`` and checkpoints.

    Parameters
    ----------
    backbone : torch.nn.Module
        A :class:`~slift_plugin.protocols.LiftedBackbone` ``G(window, label, cond)``
        (attributes ``label_dim``, ``n_cond``, method ``label_shape(grid)``):
        :class:`slift_plugin.MLP` for vectors,
        :func:`slift_plugin.adapters.neuralop.lifted_operator` for fields.
    state_shape : tuple of int or None
        ``(d,)`` or ``(C, *grid)``; grid entries may be ``None`` (any resolution).
    history : int
        Number of past states stacked on the channel axis as input (1 = Markov).
    n_params : int
        Number of physics parameters ``mu`` (constant per trajectory).
    residual : bool
        Predict the standardised increment ``x_{k+1} - x_k`` (default) instead of the
        standardised next state.
    dt : float
        Physical length of one step (metadata for rollouts).
    criterion : callable or None
        ``criterion(prediction, target)`` on standardised quantities; mean squared error
        (:func:`mean_squared_error`) when None. A neuraloperator ``LpLoss`` works too.
        It is code, so checkpoints record only its name: ``load_stepper(path)`` rebuilds
        the stepper with the default and warns (sampling never uses it).

    Raises
    ------
    TypeError
        If ``backbone`` is not a :class:`~slift_plugin.protocols.LiftedBackbone`.
    ValueError
        If the backbone's declared input width (``window_channels`` or ``in_features``)
        is not ``history * C``, if ``backbone.n_cond != n_params``, or if
        ``state_shape``, ``history`` or ``n_params`` is invalid for
        :class:`slift_plugin.Stepper`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        state_shape: tuple[int | None, ...],
        *,
        history: int = 1,
        n_params: int = 0,
        residual: bool = True,
        dt: float = math.nan,
        criterion: Criterion | None = None,
    ) -> None:
        super().__init__(state_shape, history=history, n_params=n_params, residual=residual, dt=dt)
        if not isinstance(backbone, LiftedBackbone):
            missing = [
                a for a in ("label_dim", "n_cond", "label_shape") if not hasattr(backbone, a)
            ]
            raise TypeError(
                f"backbone {type(backbone).__name__} is not a slift_plugin.protocols."
                f"LiftedBackbone: it has no {missing}; wrap a plain network with "
                "slift_plugin.MLP or slift_plugin.adapters.neuralop.lifted_operator"
            )
        window = getattr(backbone, "window_channels", getattr(backbone, "in_features", None))
        if window is not None and window != self.window_channels:
            raise ValueError(
                f"backbone takes {window} input state channels/features, but history="
                f"{self.history} x {self.n_channels} state channels = {self.window_channels}"
            )
        if backbone.n_cond != n_params:
            raise ValueError(
                f"backbone is built for n_cond={backbone.n_cond} conditioning inputs, but "
                f"the stepper has n_params={n_params}"
            )
        self.backbone = backbone
        self.criterion = criterion or mean_squared_error

    @property
    def label_dim(self) -> int:
        """Size of the label per point, the backbone's ``label_dim`` (0: no label)."""
        return int(self.backbone.label_dim)

    # -- the model ------------------------------------------------------------------------
    def fixed_labels(self, seed: int, grid_shape: tuple[int, ...] = ()) -> IndexedGaussianLabels:
        """The training labels for data on ``grid_shape``, a function of ``(seed, index)``.

        Parameters
        ----------
        seed : int
            Seed of the labels.
        grid_shape : tuple of int
            The grid of the states (``()`` for vectors).

        Returns
        -------
        IndexedGaussianLabels
            Standard normal labels of shape ``backbone.label_shape(grid_shape)``, indexed
            by the global example index.

        Raises
        ------
        ValueError
            If the backbone takes no label (``label_dim == 0``).
        """
        shape = self.backbone.label_shape(tuple(grid_shape))
        if shape is None:
            raise ValueError(f"{type(self).__name__} has label_dim=0: it takes no labels")
        return IndexedGaussianLabels(shape, seed)

    def noise_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        return self.backbone.label_shape(tuple(grid_shape))

    def _check_label(self, label: Tensor | None, window: Tensor) -> None:
        expected = self.backbone.label_shape(tuple(window.shape[2:]))
        if expected is None:
            if label is not None:
                raise ValueError(
                    f"{type(self).__name__} takes no label (label_dim=0), got a label of "
                    f"shape {tuple(label.shape)}"
                )
            return
        if label is None or tuple(label.shape) != (window.shape[0], *expected):
            got = None if label is None else tuple(label.shape)
            raise ValueError(f"label must have shape {(window.shape[0], *expected)}, got {got}")

    def standardized_output(
        self, window: Tensor, label: Tensor | None = None, mu: Tensor | None = None
    ) -> Tensor:
        """``G`` applied to the standardised inputs: the quantity the loss regresses.

        Parameters
        ----------
        window : Tensor
            The last ``history`` states stacked on channels, ``(B, history*C, *grid)``.
        label : Tensor or None
            The label ``(B, *noise_shape(grid))``; None when ``label_dim == 0``.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None without parameters.

        Returns
        -------
        Tensor
            The backbone's output, the standardised prediction ``g`` (one state per
            example, ``(B, C, *grid)``, for a well-built backbone).

        Raises
        ------
        TypeError
            If ``window`` is not a tensor.
        ValueError
            If ``window`` does not fit the stepper or is an empty batch, if ``label`` is
            missing, unexpected or misshapen, or if ``mu`` is missing, unexpected or
            misshapen.
        """
        self.check_window(window)
        self._check_label(label, window)
        inputs, cond = self.standardized_inputs(window, mu)
        return self.backbone(inputs, label, cond)

    def forward(
        self, x: Tensor, label: Tensor | None = None, mu: Tensor | None = None, **batch: Tensor
    ) -> Tensor:
        """Predict the next state ``(B, C, *grid)`` from window ``x`` and ``label``.

        Extra keyword arguments (``y``, ``index``, ...) are ignored, so that a
        neuraloperator ``Trainer`` can call ``model(**batch)`` on a dict batch.

        Parameters
        ----------
        x : Tensor
            The window, the last ``history`` states stacked on channels,
            ``(B, history*C, *grid)``.
        label : Tensor or None
            The label ``(B, *noise_shape(grid))``; None when ``label_dim == 0``.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None without parameters.
        **batch : Tensor
            Other entries of a dict batch; ignored.

        Returns
        -------
        Tensor
            The predicted next state ``(B, C, *grid)``.

        Raises
        ------
        TypeError
            If ``x`` is not a tensor.
        ValueError
            If ``x`` does not fit the stepper or is an empty batch, or if ``label`` or
            ``mu`` is missing, unexpected or misshapen.
        """
        return self.next_state(x, self.standardized_output(x, label, mu))

    def step(
        self,
        window: Tensor,
        noise: Tensor | None = None,
        *,
        mu: Tensor | None = None,
        t: float | None = None,
    ) -> Tensor:
        return self.forward(window, noise, mu)

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        x, y = batch["x"], batch["y"]
        g = self.standardized_output(x, batch.get("label"), batch.get("mu"))
        target = self.standardized_target(x, y)
        if g.shape != target.shape:  # a criterion would broadcast silently
            raise ValueError(
                f"backbone output has shape {tuple(g.shape)}, expected one standardised state "
                f"per example, {tuple(target.shape)}"
            )
        return self.criterion(g, target)


class MeanRegression(StochasticLifting):
    """The deterministic baseline: the same regression without labels.

    Trained with MSE it predicts the conditional mean, so every rollout from the same
    state is the same trajectory; this is what a plain surrogate does today. Its backbone
    must have ``label_dim == 0``.

    Parameters
    ----------
    backbone : torch.nn.Module
        A :class:`~slift_plugin.protocols.LiftedBackbone` with ``label_dim == 0``.
    state_shape : tuple of int or None
        ``(d,)`` or ``(C, *grid)``; grid entries may be ``None`` (any resolution).
    **kwargs : Any
        ``history``, ``n_params``, ``residual``, ``dt`` and ``criterion``, as for
        :class:`StochasticLifting`.

    Raises
    ------
    TypeError
        If ``backbone`` is not a :class:`~slift_plugin.protocols.LiftedBackbone`.
    ValueError
        If the backbone has ``label_dim != 0``, or does not fit the stepper as for
        :class:`StochasticLifting`.
    """

    def __init__(self, backbone: nn.Module, state_shape: tuple[int | None, ...], **kwargs):
        super().__init__(backbone, state_shape, **kwargs)
        if self.label_dim != 0:
            raise ValueError(
                f"MeanRegression needs a backbone with label_dim=0, got {self.label_dim}"
            )
