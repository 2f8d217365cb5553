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

from .labels import IndexedGaussianLabels
from .stepper import NormalizedStepper

Criterion = Callable[[Tensor, Tensor], Tensor]


def mean_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    return torch.mean((prediction - target) ** 2)


class TransitionStepper(NormalizedStepper):
    """A stepper that learns ``x_{k+1} | window`` in standardised coordinates.

    The shared normalisation of every transition method (Stochastic Lifting and the
    baselines it is compared with): per channel state mean/std, per channel increment std
    and parameter mean/std, in buffers filled from ``dataset.statistics()``. A subclass
    predicts a standardised quantity ``g`` of shape ``(B, C, *grid)``:

    * ``residual=True``: the increment, ``x_{k+1} = x_k + delta_std * g``;
    * ``residual=False``: the state, ``x_{k+1} = state_mean + state_std * g``.
    """

    cuda_graph_safe = True  # one backbone call on the inputs; t is ignored

    def __init__(
        self,
        state_shape: tuple[int | None, ...],
        *,
        history: int = 1,
        n_params: int = 0,
        residual: bool = True,
        dt: float = math.nan,
    ) -> None:
        super().__init__(state_shape, history=history, n_params=n_params, dt=dt)
        self.residual = bool(residual)

    def normalization_shapes(self) -> dict[str, tuple[int, ...]]:
        c, p = self.n_channels, self.n_params
        return {
            "state_mean": (c,),
            "state_std": (c,),
            "delta_std": (c,),
            "param_mean": (p,),
            "param_std": (p,),
        }

    def required_statistics(self) -> list[str]:
        names = ["state_mean", "state_std", "delta_std"]
        return names + (["param_mean", "param_std"] if self.n_params else [])

    def _per_channel(self, v: Tensor, repeats: int, ndim: int) -> Tensor:
        return v.repeat(repeats).reshape(1, -1, *([1] * (ndim - 2)))

    def standardized_inputs(
        self, window: Tensor, mu: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Validate and standardise ``(window (B, history*C, *grid), mu (B, n_params))``.

        Returns the standardised window and ``mu`` (``None`` when ``n_params == 0``).
        """
        self.check_window(window)
        mu = self.check_mu(mu, window.shape[0])
        mean = self._per_channel(self.state_mean, self.history, window.ndim)
        std = self._per_channel(self.state_std, self.history, window.ndim)
        cond = None if mu is None else (mu - self.param_mean) / self.param_std
        return (window - mean) / std, cond

    def _last_state(self, window: Tensor) -> Tensor:
        return window[:, (self.history - 1) * self.n_channels :]

    def standardized_target(self, window: Tensor, y: Tensor) -> Tensor:
        """The standardised quantity ``g`` that maps ``window`` to the next state ``y``."""
        expected = (window.shape[0], self.n_channels, *window.shape[2:])
        if tuple(y.shape) != expected:
            raise ValueError(
                f"y must have the shape of one state per example, {expected}, got {tuple(y.shape)}"
            )
        if self.residual:
            return (y - self._last_state(window)) / self._per_channel(self.delta_std, 1, y.ndim)
        return (y - self._per_channel(self.state_mean, 1, y.ndim)) / self._per_channel(
            self.state_std, 1, y.ndim
        )

    def next_state(self, window: Tensor, g: Tensor) -> Tensor:
        """The next state ``(B, C, *grid)`` from the standardised prediction ``g``."""
        if self.residual:
            return self._last_state(window) + self._per_channel(self.delta_std, 1, g.ndim) * g
        return (
            self._per_channel(self.state_mean, 1, g.ndim)
            + self._per_channel(self.state_std, 1, g.ndim) * g
        )


class StochasticLifting(TransitionStepper):
    """Stochastic Lifting stepper around a lifted backbone.

    Parameters
    ----------
    backbone:
        A module ``G(window, label, cond)`` with attribute ``label_dim`` and method
        ``label_shape(grid) -> shape | None``: :class:`slift_plugin.MLP` for vectors,
        :func:`slift_plugin.adapters.neuralop.lifted_operator` for fields.
    state_shape:
        ``(d,)`` or ``(C, *grid)``; grid entries may be ``None`` (any resolution).
    history:
        Number of past states stacked on the channel axis as input (1 = Markov).
    n_params:
        Number of physics parameters ``mu`` (constant per trajectory).
    residual:
        Predict the standardised increment ``x_{k+1} - x_k`` (default) instead of the
        standardised next state.
    dt:
        Physical length of one step (metadata for rollouts).
    criterion:
        ``criterion(prediction, target)`` on standardised quantities; mean squared error
        by default. A neuraloperator ``LpLoss`` works too.

    Normalisation (per channel state mean/std, per channel increment std, parameter
    mean/std) lives in buffers, so it travels with ``state_dict`` and checkpoints.
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
        for attr in ("label_dim", "label_shape"):
            if not hasattr(backbone, attr):
                raise TypeError(
                    f"backbone {type(backbone).__name__} has no '{attr}'; wrap a plain network "
                    "with slift_plugin.MLP or slift_plugin.adapters.neuralop.lifted_operator"
                )
        window = getattr(backbone, "window_channels", getattr(backbone, "in_features", None))
        if window is not None and window != self.window_channels:
            raise ValueError(
                f"backbone takes {window} input state channels/features, but history="
                f"{self.history} x {self.n_channels} state channels = {self.window_channels}"
            )
        if getattr(backbone, "n_cond", n_params) != n_params:
            raise ValueError(
                f"backbone is built for n_cond={backbone.n_cond} conditioning inputs, but "
                f"the stepper has n_params={n_params}"
            )
        self.backbone = backbone
        self.criterion = criterion or mean_squared_error

    @property
    def label_dim(self) -> int:
        return int(self.backbone.label_dim)

    # -- the model ------------------------------------------------------------------------
    def fixed_labels(self, seed: int, grid_shape: tuple[int, ...] = ()) -> IndexedGaussianLabels:
        """The training labels for data on ``grid_shape``, a function of ``(seed, index)``."""
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
        """``G`` applied to the standardised inputs: the quantity the loss regresses."""
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
    """

    def __init__(self, backbone: nn.Module, state_shape: tuple[int | None, ...], **kwargs):
        super().__init__(backbone, state_shape, **kwargs)
        if self.label_dim != 0:
            raise ValueError(
                f"MeanRegression needs a backbone with label_dim=0, got {self.label_dim}"
            )
