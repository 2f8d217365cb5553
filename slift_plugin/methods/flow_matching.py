"""Conditional flow matching for the transition law: the multi-evaluation baseline.

A velocity network ``v(x_k, z, s, mu)`` carries standard normal noise ``z_0`` to the
standardised increment ``z_1 = (x_{k+1} - x_k) / delta_std`` along the straight paths of
rectified flow / OT-CFM with independent coupling::

    z_s = (1 - s) z_0 + s z_1,    loss = E || v(x_k, z_s, s, mu) - (z_1 - z_0) ||^2,

``s ~ U(0, 1)``. Sampling integrates ``dz/ds = v`` from ``s = 0`` to ``1`` with ``n_euler``
explicit Euler steps, so one output step costs ``n_euler`` network evaluations, against one
for Stochastic Lifting. The normalisation is that of :class:`StochasticLifting`
(:class:`slift_plugin.methods.base.TransitionStepper`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..protocols import VelocityBackbone
from .base import FreshNoiseTraining, TransitionStepper

__all__ = ["FlowMatching"]


class FlowMatching(FreshNoiseTraining, TransitionStepper):
    """Conditional flow matching stepper (residual form) around a velocity network.

    ``noise_shape(grid)`` is ``(C, *grid)``: the step's noise is the starting point
    ``z_0`` of the flow. :meth:`step` updates ``z`` in place in buffers allocated once per
    call, so it does not differentiate: call it under ``torch.no_grad()`` or
    ``torch.inference_mode()``, as :func:`slift_plugin.rollout` does.

    Training batches are ``{"x", "y", "index", "mu"?}`` dicts from
    :class:`slift_plugin.TransitionDataset` (or :class:`slift_plugin.WithFixedLabels`):
    ``z_0`` and ``s`` of example ``i`` are a function of ``(seed, training step, index
    i)``, so data-parallel training draws the noise of one process. A ``"label"`` entry
    is ignored, so one dataset can serve Stochastic Lifting and this baseline.

    Parameters
    ----------
    velocity : torch.nn.Module
        A lifted backbone ``v(inputs, None, cond)`` with ``label_dim == 0`` whose input is
        the standardised window and the current point ``z_s`` stacked on channels, so its
        ``window_channels`` (fields) or ``in_features`` (vectors) is ``(history + 1) * C``,
        and whose conditioning is ``[normalised mu, s]``, so ``n_cond == n_params + 1``.
        It returns the velocity ``(B, C, *grid)``. E.g. ``MLP(2 * d, d, label_dim=0,
        n_cond=1)`` or ``lifted_operator("fno", state_channels=C, history=2, label_dim=0,
        n_cond=1, ...)`` for ``history=1``.
    state_shape : tuple of int or None
        ``(d,)`` or ``(C, *grid)``; grid entries may be ``None`` (any resolution).
    history, n_params : int
        As for :class:`slift_plugin.StochasticLifting`.
    n_euler : int
        Euler steps in flow time ``s`` per output step (the cost, :attr:`evals_per_step`);
        may be changed after training.
    dt : float
        As for :class:`slift_plugin.StochasticLifting`.
    seed : int
        Seeds the training noise ``z_0`` and flow times ``s`` (with the step counter).

    Raises
    ------
    TypeError
        If ``velocity`` is not a :class:`~slift_plugin.protocols.VelocityBackbone`
        declaring ``window_channels`` or ``in_features``.
    ValueError
        If ``velocity`` has ``label_dim != 0``, an input width other than
        ``(history + 1) * C``, ``n_cond != n_params + 1`` or ``out_features != C``; if
        ``n_euler`` is not an integer ``>= 1``; or if ``state_shape``, ``history`` or
        ``n_params`` is invalid for :class:`slift_plugin.Stepper`.
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
        self.init_fresh_noise(seed)

    def _check_velocity(self, velocity: nn.Module) -> None:
        name = type(velocity).__name__
        window = getattr(velocity, "window_channels", getattr(velocity, "in_features", None))
        if window is None or not isinstance(velocity, VelocityBackbone):
            raise TypeError(
                f"velocity network {name} is not a slift_plugin.protocols.VelocityBackbone: it "
                "must declare window_channels (or in_features) and n_cond; build it with "
                "slift_plugin.MLP or slift_plugin.adapters.neuralop.lifted_operator"
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
        """Euler steps in flow time per output step; settable to any integer ``>= 1``.

        Setting it to anything else raises a ValueError.
        """
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

    def _velocity(self, inputs_z: Tensor, cond_s: Tensor) -> Tensor:
        """``v`` at ``[window | z]`` ``(B, (h + 1) C, *grid)`` and ``[mu | s]``."""
        v = self.velocity(inputs_z, None, cond_s)
        expected = (inputs_z.shape[0], self.n_channels, *inputs_z.shape[2:])
        if v.shape != expected:
            raise ValueError(
                f"velocity network returned shape {tuple(v.shape)}, expected that of the flow "
                f"point z, {expected}"
            )
        return v

    def _flow_inputs(self, inputs: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """The velocity's inputs ``[window | z]`` and conditioning ``[mu | s]``, with
        ``z`` and ``s`` left to fill (views ``[:, -C:]`` and ``[:, -1]``)."""
        b, c = inputs.shape[0], self.n_channels
        inputs_z = inputs.new_empty((b, inputs.shape[1] + c, *inputs.shape[2:]))
        inputs_z[:, :-c] = inputs
        n_params = 0 if cond is None else cond.shape[1]
        cond_s = inputs.new_empty((b, n_params + 1))
        if cond is not None:
            cond_s[:, :-1] = cond
        return inputs_z, cond_s

    def step(
        self,
        window: Tensor,
        noise: Tensor | None = None,
        *,
        mu: Tensor | None = None,
        t: float | None = None,
    ) -> Tensor:
        """Integrate the flow from ``z_0 = noise`` ``(B, C, *grid)``; returns ``(B, C, *grid)``.

        ``n_euler`` explicit Euler steps of ``dz/ds = v`` from ``s = 0`` to ``1``, then
        ``x_{k+1} = x_k + delta_std * z_1``. It writes ``z`` in place, so it does not
        differentiate: call it under ``torch.no_grad()`` or ``torch.inference_mode()``.

        Parameters
        ----------
        window : Tensor
            The last ``history`` states stacked on channels, ``(B, history*C, *grid)``.
        noise : Tensor or None
            The starting point ``z_0`` of the flow, standard normals ``(B, C, *grid)``;
            required.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None without parameters.
        t : float or None
            Physical time of ``window``'s last state; ignored.

        Returns
        -------
        Tensor
            The next state ``(B, C, *grid)``.

        Raises
        ------
        TypeError
            If ``window`` is not a tensor.
        ValueError
            If ``window`` does not fit the stepper or is an empty batch, if ``mu`` is
            missing, unexpected or misshapen, if ``noise`` is None or not of shape
            ``(B, C, *grid)``, or if the velocity network returns another shape.
        """
        inputs, cond = self.standardized_inputs(window, mu)
        expected = (window.shape[0], self.n_channels, *window.shape[2:])
        if noise is None or tuple(noise.shape) != expected:
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(f"noise (the flow's z_0) must have shape {expected}, got {got}")
        # Allocated once per call: each Euler step writes z and s into these in place.
        inputs_z, cond_s = self._flow_inputs(inputs, cond)
        z = self._integrate(inputs_z, cond_s, noise, self._n_euler, forward=True)
        return self.next_state(window, z)

    def invert(
        self, window: Tensor, y: Tensor, *, mu: Tensor | None = None, n_steps: int | None = None
    ) -> Tensor:
        """The noise ``z_0`` that the flow carries to the next state ``y``: the flow run backwards.

        Integrates ``dz/ds = v`` from ``s = 1`` (the standardised increment of ``y``) down
        to ``s = 0`` with explicit Euler steps, ``v`` taken at the upper end of each step.
        For a well-trained flow the result is standard normal over the data and is a
        transport of it: the coupled labels of Stochastic Lifting
        (:func:`slift_plugin.methods.coupling.teacher_labels`). Call it under
        ``torch.no_grad()`` (it writes ``z`` in place).

        Parameters
        ----------
        window : Tensor
            ``(B, history*C, *grid)``.
        y : Tensor
            The next states ``(B, C, *grid)``.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None without parameters.
        n_steps : int or None
            Euler steps from ``s = 1`` to ``0``; defaults to :attr:`n_euler`.

        Returns
        -------
        Tensor
            ``z_0`` of shape ``(B, C, *grid)``.

        Raises
        ------
        ValueError
            If ``window``, ``y`` or ``mu`` do not fit the stepper, or ``n_steps < 1``.
        """
        n_steps = self._n_euler if n_steps is None else int(n_steps)
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        inputs, cond = self.standardized_inputs(window, mu)
        z1 = self.standardized_target(window, y)
        inputs_z, cond_s = self._flow_inputs(inputs, cond)
        return self._integrate(inputs_z, cond_s, z1, n_steps, forward=False).clone()

    def _integrate(
        self, inputs_z: Tensor, cond_s: Tensor, start: Tensor, n_steps: int, *, forward: bool
    ) -> Tensor:
        """Euler steps of the flow in place in ``inputs_z[:, -C:]``, from ``s = 0`` (forward)
        or ``s = 1`` (backward); ``v`` at the end of each step the integration starts from."""
        z, h = inputs_z[:, -self.n_channels :], 1.0 / n_steps
        z.copy_(start)
        for i in range(n_steps):
            cond_s[:, -1] = i * h if forward else 1.0 - i * h
            z.add_(self._velocity(inputs_z, cond_s).mul_(h if forward else -h))
        return z

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Mean squared error of the velocity against ``z_1 - z_0`` (mean over all entries).

        ``z_1`` is the standardised increment of each transition, ``z_0`` and the flow time
        ``s ~ U(0, 1)`` are drawn per example by :meth:`training_noise`.

        Parameters
        ----------
        batch : Mapping[str, Tensor]
            ``{"x": (B, history*C, *grid), "y": (B, C, *grid), "index": (B,), "mu"?:
            (B, n_params)}``; a ``"label"`` entry is ignored.

        Returns
        -------
        Tensor
            The scalar loss, with a graph to the velocity network's parameters.

        Raises
        ------
        TypeError
            If ``batch["x"]`` is not a tensor.
        ValueError
            If ``x`` does not fit the stepper or is an empty batch, ``mu`` is missing,
            unexpected or misshapen, ``y`` is not one state per example, ``index`` is
            missing or not one integer per example, or the velocity network returns
            another shape than ``(B, C, *grid)``.
        """
        x = batch["x"]
        inputs, cond = self.standardized_inputs(x, batch.get("mu"))
        z1 = self.standardized_target(x, batch["y"])
        # per example: z_0 and one more normal, mapped to s ~ U(0, 1) by its CDF
        z0, n = self.training_noise(batch, tuple(z1.shape[1:]), (1,))
        s = torch.special.ndtr(n)
        inputs_z, cond_s = self._flow_inputs(inputs, cond)
        cond_s[:, -1:] = s
        s_b = s.reshape(-1, *([1] * (z1.ndim - 1)))
        inputs_z[:, -self.n_channels :] = (1 - s_b) * z0 + s_b * z1
        v = self._velocity(inputs_z, cond_s)
        return torch.mean((v - (z1 - z0)) ** 2)
