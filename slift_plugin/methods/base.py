"""The bases that the methods share: normalisation, transitions, fresh training noise.

:class:`NormalizedStepper`
    standardisation statistics in buffers, validated, filled from the data; it also owns
    the standardisation of the physics parameters ``mu`` that every method needs;
:class:`TransitionStepper`
    a stepper that learns ``x_{k+1} | window`` in standardised coordinates (SL, the
    MSE baseline, flow matching, the energy score);
:class:`FreshNoiseTraining`
    a mixin for losses that draw new noise at every training step, keyed by example.

A new method subclasses the one that fits (see CONTRIBUTING.md).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor

from ..labels import IndexedGaussianLabels, hash_seed
from ..stepper import Stepper

__all__ = ["FreshNoiseTraining", "NormalizedStepper", "TransitionStepper"]


class NormalizedStepper(Stepper):
    """A stepper whose inputs are standardised with statistics stored in buffers.

    A subclass lists its own statistics in :meth:`state_statistics_shapes` (name ->
    shape; names ending in ``std``/``scale`` must be positive); the standardisation of the
    physics parameters, ``param_mean`` and ``param_std`` of shape ``(n_params,)``, is added
    here for every method. The buffers travel with ``state_dict`` and checkpoints;
    :func:`slift_plugin.fit` fills them from ``dataset.statistics()`` through
    :meth:`prepare`.

    Parameters
    ----------
    state_shape : tuple of int or None
        Shape of one state without the batch axis, ``(C, *grid)`` or ``(d,)``; grid
        entries may be ``None`` (any resolution).
    **kwargs : Any
        ``history``, ``n_params`` and ``dt``, passed on to :class:`slift_plugin.Stepper`.

    Raises
    ------
    ValueError
        As :class:`slift_plugin.Stepper` does, for an invalid ``state_shape``,
        ``history`` or ``n_params``.
    """

    def __init__(self, state_shape: tuple[int | None, ...], **kwargs) -> None:
        super().__init__(state_shape, **kwargs)
        for name, shape in self.normalization_shapes().items():
            fill = torch.ones if name.endswith(("std", "scale")) else torch.zeros
            self.register_buffer(name, fill(shape))
        self.register_buffer("normalized", torch.tensor(False))

    @abstractmethod
    def state_statistics_shapes(self) -> dict[str, tuple[int, ...]]:
        """The method's own statistics (name -> shape), all of them required.

        Returns
        -------
        dict of str to tuple of int
            The shape of each statistic buffer, by name; names ending in ``std`` or
            ``scale`` are spreads (initialised to one, required to be positive).
        """

    def normalization_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every statistic buffer, the method's own first, then ``param_mean/std``.

        Returns
        -------
        dict of str to tuple of int
            :meth:`state_statistics_shapes` followed by ``param_mean`` and ``param_std``,
            both ``(n_params,)`` (``(0,)`` without physics parameters).
        """
        p = self.n_params
        return {**self.state_statistics_shapes(), "param_mean": (p,), "param_std": (p,)}

    def required_statistics(self) -> list[str]:
        """Statistics without which the stepper cannot be normalised.

        Returns
        -------
        list of str
            The names of :meth:`state_statistics_shapes`, plus ``param_mean`` and
            ``param_std`` when ``n_params > 0``.
        """
        names = list(self.state_statistics_shapes())
        return names + (["param_mean", "param_std"] if self.n_params else [])

    def standardized_mu(self, mu: Tensor | None, batch: int) -> Tensor | None:
        """Validate ``mu`` ``(batch, n_params)`` and standardise it (None without params).

        Parameters
        ----------
        mu : Tensor or None
            Physics parameters ``(batch, n_params)``; None (or empty) for a stepper
            without parameters.
        batch : int
            The batch size ``B``.

        Returns
        -------
        Tensor or None
            ``(mu - param_mean) / param_std``, ``(batch, n_params)``; None when
            ``n_params == 0``.

        Raises
        ------
        ValueError
            If ``mu`` is missing, unexpected, or not of shape ``(batch, n_params)``.
        """
        mu = self.check_mu(mu, batch)
        return None if mu is None else (mu - self.param_mean) / self.param_std

    def _adjust_normalization(self, checked: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook to override validated statistics before they are stored."""
        return checked

    def set_normalization(self, statistics: Mapping[str, Tensor]) -> None:
        """Validate every statistic (shape, finite, positive spreads), then store them all.

        Nothing is stored unless every statistic passes; then ``normalized`` is set.

        Parameters
        ----------
        statistics : Mapping[str, Tensor]
            Statistic values by name, with the shapes of :meth:`normalization_shapes`
            (array-likes are converted to float32 tensors). Every name of
            :meth:`required_statistics` must be present; names of no buffer are ignored.

        Raises
        ------
        ValueError
            If a required statistic is missing, a statistic is not a finite tensor of
            its buffer's shape, or a spread (name ending in ``std``/``scale``) is not
            positive.
        """
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
        """Fill the statistics from ``dataset.statistics()`` unless already normalised.

        Parameters
        ----------
        dataset : object
            The training set handed to :func:`slift_plugin.fit`; its ``statistics()``
            returns the mapping that :meth:`set_normalization` takes.

        Raises
        ------
        ValueError
            If the stepper is not normalised and ``dataset`` has no ``statistics()``, or
            if :meth:`set_normalization` rejects the statistics it returns.
        """
        if bool(self.normalized):
            return
        statistics = getattr(dataset, "statistics", None)
        if statistics is None:
            raise ValueError(
                f"{type(self).__name__} is not normalised and the dataset "
                f"({type(dataset).__name__}) has no statistics(); call set_normalization()"
            )
        self.set_normalization(statistics())


class TransitionStepper(NormalizedStepper):
    """A stepper that learns ``x_{k+1} | window`` in standardised coordinates.

    The shared normalisation of every transition method (Stochastic Lifting and the
    baselines it is compared with): per channel state mean/std, per channel increment std
    and parameter mean/std, in buffers filled from ``dataset.statistics()``. A subclass
    predicts a standardised quantity ``g`` of shape ``(B, C, *grid)``:

    * ``residual=True``: the increment, ``x_{k+1} = x_k + delta_std * g``;
    * ``residual=False``: the state, ``x_{k+1} = state_mean + state_std * g``.

    Parameters
    ----------
    state_shape : tuple of int or None
        Shape of one state without the batch axis, ``(C, *grid)`` or ``(d,)``; grid
        entries may be ``None`` (any resolution).
    history : int
        Number of past states stacked on the channel axis as input (1 = Markov).
    n_params : int
        Number of physics parameters ``mu`` (0 = none).
    residual : bool
        Predict the standardised increment (default) instead of the standardised state.
    dt : float
        Physical length of one step (``nan`` when unknown).

    Raises
    ------
    ValueError
        As :class:`slift_plugin.Stepper` does, for an invalid ``state_shape``,
        ``history`` or ``n_params``.
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

    def state_statistics_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per channel state mean and std, and the per channel std of the increments.

        Returns
        -------
        dict of str to tuple of int
            ``state_mean``, ``state_std`` and ``delta_std``, each ``(C,)``.
        """
        c = self.n_channels
        return {"state_mean": (c,), "state_std": (c,), "delta_std": (c,)}

    def _per_channel(self, v: Tensor, repeats: int, ndim: int) -> Tensor:
        return v.repeat(repeats).reshape(1, -1, *([1] * (ndim - 2)))

    def standardized_inputs(
        self, window: Tensor, mu: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Validate and standardise ``(window (B, history*C, *grid), mu (B, n_params))``.

        Parameters
        ----------
        window : Tensor
            The last ``history`` states stacked on channels, ``(B, history*C, *grid)``.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``; None without parameters.

        Returns
        -------
        tuple of (Tensor, Tensor or None)
            The window standardised per channel with ``state_mean``/``state_std``,
            ``(B, history*C, *grid)``, and the standardised ``mu`` ``(B, n_params)``
            (``None`` when ``n_params == 0``).

        Raises
        ------
        TypeError
            If ``window`` is not a tensor.
        ValueError
            If ``window`` does not fit the stepper or is an empty batch, or if ``mu`` is
            missing, unexpected or misshapen.
        """
        self.check_window(window)
        cond = self.standardized_mu(mu, window.shape[0])
        mean = self._per_channel(self.state_mean, self.history, window.ndim)
        std = self._per_channel(self.state_std, self.history, window.ndim)
        return (window - mean) / std, cond

    def _last_state(self, window: Tensor) -> Tensor:
        return window[:, (self.history - 1) * self.n_channels :]

    def standardized_target(self, window: Tensor, y: Tensor) -> Tensor:
        """The standardised quantity ``g`` that maps ``window`` to the next state ``y``.

        Parameters
        ----------
        window : Tensor
            The last ``history`` states stacked on channels, ``(B, history*C, *grid)``.
        y : Tensor
            The observed next states ``(B, C, *grid)``.

        Returns
        -------
        Tensor
            ``g`` ``(B, C, *grid)``: ``(y - x_k) / delta_std`` with ``x_k`` the last state
            of ``window`` when ``residual``, else ``(y - state_mean) / state_std``.

        Raises
        ------
        ValueError
            If ``y`` is not of shape ``(B, C, *grid)`` for ``window``'s batch and grid.
        """
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
        """The next state ``(B, C, *grid)`` from the standardised prediction ``g``.

        The inverse of :meth:`standardized_target`.

        Parameters
        ----------
        window : Tensor
            The last ``history`` states stacked on channels, ``(B, history*C, *grid)``.
        g : Tensor
            The standardised prediction ``(B, C, *grid)``.

        Returns
        -------
        Tensor
            ``x_k + delta_std * g`` with ``x_k`` the last state of ``window`` when
            ``residual``, else ``state_mean + state_std * g``; ``(B, C, *grid)``.
        """
        if self.residual:
            return self._last_state(window) + self._per_channel(self.delta_std, 1, g.ndim) * g
        return (
            self._per_channel(self.state_mean, 1, g.ndim)
            + self._per_channel(self.state_std, 1, g.ndim) * g
        )


class FreshNoiseTraining:
    """Mixin for steppers whose loss draws fresh noise at every training step.

    ``training_step`` is a buffer: it travels with ``state_dict`` and checkpoints, so a
    resumed :func:`slift_plugin.fit` draws exactly the noise an uninterrupted run would,
    and no draw touches the global RNG. Call :meth:`init_fresh_noise` after
    ``nn.Module.__init__``.

    The noise of example ``i`` at step ``n`` is a pure function of ``(seed, n, i)``, with
    ``i`` the global example index that a transition batch carries (``batch["index"]``):
    counter-based, like the fixed labels of Stochastic Lifting, so it does not depend on
    how a batch is ordered or split over processes, and a data-parallel run draws exactly
    the noise of one process.
    """

    seed: int
    training_step: Tensor
    training: bool

    def init_fresh_noise(self, seed: int) -> None:
        """Set the noise seed and register the ``training_step`` counter buffer.

        Parameters
        ----------
        seed : int
            Seeds every training draw, together with the step counter and the example
            index.
        """
        self.seed = int(seed)
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long))

    def training_noise(self, batch: Mapping[str, Tensor], *shapes: tuple[int, ...]) -> list[Tensor]:
        """Standard normals ``(B, *shape)`` for each of ``shapes``, keyed by example index.

        Row ``b`` of the ``j``-th tensor is a function of ``(seed, training_step, j,
        batch["index"][b])`` only; the tensors take the device and dtype of ``batch["x"]``.
        In training mode the step counter then advances; in eval mode it stays, so an
        evaluation loss is repeatable and does not shift the noise of later steps.

        Parameters
        ----------
        batch : Mapping[str, Tensor]
            A transition batch: ``x`` ``(B, ...)`` and ``index``, the global example
            indices ``(B,)`` (integers).
        *shapes : tuple of int
            Per-example shape of each tensor to draw.

        Returns
        -------
        list of Tensor
            One standard normal tensor ``(B, *shape)`` per entry of ``shapes``, in order.

        Raises
        ------
        ValueError
            If the batch has no ``index`` entry, or ``index`` is not one integer per
            example (shape ``(B,)``).
        """
        x = batch["x"]
        index = batch.get("index")
        if index is None:
            raise ValueError(
                f"{type(self).__name__} draws its training noise per example from the global "
                "example index, but the batch has no 'index' entry; train on "
                "slift_plugin.TransitionDataset, or wrap a dataset of dict items in "
                "slift_plugin.WithFixedLabels, whose batches carry it"
            )
        if index.shape != (x.shape[0],) or index.is_floating_point():
            raise ValueError(
                f"batch['index'] must hold one integer per example, shape ({x.shape[0]},), "
                f"got {index.dtype} of shape {tuple(index.shape)}"
            )
        step = int(self.training_step)
        noise = [
            IndexedGaussianLabels(shape, hash_seed(self.seed, step, j))(index).to(
                x.device, x.dtype, non_blocking=True
            )
            for j, shape in enumerate(shapes)
        ]
        if self.training:
            self.training_step += 1
        return noise
