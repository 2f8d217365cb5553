"""Conditional flow matching for the transition law: the multi-evaluation baseline.

A velocity network ``v(x_k, z, s, mu)`` carries standard normal noise ``z_0`` to the
standardised increment ``z_1 = (x_{k+1} - x_k) / delta_std`` along the straight paths of
rectified flow / OT-CFM with independent coupling::

    z_s = (1 - s) z_0 + s z_1,    loss = E || v(x_k, z_s, s, mu) - (z_1 - z_0) ||^2,

``s ~ U(0, 1)``. Sampling integrates ``dz/ds = v`` from ``s = 0`` to ``1`` with ``n_euler``
explicit Euler steps, so one output step costs ``n_euler`` network evaluations, against one
for Stochastic Lifting. The normalisation is that of :class:`StochasticLifting`
(:class:`slift_plugin.lifting.TransitionStepper`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .data import _check_finite
from .labels import hash_seed
from .lifting import TransitionStepper


class FreshNoiseTraining:
    """Mixin for steppers whose loss draws fresh noise at every training step.

    The noise of a training step comes from a generator seeded with ``(seed,
    training_step)``, where ``training_step`` is a buffer: it travels with ``state_dict``
    and checkpoints, so a resumed :func:`slift_plugin.fit` draws exactly the noise an
    uninterrupted run would, and no draw touches the global RNG. Call
    :meth:`_init_fresh_noise` after ``nn.Module.__init__``.
    """

    seed: int
    training_step: Tensor

    def _init_fresh_noise(self, seed: int) -> None:
        self.seed = int(seed)
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long))

    def training_generator(self, device: torch.device) -> torch.Generator:
        """The generator of the current step; in training mode the counter then advances.

        In eval mode the counter stays, so an evaluation loss is repeatable and does not
        shift the noise of later training steps.
        """
        seed = hash_seed(self.seed, int(self.training_step))
        g = torch.Generator(device=device).manual_seed(seed)
        if self.training:
            self.training_step += 1
        return g


def check_finite_batch(batch: Mapping[str, Tensor]) -> None:
    """Raise a ValueError naming the entry of ``batch`` (x, y, mu) that holds NaN/Inf."""
    for key in ("x", "y", "mu"):
        if batch.get(key) is not None:
            _check_finite(batch[key], f"batch[{key!r}]")


class FlowMatching(FreshNoiseTraining, TransitionStepper):
    """Conditional flow matching stepper (residual form) around a velocity network.

    Parameters
    ----------
    velocity:
        A lifted backbone ``v(inputs, None, cond)`` with ``label_dim == 0`` whose input is
        the standardised window and the current point ``z_s`` stacked on channels, so its
        ``window_channels`` (fields) or ``in_features`` (vectors) is ``(history + 1) * C``,
        and whose conditioning is ``[normalised mu, s]``, so ``n_cond == n_params + 1``.
        It returns the velocity ``(B, C, *grid)``. E.g. ``MLP(2 * d, d, label_dim=0,
        n_cond=1)`` or ``lifted_operator("fno", state_channels=C, history=2, label_dim=0,
        n_cond=1, ...)`` for ``history=1``.
    state_shape:
        ``(d,)`` or ``(C, *grid)``; grid entries may be ``None`` (any resolution).
    history, n_params, dt:
        As for :class:`slift_plugin.StochasticLifting`.
    n_euler:
        Euler steps in flow time ``s`` per output step (the cost, :attr:`evals_per_step`);
        may be changed after training.
    seed:
        Seeds the training noise ``z_0`` and flow times ``s`` (with the step counter).

    ``noise_shape(grid)`` is ``(C, *grid)``: the step's noise is the starting point
    ``z_0`` of the flow. Training batches are ``{"x", "y", "mu"?}`` dicts from
    :class:`slift_plugin.TransitionDataset`; a ``"label"`` entry is ignored, so one
    dataset can serve Stochastic Lifting and this baseline.
    """

    def __init__(
        self,
        velocity: nn.Module,
        state_shape: tuple[int | None, ...],
        *,
        history: int = 1,
        n_params: int = 0,
        n_euler: int = 20,
        dt: float = math.nan,
        seed: int = 0,
    ) -> None:
        super().__init__(state_shape, history=history, n_params=n_params, residual=True, dt=dt)
        self._check_velocity(velocity)
        self.velocity = velocity
        self.n_euler = n_euler
        self._init_fresh_noise(seed)

    def _check_velocity(self, velocity: nn.Module) -> None:
        name = type(velocity).__name__
        window = getattr(velocity, "window_channels", getattr(velocity, "in_features", None))
        if window is None or not hasattr(velocity, "n_cond"):
            raise TypeError(
                f"velocity network {name} must declare window_channels (or in_features) and "
                "n_cond; build it with slift_plugin.MLP or "
                "slift_plugin.adapters.neuralop.lifted_operator"
            )
        if getattr(velocity, "label_dim", 0) != 0:
            raise ValueError(
                f"velocity network must have label_dim=0 (the noise enters as the flow point "
                f"z on the input channels), got label_dim={velocity.label_dim}"
            )
        expected = (self.history + 1) * self.n_channels
        if window != expected:
            raise ValueError(
                f"velocity network takes {window} input state channels/features, expected "
                f"(history + 1) x C = ({self.history} + 1) x {self.n_channels} = {expected}: "
                "the window and the flow point z stacked on channels"
            )
        if velocity.n_cond != self.n_params + 1:
            raise ValueError(
                f"velocity network is built for n_cond={velocity.n_cond} conditioning inputs, "
                f"expected n_params + 1 = {self.n_params + 1} (normalised mu, then flow time s)"
            )
        out = getattr(velocity, "out_features", self.n_channels)
        if out != self.n_channels:
            raise ValueError(
                f"velocity network returns {out} features, expected one state, {self.n_channels}"
            )

    @property
    def n_euler(self) -> int:
        return self._n_euler

    @n_euler.setter
    def n_euler(self, value: int) -> None:
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"n_euler must be an integer >= 1, got {value!r}")
        self._n_euler = int(value)

    @property
    def evals_per_step(self) -> int:  # type: ignore[override]
        """One velocity evaluation per Euler step."""
        return self._n_euler

    def noise_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.n_channels, *tuple(grid_shape))

    def _velocity(self, inputs: Tensor, z: Tensor, s: Tensor, cond: Tensor | None) -> Tensor:
        """``v`` at flow point ``z`` ``(B, C, *grid)`` and flow times ``s`` ``(B,)``."""
        s = s.reshape(-1, 1).to(z.dtype)
        cond = s if cond is None else torch.cat([cond, s], dim=1)
        v = self.velocity(torch.cat([inputs, z], dim=1), None, cond)
        if v.shape != z.shape:
            raise ValueError(
                f"velocity network returned shape {tuple(v.shape)}, expected that of the flow "
                f"point z, {tuple(z.shape)}"
            )
        return v

    def step(
        self,
        window: Tensor,
        noise: Tensor | None = None,
        *,
        mu: Tensor | None = None,
        t: float | None = None,
    ) -> Tensor:
        """Integrate the flow from ``z_0 = noise`` ``(B, C, *grid)``; returns ``(B, C, *grid)``."""
        inputs, cond = self.standardized_inputs(window, mu)
        expected = (window.shape[0], self.n_channels, *window.shape[2:])
        if noise is None or tuple(noise.shape) != expected:
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(f"noise (the flow's z_0) must have shape {expected}, got {got}")
        z, h = noise, 1.0 / self._n_euler
        for i in range(self._n_euler):  # explicit Euler: v at the left end s_i = i h
            s = torch.full((window.shape[0],), i * h, device=z.device, dtype=z.dtype)
            z = z + h * self._velocity(inputs, z, s, cond)
        return self.next_state(window, z)

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Mean squared error of the velocity against ``z_1 - z_0`` (mean over all entries)."""
        check_finite_batch(batch)
        x = batch["x"]
        inputs, cond = self.standardized_inputs(x, batch.get("mu"))
        z1 = self.standardized_target(x, batch["y"])
        g = self.training_generator(x.device)
        z0 = torch.randn(z1.shape, generator=g, device=z1.device, dtype=z1.dtype)
        s = torch.rand(z1.shape[0], generator=g, device=z1.device, dtype=z1.dtype)
        s_b = s.reshape(-1, *([1] * (z1.ndim - 1)))
        v = self._velocity(inputs, (1 - s_b) * z0 + s_b * z1, s, cond)
        return torch.mean((v - (z1 - z0)) ** 2)
