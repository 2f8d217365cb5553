"""Selection on held-out data: which epoch's weights :func:`slift_plugin.fit` keeps.

The law a one-step stepper learns depends strongly on how long it trains (Stochastic
Lifting in particular moves from a smooth Gaussian-like law towards memorising the
training pairs), and the training loss does not show it. After every epoch, ``fit`` can
score fresh-noise samples against held-out next states with the fair energy score, a
strictly proper scoring rule of the transition law, keep the best epoch's weights and
stop early.

The score works for every stepper whose ``step`` maps a window and standard normal noise
to a next state, with no knowledge of the method: ``n_members`` samples per held-out
transition, the same seeded noise in every epoch (so that the curve compares models, not
noise draws).

A population method (DICE) learns marginals, not transitions, and its loss does not rank
its rollouts (BENCHMARKS.md, issue 12): :class:`HeldOutPopulations` rolls the stepper out
from held-out initial populations and scores the populations it reaches against the
held-out ones with the energy distance. Both criteria fulfil :class:`Selection`, which is
all ``fit`` asks of one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .data.snapshots import SnapshotDataset
from .methods.energy_score import energy_score
from .metrics import energy_distance, same_law_energy_distance
from .protocols import IndexedBatches
from .stepper import Stepper

__all__ = ["HeldOut", "HeldOutPopulations", "Selection", "held_out_score"]


@runtime_checkable
class Selection(Protocol):
    """What :func:`slift_plugin.fit` needs of a held-out criterion.

    ``data`` is fingerprinted for the resume check, ``facts()`` too, ``patience`` stops the
    run (None: never), and ``score(stepper, device)`` is called after every epoch; lower
    is better and the best epoch's weights are kept.
    """

    data: object
    patience: int | None

    def facts(self) -> dict[str, object]:
        """What shapes the selection, for the checkpoint's resume check.

        Returns
        -------
        dict of str to object
            Plain values; a resume with other values is refused.
        """
        ...

    def score(self, stepper: Stepper, device: torch.device) -> float:
        """The stepper's held-out score after an epoch; lower is better.

        Parameters
        ----------
        stepper : Stepper
            The stepper being trained, to be handed back in its own mode.
        device : torch.device
            Where the stepper lives.

        Returns
        -------
        float
            The score; ``inf`` or NaN when the samples blew up.
        """
        ...


def _check_patience(patience: int | None) -> None:
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience}")


@dataclass(frozen=True)
class HeldOut:
    """Held-out transitions for :func:`slift_plugin.fit` to select an epoch on.

    Parameters
    ----------
    data : IndexedBatches
        Transitions the stepper does not train on, e.g. a
        :class:`slift_plugin.TransitionDataset` of held-out trajectories; batches carry
        ``x``, ``y`` and, with parameters, ``mu``.
    n_members : int
        Samples per transition in the fair energy score (>= 2).
    max_examples : int
        Score at most this many transitions (the first ones), to bound the cost.
    patience : int or None
        Stop when this many epochs pass without a better score; None trains all epochs.
    seed : int
        Seeds the sampling noise, the same in every epoch.

    Raises
    ------
    TypeError
        ``data`` has no ``get_batch``.
    ValueError
        ``data`` is empty, ``n_members < 2``, ``max_examples < 1`` or ``patience < 1``.
    """

    data: IndexedBatches
    n_members: int = 8
    max_examples: int = 1024
    patience: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.data, IndexedBatches):
            raise TypeError(
                f"held-out data {type(self.data).__name__} is not a "
                "slift_plugin.protocols.IndexedBatches (get_batch(indices)); use a "
                "slift_plugin.TransitionDataset"
            )
        if len(self.data) == 0:
            raise ValueError("the held-out data is empty")
        if self.n_members < 2 or self.max_examples < 1:
            raise ValueError(
                f"n_members must be >= 2 and max_examples >= 1, got {self.n_members}, "
                f"{self.max_examples}"
            )
        _check_patience(self.patience)

    def score(self, stepper: Stepper, device: torch.device) -> float:
        """:func:`held_out_score` of ``stepper`` on these transitions.

        Parameters
        ----------
        stepper : Stepper
            Any stepper; handed back in its own mode.
        device : torch.device
            Where the stepper lives.

        Returns
        -------
        float
            The mean fair energy score; lower is better.
        """
        return held_out_score(stepper, self, device)

    def facts(self) -> dict[str, object]:
        """What shapes the selection, for the checkpoint's resume check.

        Returns
        -------
        dict of str to object
            Sizes and settings; a resume with other values is refused.
        """
        return {
            "n_held_out": len(self.data),
            "n_members": self.n_members,
            "max_examples": self.max_examples,
            "patience": self.patience,
            "held_out_seed": self.seed,
        }


def held_out_score(stepper: Stepper, held_out: HeldOut, device: torch.device) -> float:
    """Mean fair energy score of fresh-noise samples against the held-out next states.

    Norms run over the whole state of one example, in the data's own units. The stepper
    is evaluated in eval mode without gradients and handed back in its own mode.

    Parameters
    ----------
    stepper : Stepper
        Any stepper; one ``step`` call on ``n_members`` copies of every window.
    held_out : HeldOut
        The transitions and settings.
    device : torch.device
        Where the stepper lives.

    Returns
    -------
    float
        Lower is better; its expectation is minimised by the true transition law.

    Raises
    ------
    ValueError
        A batch does not fit the stepper.
    """
    n = min(len(held_out.data), held_out.max_examples)
    batch = held_out.data.get_batch(torch.arange(n))
    _, dtype = stepper.param_device_dtype()
    window, y = batch["x"].to(device, dtype), batch["y"].to(device, dtype)
    mu = batch.get("mu")
    m = held_out.n_members
    members_mu = None if mu is None else mu.to(device, dtype).repeat_interleave(m, dim=0)
    noise = _noise(stepper, window, m, held_out.seed)
    was_training = stepper.training
    stepper.eval()
    try:
        with torch.no_grad():
            samples = stepper.step(window.repeat_interleave(m, dim=0), noise, mu=members_mu)
    finally:
        stepper.train(was_training)
    ensemble = samples.reshape(n, m, -1)  # rows b*m .. b*m + m - 1 are example b's members
    return float(energy_score(y.reshape(n, -1), ensemble).mean())


def _noise(stepper: Stepper, window: Tensor, n_members: int, seed: int) -> Tensor | None:
    """Standard normals ``(B * n_members, *noise_shape)`` from ``seed`` (CPU generator)."""
    shape = stepper.noise_shape(tuple(window.shape[2:]))
    if shape is None:
        return None
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((window.shape[0] * n_members, *shape), generator=g)
    return noise.to(window.device, window.dtype)


@dataclass(frozen=True)
class HeldOutPopulations:
    """Held-out populations for :func:`slift_plugin.fit` to select on by rollout accuracy.

    After every epoch the stepper is rolled out, in physical time from each group's first
    time, from (up to) ``n_samples`` particles of its first population, with the group's
    parameters and seeded noise (the same in every epoch). At each scored time the
    populations reached are compared with the held-out populations by the energy distance
    (on the circle for periodic coordinates), divided by the distance a perfect model
    would have in expectation (:func:`slift_plugin.metrics.same_law_energy_distance`);
    the score is the mean of these ratios over groups and scored times. 1 is the noise
    floor; lower is better.

    Parameters
    ----------
    data : SnapshotDataset
        Populations the stepper does not train on (e.g. fresh runs at the training
        parameters). Every snapshot time must lie a whole number of ``stepper.dt`` after
        its group's first time.
    n_samples : int
        Particles rolled out per group (>= 2): a random subset (seeded by ``seed``) of
        the first population, since ordered samples (a quiet start) are not a random one.
    times : sequence of int or None
        Indices of the scored snapshot times within each group (>= 1); None scores every
        time after the first. Fewer or earlier times make selection cheaper.
    period : float or sequence of (float or None) or None
        Periodic coordinates, as for :func:`slift_plugin.energy_distance`.
    patience : int or None
        Stop when this many epochs pass without a better score; None trains all epochs.
    seed : int
        Seeds the sampling noise (group ``g`` draws from ``seed + 1 + g``).

    Raises
    ------
    TypeError
        ``data`` is not a :class:`slift_plugin.SnapshotDataset`.
    ValueError
        ``n_samples < 2``, ``patience < 1``, a scored index outside ``[1, K]`` of some
        group, or a scored population of fewer than two particles.

    Notes
    -----
    The rollout starts from a population, so the stepper must have ``history == 1``;
    :meth:`score` refuses others, and times that are not on the stepper's ``dt`` grid.
    """

    data: SnapshotDataset
    n_samples: int = 1024
    times: Sequence[int] | None = None
    period: float | Sequence[float | None] | None = None
    patience: int | None = None
    seed: int = 0
    _floors: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, SnapshotDataset):
            raise TypeError(
                f"held-out populations must be a slift_plugin.SnapshotDataset, got "
                f"{type(self.data).__name__}"
            )
        if self.n_samples < 2:
            raise ValueError(f"n_samples must be >= 2, got {self.n_samples}")
        _check_patience(self.patience)
        for g, (times, populations, _) in enumerate(self.data.groups):
            bad = [k for k in self._scored(times) if not 1 <= k < times.numel()]
            if bad:
                raise ValueError(
                    f"scored time indices {bad} are outside [1, {times.numel() - 1}] in group {g}"
                )
            small = [k for k in self._scored(times) if populations[k].shape[0] < 2]
            if small:
                raise ValueError(f"group {g} has fewer than two particles at time indices {small}")
        object.__setattr__(self, "_floors", self._perfect_distances())

    def _scored(self, times: Tensor) -> list[int]:
        indices = range(1, times.numel()) if self.times is None else self.times
        return sorted({int(k) for k in indices})

    def _perfect_distances(self) -> tuple[tuple[float, ...], ...]:
        """Per group and scored time: the expected distance of a perfect model."""
        return tuple(
            tuple(
                same_law_energy_distance(
                    populations[k], min(self.n_samples, populations[0].shape[0]), period=self.period
                )
                for k in self._scored(times)
            )
            for times, populations, _ in self.data.groups
        )

    def facts(self) -> dict[str, object]:
        """What shapes the selection, for the checkpoint's resume check.

        Returns
        -------
        dict of str to object
            Sizes and settings; a resume with other values is refused.
        """
        return {
            "held_out_groups": len(self.data.groups),
            "n_samples": self.n_samples,
            "scored_times": None if self.times is None else [int(k) for k in self.times],
            "period": self.period if self.period is None else str(self.period),
            "patience": self.patience,
            "held_out_seed": self.seed,
        }

    def score(self, stepper: Stepper, device: torch.device) -> float:
        """Mean ED ratio of the rollouts against the held-out populations (1: the floor).

        The stepper is evaluated in eval mode and handed back in its own mode.

        Parameters
        ----------
        stepper : Stepper
            A stepper with ``history == 1`` and a finite ``dt``.
        device : torch.device
            Where the stepper lives.

        Returns
        -------
        float
            The mean ratio; infinite or NaN when a rollout blew up.

        Raises
        ------
        ValueError
            The stepper's history is not 1, its ``dt`` is not finite, or a scored time is
            not a whole number of ``dt`` after its group's first time.
        """
        if stepper.history != 1:
            raise ValueError(
                f"a rollout from a population needs history == 1, the stepper has {stepper.history}"
            )
        was_training = stepper.training
        stepper.eval()
        try:
            ratios = [
                distance / floor
                for g, group in enumerate(self.data.groups)
                for distance, floor in zip(
                    self._group_distances(stepper, device, g, group), self._floors[g], strict=True
                )
            ]
        finally:
            stepper.train(was_training)
        return sum(ratios) / len(ratios)

    def _group_distances(
        self,
        stepper: Stepper,
        device: torch.device,
        g: int,
        group: tuple[Tensor, list[Tensor], Tensor | None],
    ) -> list[float]:
        """Energy distances at the scored times of one group's rollout.

        A plain step loop, not :func:`slift_plugin.rollout`: under torchrun ``rollout``
        shards the samples over the ranks, while ``fit`` scores on every rank and needs
        the same whole population on each.
        """
        times, populations, mu = group
        scored = self._scored(times)
        index_at_step = dict(zip(_steps_to(times, scored, stepper.dt), scored, strict=True))
        _, dtype = stepper.param_device_dtype()
        rows = torch.Generator().manual_seed(int(self.seed))
        first = populations[0]
        chosen = torch.randperm(first.shape[0], generator=rows)[: self.n_samples]
        x = first[chosen].to(device, dtype)
        batch_mu = None if mu is None else mu.to(device, dtype).expand(x.shape[0], -1)
        noise_shape = stepper.noise_shape(tuple(x.shape[2:]))
        generator = torch.Generator().manual_seed(int(self.seed) + 1 + g)
        distances, t0 = [], float(times[0])
        with torch.no_grad():
            for i in range(max(index_at_step)):
                noise = None
                if noise_shape is not None:
                    noise = torch.randn((x.shape[0], *noise_shape), generator=generator)
                    noise = noise.to(device, dtype)
                x = stepper.step(x, noise, mu=batch_mu, t=t0 + i * stepper.dt)
                if not torch.isfinite(x).all():  # a blown-up rollout loses to every other
                    return [math.inf] * len(scored)
                if i + 1 in index_at_step:
                    reference = populations[index_at_step[i + 1]].to(device, dtype)
                    distance = float(energy_distance(x, reference, period=self.period))
                    distances.append(max(distance, 0.0))  # below 0 only by round-off
        return distances


def _steps_to(times: Tensor, scored: list[int], dt: float) -> list[int]:
    """Whole numbers of ``dt`` from ``times[0]`` to each scored time."""
    if not math.isfinite(dt):
        raise ValueError("a rollout needs the stepper's dt; set stepper.dt")
    steps = []
    for k in scored:
        elapsed = (float(times[k]) - float(times[0])) / dt
        if abs(elapsed - round(elapsed)) > 1e-6 * max(1.0, elapsed) or round(elapsed) < 1:
            raise ValueError(
                f"snapshot time {float(times[k])} is not a whole number (>= 1) of dt = {dt} "
                f"after the first time {float(times[0])}"
            )
        steps.append(round(elapsed))
    return steps
