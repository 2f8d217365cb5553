"""The contract that every stochastic stepper fulfils.

A stepper advances a batch of states by one output step of physical length ``dt``::

    noise = torch.randn(batch, *stepper.noise_shape(grid), generator=g)
    x_next = stepper.step(window, noise, mu=mu, t=t)

``window`` holds the last ``history`` states stacked along the channel axis (oldest
first), shape ``(batch, history * C, *grid)`` for fields or ``(batch, history * d)`` for
vectors. The step returns ``(batch, C, *grid)`` / ``(batch, d)``.

The randomness of a step is an explicit argument, a standard normal tensor of shape
``(batch, *noise_shape(grid))``: the step itself is a deterministic function. This is how
torchsde separates the solver from the Brownian motion, and it is what lets
:func:`slift_plugin.rollout` derive every draw from ``(seed, sample block)`` so that an
ensemble does not depend on chunking or on the number of processes.

Training goes through :meth:`Stepper.loss`, which maps a batch dictionary to a scalar,
so that one :func:`slift_plugin.fit` loop serves every method.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["Stepper"]


class Stepper(nn.Module, ABC):
    """Abstract base class of all steppers.

    A subclass implements :meth:`noise_shape`, :meth:`step` and :meth:`loss`; one that
    leaves any of them out cannot be instantiated. Its capabilities are the class
    attributes below, which the machinery (:func:`slift_plugin.rollout`,
    :func:`slift_plugin.fit`, the benchmark) reads instead of asking for the class.

    Parameters
    ----------
    state_shape : tuple of int or None
        Shape of one state without the batch axis: ``(C, *grid)`` or ``(d,)``. A grid
        entry may be ``None`` for resolution-agnostic backbones (neural operators).
    history : int
        Number of past states one step consumes (1 = Markov).
    n_params : int
        Number of physics parameters ``mu`` the stepper is conditioned on (0 = none).
    dt : float
        Physical length of one step (``nan`` when unknown).

    Attributes
    ----------
    evals_per_step : int
        Backbone evaluations per step, the cost unit the benchmarks report. A method
        whose count is a hyperparameter (flow matching's Euler steps) overrides it with
        a property.
    state_shape : tuple of int or None
        As given, the sizes as ints.
    history, n_params : int
        As given.
    dt : float
        As given.
    requires_grad_in_step : bool
        True for steppers that differentiate inside a step (DICE's velocity is a
        gradient): rollout then runs under ``no_grad`` instead of ``inference_mode``.
    cuda_graph_safe : bool
        True for steppers whose step is pure tensor work on its inputs that ignores
        ``t`` (no host synchronisation, no Python branching on values), so that
        ``rollout(..., cuda_graph=True)`` may capture it in a CUDA graph.

    Raises
    ------
    ValueError
        If ``state_shape`` is empty, has no channel size or a size below one, or if
        ``history < 1``, ``n_params < 0``, or ``dt`` is neither nan nor finite and > 0.
    """

    evals_per_step: int = 1
    requires_grad_in_step: bool = False
    cuda_graph_safe: bool = False

    def __init__(
        self,
        state_shape: tuple[int, ...],
        *,
        history: int = 1,
        n_params: int = 0,
        dt: float = math.nan,
    ) -> None:
        super().__init__()
        state_shape = tuple(None if s is None else int(s) for s in state_shape)
        if (
            not state_shape
            or state_shape[0] is None
            or any(s is not None and s <= 0 for s in state_shape)
        ):
            raise ValueError(
                f"state_shape must be (C, *grid) or (d,) with positive sizes, got {state_shape}"
            )
        if int(history) < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if int(n_params) < 0:
            raise ValueError(f"n_params must be >= 0, got {n_params}")
        if not (math.isnan(float(dt)) or (math.isfinite(float(dt)) and float(dt) > 0)):
            # a zero, negative or infinite step makes degenerate time coordinates
            raise ValueError(f"dt must be a finite step > 0, or nan when unknown; got {dt}")
        self.state_shape = state_shape
        self.history = int(history)
        self.n_params = int(n_params)
        self.dt = float(dt)

    # -- the contract ---------------------------------------------------------------------
    @abstractmethod
    def noise_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Per-sample shape of the standard normal noise one step consumes.

        Parameters
        ----------
        grid_shape : tuple of int
            The grid of the states rolled out (``()`` for vector states).

        Returns
        -------
        tuple of int or None
            ``noise`` of :meth:`step` has shape ``(B, *noise_shape(grid_shape))``; None
            when a step consumes no randomness.
        """

    @abstractmethod
    def step(
        self,
        window: Tensor,
        noise: Tensor | None = None,
        *,
        mu: Tensor | None = None,
        t: float | None = None,
    ) -> Tensor:
        """Advance a batch by one output step; a deterministic function of its inputs.

        Parameters
        ----------
        window : Tensor
            The last ``history`` states stacked on channels, ``(B, history*C, *grid)``.
        noise : Tensor or None
            Standard normals ``(B, *noise_shape(grid))``, or None when it is None.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``.
        t : float or None
            Physical time of ``window``'s last state.

        Returns
        -------
        Tensor
            The next state ``(B, C, *grid)``.
        """

    @abstractmethod
    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Training objective of one batch, a scalar (mean over its examples).

        Parameters
        ----------
        batch : Mapping[str, Tensor]
            The dict batch of the method's dataset (transitions carry ``x``, ``y`` and
            ``index``; snapshots carry ``x`` and ``t``).

        Returns
        -------
        Tensor
            A scalar with a graph to the trainable parameters.
        """

    def prepare(self, dataset: object) -> None:
        """Called by :func:`slift_plugin.fit` before training (e.g. to fit normalisation).

        The base stepper needs nothing from the data.

        Parameters
        ----------
        dataset : object
            The training set handed to :func:`slift_plugin.fit`.
        """

    def examples_in(self, batch: Mapping[str, Tensor]) -> int:
        """Number of examples that ``loss(batch)`` averages over.

        :func:`slift_plugin.fit` weights each batch's loss by it for the epoch mean. The
        default reads the leading axis of ``batch["x"]`` (transition batches); steppers
        whose batches have another layout override it.

        Parameters
        ----------
        batch : Mapping[str, Tensor]
            A batch as :meth:`loss` receives it.

        Returns
        -------
        int
            The number of examples (1 when the batch has no ``x``).
        """
        x = batch.get("x")
        return 1 if x is None else int(x.shape[0])

    # -- shared helpers -------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        """Channels ``C`` of one state (``d`` for vector states)."""
        return self.state_shape[0]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Grid of one state, ``state_shape[1:]`` (``()`` for vector states)."""
        return self.state_shape[1:]

    @property
    def window_channels(self) -> int:
        """Channels of a window, ``history * n_channels``."""
        return self.history * self.n_channels

    def param_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Device and dtype of the first parameter (else buffer) of the stepper.

        Returns
        -------
        tuple of (torch.device, torch.dtype)
            The CPU and the default dtype when the stepper holds no tensors.
        """
        for p in self.parameters():
            return p.device, p.dtype
        for b in self.buffers():
            return b.device, b.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def check_window(self, window: Tensor, name: str = "window") -> None:
        """Raise unless ``window`` is a non-empty ``(B, history*C, *grid)`` tensor.

        Parameters
        ----------
        window : Tensor
            The tensor to check; ``None`` grid sizes of ``state_shape`` match any size.
        name : str
            What to call it in the error message.

        Raises
        ------
        TypeError
            If ``window`` is not a tensor.
        ValueError
            If its shape does not fit the stepper or its batch is empty.
        """
        if not isinstance(window, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(window).__name__}")
        expected = (self.window_channels, *self.grid_shape)
        got = tuple(window.shape[1:])
        if len(got) != len(expected) or any(
            e is not None and e != g for e, g in zip(expected, got, strict=True)
        ):
            shown = ", ".join("*" if e is None else str(e) for e in expected)
            raise ValueError(
                f"{name} must have shape (batch, {shown}) (history={self.history} states of "
                f"shape {self.state_shape} stacked on channels), got {tuple(window.shape)}"
            )
        if window.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {tuple(window.shape)})")

    def check_noise(self, window: Tensor, noise: Tensor | None, name: str = "noise") -> None:
        """Raise a ValueError unless ``noise`` fits :meth:`noise_shape` on ``window``'s grid.

        Parameters
        ----------
        window : Tensor
            The step's window ``(B, history*C, *grid)``.
        noise : Tensor or None
            Must be ``(B, *noise_shape(grid))``, or None when ``noise_shape`` is None.
        name : str
            What the noise is called in the message (a method's label, a flow's ``z_0``).

        Raises
        ------
        ValueError
            Naming the expected and the given shape; a wrong noise could otherwise
            broadcast into the state silently.
        """
        per_sample = self.noise_shape(tuple(window.shape[2:]))
        got = None if noise is None else tuple(noise.shape)
        if per_sample is None:
            if noise is not None:
                raise ValueError(
                    f"{type(self).__name__} takes no {name} (noise_shape is None), got a "
                    f"{name} of shape {got}"
                )
            return
        expected = (window.shape[0], *per_sample)
        if got != expected:
            raise ValueError(f"{name} must have shape {expected}, got {got}")

    def check_mu(self, mu: Tensor | None, batch: int) -> Tensor | None:
        """Validate the physics parameters of a batch.

        Parameters
        ----------
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None (or empty) for a stepper without
            parameters.
        batch : int
            The batch size ``B``.

        Returns
        -------
        Tensor or None
            ``mu`` unchanged, or None when the stepper has no parameters.

        Raises
        ------
        ValueError
            If ``mu`` is missing, unexpected, or not of shape ``(B, n_params)``.
        """
        if self.n_params == 0:
            if mu is not None and mu.numel() > 0:
                raise ValueError(
                    f"this stepper was built without physics parameters (n_params=0) "
                    f"but mu of shape {tuple(mu.shape)} was given"
                )
            return None
        if mu is None:
            raise ValueError(f"this stepper needs mu of shape (batch, {self.n_params}), got None")
        if mu.ndim != 2 or mu.shape != (batch, self.n_params):
            raise ValueError(
                f"mu must have shape ({batch}, {self.n_params}), got {tuple(mu.shape)}"
            )
        return mu
