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
from collections.abc import Mapping

import torch
from torch import Tensor, nn


class Stepper(nn.Module):
    """Base class of all steppers.

    Attributes
    ----------
    state_shape:
        Shape of one state without the batch axis: ``(C, *grid)`` or ``(d,)``. A grid
        entry may be ``None`` for resolution-agnostic backbones (neural operators).
    history:
        Number of past states one step consumes (1 = Markov).
    n_params:
        Number of physics parameters ``mu`` the stepper is conditioned on (0 = none).
    dt:
        Physical length of one step (``nan`` when unknown).
    evals_per_step:
        Backbone evaluations per step; the cost unit the benchmarks report.
    """

    evals_per_step: int = 1
    #: True for steppers that differentiate inside a step (rollout then uses no_grad
    #: instead of inference_mode).
    requires_grad_in_step: bool = False
    #: True for steppers whose step is pure tensor work on its inputs that ignores ``t``
    #: (no host synchronisation, no Python branching on values): rollout may then capture
    #: it in a CUDA graph (``rollout(..., cuda_graph=True)``).
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
        self.state_shape = state_shape
        self.history = int(history)
        self.n_params = int(n_params)
        self.dt = float(dt)

    # -- the contract ---------------------------------------------------------------------
    def noise_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Per-sample shape of the standard normal noise one step consumes (None: none)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement noise_shape()")

    def step(
        self,
        window: Tensor,
        noise: Tensor | None = None,
        *,
        mu: Tensor | None = None,
        t: float | None = None,
    ) -> Tensor:
        """Advance ``window`` (``(B, history*C, *grid)``) by one output step."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Training objective of one batch (mean over the batch)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement loss()")

    def prepare(self, dataset: object) -> None:
        """Called by :func:`slift_plugin.fit` before training (e.g. to fit normalisation).

        The base stepper needs nothing from the data.
        """

    # -- shared helpers -------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return self.state_shape[0]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self.state_shape[1:]

    @property
    def window_channels(self) -> int:
        return self.history * self.n_channels

    def param_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        for p in self.parameters():
            return p.device, p.dtype
        for b in self.buffers():
            return b.device, b.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def check_window(self, window: Tensor, name: str = "window") -> None:
        """Raise a ValueError unless ``window`` is ``(B, history*C, *grid)``."""
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

    def check_mu(self, mu: Tensor | None, batch: int) -> Tensor | None:
        """Validate the physics parameters of a batch; returns them as ``(B, n_params)``."""
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


class NormalizedStepper(Stepper):
    """A stepper whose inputs are standardised with statistics stored in buffers.

    Subclasses list the statistics in :meth:`normalization_shapes` (name -> shape; names
    ending in ``std``/``scale`` must be positive). The buffers travel with ``state_dict``
    and checkpoints; :func:`slift_plugin.fit` fills them from ``dataset.statistics()``.
    """

    def __init__(self, state_shape: tuple[int | None, ...], **kwargs) -> None:
        super().__init__(state_shape, **kwargs)
        for name, shape in self.normalization_shapes().items():
            fill = torch.ones if name.endswith(("std", "scale")) else torch.zeros
            self.register_buffer(name, fill(shape))
        self.register_buffer("normalized", torch.tensor(False))

    def normalization_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError(f"{type(self).__name__} lists no normalisation statistics")

    def required_statistics(self) -> list[str]:
        """Statistics without which the stepper cannot be normalised (default: all)."""
        return list(self.normalization_shapes())

    def _adjust_normalization(self, checked: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook to override validated statistics before they are stored."""
        return checked

    def set_normalization(self, statistics: Mapping[str, Tensor]) -> None:
        """Validate every statistic (shape, finite, positive spreads), then store them all."""
        shapes = self.normalization_shapes()
        missing = [k for k in self.required_statistics() if k not in statistics]
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs normalisation statistics {missing}; got "
                f"{sorted(statistics)}"
                + (" (the dataset must carry mu)" if any("param" in k for k in missing) else "")
            )
        checked = {}
        for name, shape in shapes.items():
            if name not in statistics:
                continue
            value = torch.as_tensor(statistics[name], dtype=torch.float32)
            if tuple(value.shape) != tuple(shape) or not torch.isfinite(value).all():
                raise ValueError(
                    f"{name} must be a finite tensor of shape {tuple(shape)}, got "
                    f"{tuple(value.shape)} {value.tolist()}"
                )
            if name.endswith(("std", "scale")) and (value <= 0).any():
                raise ValueError(f"{name} must be positive, got {value.tolist()}")
            checked[name] = value.clone()
        for name, value in self._adjust_normalization(checked).items():
            getattr(self, name).copy_(value)  # only after every value passed
        self.normalized.fill_(True)

    def prepare(self, dataset: object) -> None:
        if bool(self.normalized):
            return
        statistics = getattr(dataset, "statistics", None)
        if statistics is None:
            raise ValueError(
                f"{type(self).__name__} is not normalised and the dataset "
                f"({type(dataset).__name__}) has no statistics(); call set_normalization()"
            )
        self.set_normalization(statistics())
