"""Transition datasets ``(window_k, x_{k+1})`` with fixed labels, and their statistics."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
import xarray as xr
from torch import Tensor
from torch.utils.data import Dataset

from .ensemble import ensemble_to_tensor, uniform_step

__all__ = ["TransitionDataset", "WithFixedLabels", "transition_statistics"]


def _check_finite(t: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``t`` (any shape) holds NaN or Inf."""
    bad = ~torch.isfinite(t)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/Inf values (shape {tuple(t.shape)})"
        )


class TransitionDataset(Dataset):
    """Transitions ``(window_k, x_{k+1})`` of a trajectory ensemble, with fixed labels.

    Parameters
    ----------
    states : torch.Tensor
        ``(n_trajectories, n_times, C, *grid)``, floating point; stored as float32.
    history : int
        Number of states in the input window (stacked on channels, oldest first).
    mu : torch.Tensor, optional
        Physics parameters ``(n_trajectories, n_params)``.
    labels : callable, optional
        Label source ``labels(indices) -> (n, *label_shape)``, usually
        ``stepper.fixed_labels(seed, grid)``. Transition ``j`` always gets label ``j``.
    dt : float
        Physical step between consecutive states.

    Raises
    ------
    ValueError
        ``states`` has fewer than 3 dims, no trajectory, fewer than ``history + 1`` times
        or NaN/Inf; ``history < 1``; ``mu`` is not ``(n_trajectories, n_params)`` or holds
        NaN/Inf.
    TypeError
        ``states`` is not floating point.

    Notes
    -----
    Items are dicts ``{"x": (history*C, *grid), "y": (C, *grid), "index": (),
    "label": (*label_shape), "mu": (n_params,)}`` (the last two when present): the dict
    batches that neuraloperator's ``Trainer`` expects. Transition ``j`` is step
    ``j % per_trajectory`` of trajectory ``j // per_trajectory``.
    """

    def __init__(
        self,
        states: Tensor,
        *,
        history: int = 1,
        mu: Tensor | None = None,
        labels: Callable[[Tensor], Tensor] | None = None,
        dt: float = math.nan,
    ) -> None:
        states = torch.as_tensor(states)
        if states.ndim < 3:
            raise ValueError(
                "states must have shape (n_trajectories, n_times, C, *grid), "
                f"got {tuple(states.shape)}"
            )
        if states.shape[0] == 0:
            raise ValueError("states is empty: no trajectories (shape[0] == 0)")
        if int(history) < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if states.shape[1] < history + 1:
            raise ValueError(
                f"each trajectory needs at least history + 1 = {history + 1} times to form a "
                f"transition, got {states.shape[1]}"
            )
        if not states.is_floating_point():
            raise TypeError(f"states must be floating point, got {states.dtype}")
        states = states.to(torch.float32)
        _check_finite(states, "states")
        if mu is not None:
            mu = torch.as_tensor(mu, dtype=torch.float32)
            if mu.ndim != 2 or mu.shape[0] != states.shape[0]:
                raise ValueError(
                    f"mu must have shape ({states.shape[0]}, n_params), got {tuple(mu.shape)}"
                )
            _check_finite(mu, "mu")
        self.states = states
        self.mu = mu
        self.history = int(history)
        self.labels = labels
        self.dt = float(dt)
        self.per_trajectory = states.shape[1] - self.history
        if hasattr(labels, "__len__") and len(labels) != len(self):
            # a label table made for other transitions would pair labels and data wrongly
            raise ValueError(
                f"the label table holds {len(labels)} labels but the data has {len(self)} "
                "transitions; compute the labels on this very dataset"
            )

    @classmethod
    def from_xarray(
        cls,
        ensemble: xr.DataArray,
        *,
        history: int = 1,
        labels: Callable[[Tensor], Tensor] | None = None,
    ) -> TransitionDataset:
        """Transitions of an ensemble DataArray.

        Parameters
        ----------
        ensemble : xarray.DataArray
            Dims ``("sample", "time", "channel", *grid)``; its ``mu_<name>`` coords become
            ``mu`` and the step of its ``time`` coord (NaN without one) becomes ``dt``.
        history : int
            Number of states in the input window.
        labels : callable, optional
            Label source, as for the constructor.

        Returns
        -------
        TransitionDataset

        Raises
        ------
        TypeError, ValueError
            ``ensemble`` breaks the layout, or its time coord is not uniformly spaced.
        """
        states, mu = ensemble_to_tensor(ensemble, "ensemble")
        dt = (
            uniform_step(ensemble["time"].values, "ensemble time")
            if "time" in ensemble.coords
            else math.nan
        )
        return cls(states, history=history, mu=mu, labels=labels, dt=dt)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """``(C, *grid)``."""
        return tuple(self.states.shape[2:])

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """``grid``: the state shape without channels."""
        return tuple(self.states.shape[3:])

    @property
    def n_params(self) -> int:
        """Number of physics parameters (0 without ``mu``)."""
        return 0 if self.mu is None else self.mu.shape[1]

    def __len__(self) -> int:
        return self.states.shape[0] * self.per_trajectory

    def get_batch(self, index: Tensor) -> dict[str, Tensor]:
        """Vectorised fetch of several transitions.

        Parameters
        ----------
        index : torch.Tensor
            Transition numbers in ``[0, len(self))``, any shape (flattened to ``(n,)``).

        Returns
        -------
        dict of str to torch.Tensor
            ``"x"`` ``(n, history*C, *grid)``, ``"y"`` ``(n, C, *grid)``, ``"index"``
            ``(n,)`` and, when present, ``"label"`` ``(n, *label_shape)`` and ``"mu"``
            ``(n, n_params)``.

        Raises
        ------
        IndexError
            An index is out of range.
        """
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if index.numel() and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"transition index out of range [0, {len(self)})")
        traj = index // self.per_trajectory
        k = index % self.per_trajectory + self.history - 1
        offsets = torch.arange(-self.history + 1, 1)
        window = self.states[traj[:, None], k[:, None] + offsets]  # (n, h, C, *grid)
        batch = {
            "x": window.reshape(len(index), -1, *self.grid_shape),
            "y": self.states[traj, k + 1],
            "index": index,
        }
        if self.labels is not None:
            batch["label"] = self.labels(index)
        if self.mu is not None:
            batch["mu"] = self.mu[traj]
        return batch

    def __getitem__(self, j: int) -> dict[str, Tensor]:
        if not -len(self) <= j < len(self):
            raise IndexError(f"transition {j} out of range for {len(self)} transitions")
        return {k: v[0] for k, v in self.get_batch(torch.tensor([j % len(self)])).items()}

    def statistics(self) -> dict[str, Tensor]:
        """Normalisation statistics of all transitions.

        Returns
        -------
        dict of str to torch.Tensor
            See :func:`transition_statistics`.
        """
        index = torch.arange(len(self))
        return transition_statistics(self.get_batch(i) for i in index.split(4096))


class WithFixedLabels(Dataset):
    """Attach fixed labels to any map-style dataset of dict samples.

    For a neuraloperator user: wrap the dataset that feeds ``Trainer`` (items
    ``{"x": ..., "y": ...}``); each item gains ``"label"`` = ``labels([i])[0]`` and
    ``"index"`` = ``i``. The label of item ``i`` is the same in every epoch. With
    ``labels=None`` items gain only ``"index"``: what :class:`slift_plugin.FlowMatching`
    and :class:`slift_plugin.EnergyScoreLifting` key their fresh training noise by.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Non-empty map-style dataset whose items are dicts with ``"x"`` and ``"y"``.
    labels : callable, optional
        Label source ``labels(indices) -> (n, *label_shape)``.

    Raises
    ------
    ValueError
        ``dataset`` is empty.
    """

    def __init__(self, dataset: Dataset, labels: Callable[[Tensor], Tensor] | None = None) -> None:
        if len(dataset) == 0:
            raise ValueError("cannot attach labels to an empty dataset")
        self.dataset = dataset
        self.labels = labels
        self._statistics: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = dict(self.dataset[i])
        if not {"x", "y"} <= item.keys():
            raise KeyError(f"items must be dicts with 'x' and 'y', got keys {sorted(item)}")
        i = i % len(self)
        if self.labels is not None:
            item["label"] = self.labels(torch.tensor([i]))[0]
        item["index"] = torch.tensor(i)
        return item

    def statistics(self) -> dict[str, Tensor]:
        """Per-channel statistics from one pass over the data (cached).

        Returns
        -------
        dict of str to torch.Tensor
            See :func:`transition_statistics`.
        """
        if self._statistics is None:
            items = (self.dataset[i] for i in range(len(self.dataset)))
            self._statistics = transition_statistics(
                {k: v.unsqueeze(0) for k, v in item.items() if isinstance(v, Tensor)}
                for item in items
            )
        return self._statistics


class _Moments:
    """Streaming per-channel mean and std (float64 sums)."""

    def __init__(self) -> None:
        self.count = self.total = self.squares = 0

    def add(self, v: Tensor) -> None:
        """Accumulate ``v`` of shape ``(n, channels, ...)``."""
        flat = v.double().transpose(0, 1).reshape(v.shape[1], -1)
        self.count += flat.shape[1]
        self.total = self.total + flat.sum(1)
        self.squares = self.squares + (flat**2).sum(1)

    def mean_std(self) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` per channel, float32 ``(channels,)``; std with Bessel's correction."""
        mean = self.total / self.count
        var = (self.squares / self.count - mean**2).clamp_min(0.0)
        n = self.count
        return mean.float(), (var * n / max(n - 1, 1)).sqrt().float()


def transition_statistics(batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Normalisation statistics from dict batches of transitions.

    State mean/std are taken over the next states ``y``, the increment std over
    ``y - last state of x`` (the quantity the residual form predicts), and parameter
    mean/std over the per-example ``mu``.

    Parameters
    ----------
    batches : iterable of mapping of str to torch.Tensor
        ``{"x": (n, history*C, ...), "y": (n, C, ...), "mu": (n, n_params)}``, ``"mu"``
        optional.

    Returns
    -------
    dict of str to torch.Tensor
        ``"state_mean"``, ``"state_std"`` (at least 1e-6) and ``"delta_std"``, each
        ``(C,)``; with ``mu`` also ``"param_mean"`` and ``"param_std"`` ``(n_params,)``
        (1 where a parameter does not vary).

    Raises
    ------
    ValueError
        No batch, NaN/Inf, or ``x`` channels not a multiple of ``y`` channels.
    """
    state, delta, params = _Moments(), _Moments(), _Moments()
    for batch in batches:
        x, y = batch["x"], batch["y"]
        if x.shape[1] % y.shape[1]:
            raise ValueError(
                f"x has {x.shape[1]} channels, not a multiple of y's {y.shape[1]} (history)"
            )
        _check_finite(x, "x")
        _check_finite(y, "y")
        state.add(y)
        delta.add(y - x[:, x.shape[1] - y.shape[1] :])
        if "mu" in batch:
            _check_finite(batch["mu"], "mu")
            params.add(batch["mu"])
    if not state.count:
        raise ValueError("cannot compute statistics of an empty dataset")
    mean, std = state.mean_std()
    _, dstd = delta.mean_std()
    stats = {
        "state_mean": mean,
        "state_std": std.clamp_min(1e-6),
        # A channel that never changes would divide by zero; fall back to its scale.
        "delta_std": torch.maximum(dstd, 1e-6 * std.clamp_min(1.0)),
    }
    if params.count:
        pmean, pstd = params.mean_std()
        # A single parameter value has no spread; leave it unscaled.
        stats["param_mean"] = pmean
        stats["param_std"] = torch.where(pstd > 1e-8, pstd, torch.ones_like(pstd))
    return stats
