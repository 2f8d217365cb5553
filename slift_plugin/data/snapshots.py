"""Snapshot datasets for DICE: unpaired populations per time, grouped by parameter value."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from ..distributed import shard_bounds
from ..labels import hash_seed
from .ensemble import ensemble_params, ensemble_to_tensor
from .transitions import _check_finite, _Moments

__all__ = ["SnapshotDataset"]

_Group = tuple[Tensor, list[Tensor], Tensor | None]


def _channel_mean_std(population: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (Bessel) of ``(n, C, *grid)`` over samples and grid, float64."""
    flat = population.double().transpose(0, 1).reshape(population.shape[1], -1)
    return flat.mean(1), flat.std(1) if flat.shape[1] > 1 else torch.zeros_like(flat[:, 0])


def _check_group(
    g: int,
    times: Tensor,
    populations: Sequence[Tensor],
    mu: Tensor | None,
    state_shape: tuple[int, ...] | None,
    dtype: torch.dtype = torch.float32,
) -> tuple[_Group, tuple[int, ...]]:
    """Validate and convert one group of :class:`SnapshotDataset`.

    Parameters
    ----------
    g : int
        Position of the group, for error messages.
    times : torch.Tensor
        ``(K+1,)`` strictly increasing times (any shape that flattens to it).
    populations : sequence of torch.Tensor
        ``K+1`` populations ``(n_k, *state)``.
    mu : torch.Tensor or None
        Parameters of the group (flattened to ``(n_params,)``).
    state_shape : tuple of int or None
        State shape of the groups checked so far (None before the first one).
    dtype : torch.dtype
        The floating dtype everything is stored in.

    Returns
    -------
    group : tuple
        ``(times (K+1,), populations, mu (n_params,) or None)``, all of ``dtype``.
    state_shape : tuple of int
        The state shape every population must share.

    Raises
    ------
    ValueError
        Fewer than two times, times not increasing, one population per time missing, an
        empty population, a state shape that differs, or NaN/Inf.
    """
    times = torch.as_tensor(times, dtype=dtype).reshape(-1)
    if times.numel() < 2:
        raise ValueError(
            f"group {g}: DICE needs populations at two or more times, got {times.numel()}"
        )
    if not (times[1:] > times[:-1]).all():
        raise ValueError(f"group {g}: times must be strictly increasing, got {times.tolist()}")
    if len(populations) != times.numel():
        raise ValueError(f"group {g}: {len(populations)} populations for {times.numel()} times")
    pops = []
    for k, pop in enumerate(populations):
        pop = torch.as_tensor(pop, dtype=dtype)
        if pop.ndim < 2 or pop.shape[0] == 0:
            raise ValueError(
                f"group {g}, time {k}: population must be (n_samples >= 1, *state), "
                f"got {tuple(pop.shape)}"
            )
        if state_shape is None:
            state_shape = tuple(pop.shape[1:])
        elif tuple(pop.shape[1:]) != state_shape:
            raise ValueError(
                f"group {g}, time {k}: state shape {tuple(pop.shape[1:])} does not match "
                f"{state_shape}"
            )
        _check_finite(pop, f"group {g}, time {k} population")
        pops.append(pop)
    if mu is not None:
        mu = torch.as_tensor(mu, dtype=dtype).reshape(-1)
        _check_finite(mu, f"group {g} mu")
    return (times, pops, mu), state_shape


def _populations(
    data: xr.DataArray | Sequence[xr.DataArray], dtype: torch.dtype = torch.float32
) -> tuple[Tensor, list[Tensor], list[Tensor | None]]:
    """Split xarray snapshots into one population per time.

    Parameters
    ----------
    data : xarray.DataArray or sequence of xarray.DataArray
        A trajectory ensemble ``(sample, time, channel, *grid)``, or one population
        ``(sample, channel, *grid)`` per time, each with a scalar ``time`` coord.
    dtype : torch.dtype
        The floating dtype of the times and populations (read from the values directly,
        so float64 keeps every digit of float64 data).

    Returns
    -------
    times : torch.Tensor
        ``(n_times,)`` of ``dtype``.
    per_time : list of torch.Tensor
        ``n_times`` populations ``(n_k, channel, *grid)`` of ``dtype``.
    per_time_mu : list of torch.Tensor or None
        The ``(n_k, n_params)`` parameters of each population, or None.

    Raises
    ------
    TypeError, ValueError
        The ensemble breaks the layout, the list is empty, or a population is not a
        DataArray with dims ``("sample", "channel", *grid)`` and a scalar ``time`` coord.
    """
    if isinstance(data, xr.DataArray):
        states, mu = ensemble_to_tensor(data, "snapshots")  # checks the layout
        if dtype != states.dtype:  # from the values, not from float32
            states = torch.as_tensor(np.asarray(data.values), dtype=dtype)
        times = torch.tensor(np.asarray(data["time"].values, dtype=np.float64), dtype=dtype)
        per_time = [states[:, k] for k in range(states.shape[1])]
        return times, per_time, [mu] * len(per_time)
    if not data:
        raise ValueError("no populations given")
    per_time, per_time_mu, t = [], [], []
    for k, pop in enumerate(data):
        if not isinstance(pop, xr.DataArray) or pop.dims[:2] != ("sample", "channel"):
            raise ValueError(
                f"population {k} must be a DataArray with dims ('sample', 'channel', "
                f"*grid), got {getattr(pop, 'dims', type(pop).__name__)}"
            )
        if "time" not in pop.coords or pop["time"].ndim != 0:
            raise ValueError(f"population {k} needs a scalar 'time' coord")
        per_time.append(torch.as_tensor(np.asarray(pop.values), dtype=dtype))
        per_time_mu.append(ensemble_params(pop, f"population {k}"))
        t.append(float(pop["time"]))
    return torch.tensor(t, dtype=dtype), per_time, per_time_mu


def _split_by_value(mu: Tensor) -> list[tuple[tuple, Tensor]]:
    """The rows of each parameter value of one population, in order of first appearance.

    Parameters
    ----------
    mu : torch.Tensor
        ``(n, n_params)`` parameters of the population's samples.

    Returns
    -------
    list of tuple
        ``(key, mask)``: the value rounded to 6 decimals and the boolean mask ``(n,)`` of
        its rows. Distinct values that round alike share one key.
    """
    # Python rounding only on the distinct rows: per sample it cost ~14 us, minutes for
    # the authors' regime (tens of thousands of particles at hundreds of times).
    distinct, inverse = torch.unique(mu, dim=0, return_inverse=True)
    first = torch.full((len(distinct),), mu.shape[0], dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(mu.shape[0]), "amin")
    masks: dict[tuple, Tensor] = {}
    for u in first.argsort().tolist():
        key = tuple(round(float(v), 6) for v in distinct[u])
        mask = inverse == u
        masks[key] = masks[key] | mask if key in masks else mask
    return list(masks.items())


def _group_by_params(
    times: Tensor,
    per_time: list[Tensor],
    per_time_mu: list[Tensor | None],
    exclude_params: Sequence[Sequence[float]],
) -> list[_Group]:
    """Regroup per-time populations by parameter vector.

    Parameters
    ----------
    times : torch.Tensor
        ``(n_times,)``.
    per_time : list of torch.Tensor
        ``n_times`` populations ``(n_k, *state)``.
    per_time_mu : list of torch.Tensor or None
        Their ``(n_k, n_params)`` parameters, or None.
    exclude_params : sequence of sequence of float
        Parameter vectors to leave out.

    Returns
    -------
    list of tuple
        One ``(times, populations, mu (n_params,) or None)`` per parameter value, in order
        of first appearance; a group keeps only the times at which it has samples. Empty
        when every value is excluded.
    """
    # Compare after rounding to 6 decimals: the mu coords arrive as float32, while the
    # exclude_params a user types are float64 (0.7 != float32(0.7)).
    excluded = {tuple(round(float(v), 6) for v in p) for p in exclude_params}
    keys: dict[tuple, int] = {}
    buckets: list[list[list[Tensor]]] = []
    split_of: dict[int, list[tuple[tuple, Tensor]]] = {}  # an ensemble shares one mu
    for k, (pop, mu) in enumerate(zip(per_time, per_time_mu, strict=True)):
        if mu is None:
            split = [((), slice(None))]
        elif id(mu) in split_of:
            split = split_of[id(mu)]
        else:
            split = split_of[id(mu)] = _split_by_value(mu)
        for key, rows in split:
            if key in excluded:
                continue
            if key not in keys:
                keys[key] = len(buckets)
                buckets.append([[] for _ in per_time])
            buckets[keys[key]][k].append(pop[rows])
    groups = []
    for key, b in zip(keys, buckets, strict=True):
        present = [k for k in range(len(per_time)) if b[k]]
        groups.append(
            (
                times[present],
                [torch.cat(b[k]) for k in present],
                torch.tensor(key, dtype=torch.float64) if key else None,
            )
        )
    return groups


class SnapshotDataset:
    """Unpaired sample populations ``X_k`` at sorted times ``t_k``, per parameter value.

    Parameters
    ----------
    groups : sequence of tuple
        One entry per physics-parameter value: ``(times (K+1,), populations, mu)`` where
        ``populations[k]`` is ``(n_k, *state)`` (sizes may differ per time) and ``mu`` is
        ``(n_params,)`` or None. All groups share the state shape and the number of
        parameters.
    n_times : int, optional
        Times per training batch: a random sorted subset that keeps both endpoints
        (default: all times); at least 2 and at most the fewest times of a group.
    dtype : torch.dtype
        Floating dtype of the stored times, populations and parameters, and so of the
        batches (float64 for the authors' regime; the DICE loss casts a batch to the
        stepper's dtype either way).
    paired_batches : bool
        Draw one set of sample indices per batch and take it at every chosen time
        (default False: independent indices per time). Each time's minibatch is still a
        uniform draw from its population, so the expected DICE loss and its minimiser
        are unchanged; when row ``i`` of every population is one trajectory (the
        populations of a trajectory ensemble, as :meth:`from_xarray` keeps them), the
        boundary terms become differences along trajectories and their minibatch noise
        shrinks. Needs every population of a group to have the same size.

    Raises
    ------
    ValueError
        No group, an invalid group (see the messages), groups with different numbers of
        parameters, ``n_times`` out of range, a ``dtype`` that is not floating, or
        ``paired_batches`` with populations of different sizes in one group.

    Notes
    -----
    Batches of :meth:`iter_batches` are dicts ``{"x": (n_times, B, *state), "t":
    (n_times,), "mu": (n_params,), "probe_seed": ()}``: an independent minibatch of ``B``
    samples at each chosen time, all from one randomly chosen parameter value;
    ``probe_seed`` seeds the Hutchinson probes of the DICE loss. Because both endpoints
    are always chosen, the trapezoid weights the loss puts on the chosen times are a
    quadrature of the whole span ``[t_0, t_K]`` (they sum to ``t_K - t_0`` for every
    draw), whichever interior times were drawn. The authors' regime is ``n_times=256``
    and ``batch_size=256`` over thousands of times.
    """

    def __init__(
        self,
        groups: Sequence[tuple[Tensor, Sequence[Tensor], Tensor | None]],
        *,
        n_times: int | None = None,
        dtype: torch.dtype = torch.float32,
        paired_batches: bool = False,
    ) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if not groups:
            raise ValueError("SnapshotDataset needs at least one group of populations")
        checked = []
        state_shape = None
        for g, (times, populations, mu) in enumerate(groups):
            group, state_shape = _check_group(g, times, populations, mu, state_shape, dtype)
            checked.append(group)
        n_params = {0 if mu is None else mu.numel() for _, _, mu in checked}
        if len(n_params) != 1:
            raise ValueError(f"all groups must have the same number of parameters, got {n_params}")
        self.groups = checked
        self.state_shape = state_shape
        self.n_params = n_params.pop()
        min_times = min(t.numel() for t, _, _ in checked)
        if n_times is not None and not 2 <= n_times <= min_times:
            raise ValueError(f"n_times must be in [2, {min_times}], got {n_times}")
        self.n_times = n_times
        self.dtype = dtype
        if paired_batches:
            for g, (_, pops, _) in enumerate(checked):
                sizes = sorted({pop.shape[0] for pop in pops})
                if len(sizes) > 1:
                    raise ValueError(
                        f"paired_batches needs populations of one size per group; group {g} "
                        f"has sizes {sizes}"
                    )
        self.paired_batches = bool(paired_batches)

    @classmethod
    def from_xarray(
        cls,
        data: xr.DataArray | Sequence[xr.DataArray],
        *,
        n_times: int | None = None,
        exclude_params: Sequence[Sequence[float]] = (),
        dtype: torch.dtype = torch.float32,
        paired_batches: bool = False,
    ) -> SnapshotDataset:
        """Snapshots from xarray, grouped by the ``mu_<name>`` coords.

        Parameters
        ----------
        data : xarray.DataArray or sequence of xarray.DataArray
            Either a trajectory ensemble ``(sample, time, channel, *grid)`` whose pairing
            across times is ignored, or a list with one population per time, each
            ``(sample, channel, *grid)`` with a scalar ``time`` coord (sizes may differ).
        n_times : int, optional
            Times per training batch, as for the constructor.
        exclude_params : sequence of sequence of float
            Parameter vectors held out (e.g. for testing generalisation in ``mu``),
            compared after rounding to 6 decimals.
        dtype : torch.dtype
            Floating dtype of the stored data, as for the constructor.
        paired_batches : bool
            As for the constructor.

        Returns
        -------
        SnapshotDataset

        Raises
        ------
        TypeError, ValueError
            Invalid input (see :class:`SnapshotDataset`), or every parameter value excluded.
        """
        times, per_time, per_time_mu = _populations(data, dtype)
        groups = _group_by_params(times, per_time, per_time_mu, exclude_params)
        if not groups:
            raise ValueError("every parameter value was excluded: no data left")
        return cls(groups, n_times=n_times, dtype=dtype, paired_batches=paired_batches)

    @property
    def params(self) -> list[Tensor | None]:
        """The ``(n_params,)`` parameters of each group (None without parameters)."""
        return [mu for _, _, mu in self.groups]

    def __len__(self) -> int:
        return sum(max(p.shape[0] for p in pops) for _, pops, _ in self.groups)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches per epoch: enough to see about every sample of the largest population.

        Parameters
        ----------
        batch_size : int
            Samples per time in a batch.

        Returns
        -------
        int
            ``max(1, ceil(len(self) / batch_size))``.
        """
        return max(1, math.ceil(len(self) / batch_size))

    def iter_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[dict[str, Tensor]]:
        """Random batches for one epoch.

        Parameters
        ----------
        batch_size : int
            ``B``, samples drawn (with replacement) at each chosen time.
        generator : torch.Generator
            Source of every random choice (group, times, samples, probe seed).

        Yields
        ------
        dict of str to torch.Tensor
            :meth:`steps_per_epoch` batches; see the class docstring.
        """
        for _ in range(self.steps_per_epoch(batch_size)):
            g = int(torch.randint(len(self.groups), (), generator=generator))
            times, pops, mu = self.groups[g]
            chosen = torch.arange(times.numel())
            if self.n_times is not None and self.n_times < times.numel():
                inner = torch.randperm(times.numel() - 2, generator=generator)[: self.n_times - 2]
                chosen = torch.cat(
                    [
                        torch.tensor([0]),
                        (inner + 1).sort().values,
                        torch.tensor([times.numel() - 1]),
                    ]
                )
            if self.paired_batches:
                rows = torch.randint(pops[0].shape[0], (batch_size,), generator=generator)
                x = torch.stack([pops[k][rows] for k in chosen.tolist()])
            else:
                x = torch.stack(
                    [
                        pops[k][torch.randint(pops[k].shape[0], (batch_size,), generator=generator)]
                        for k in chosen.tolist()
                    ]
                )
            batch = {
                "x": x,
                "t": times[chosen],
                "probe_seed": torch.randint(2**62, (), generator=generator),
            }
            if mu is not None:
                batch["mu"] = mu
            yield batch

    def shard_batch(self, batch: dict[str, Tensor], rank: int, world_size: int) -> dict:
        """This rank's share of a batch of :meth:`iter_batches`, for data-parallel training.

        Every rank draws the same global batch (same generator) and keeps samples
        ``[rank*B/W, (rank+1)*B/W)`` at every time. The DICE loss is a sum over times of
        per-sample means, so the mean of the ranks' losses is the global-batch loss.
        Hutchinson probes get a per-rank seed: with the shared seed every rank would reuse
        the same probe vectors for different samples.

        Parameters
        ----------
        batch : dict of str to torch.Tensor
            A batch of :meth:`iter_batches`, ``"x"`` ``(n_times, B, *state)``.
        rank : int
            This process's rank, ``0 <= rank < world_size``.
        world_size : int
            Number of ranks ``W``.

        Returns
        -------
        dict
            The batch with ``"x"`` ``(n_times, B_rank, *state)`` and a per-rank
            ``"probe_seed"``; other entries are shared.
        """
        lo, hi = shard_bounds(batch["x"].shape[1], rank, world_size, 1)
        shard = dict(batch, x=batch["x"][:, lo:hi])
        if "probe_seed" in batch:
            seed = hash_seed(int(batch["probe_seed"]), rank)
            shard["probe_seed"] = torch.tensor(seed, dtype=batch["probe_seed"].dtype)
        return shard

    def marginal_speed(self) -> float:
        """How fast the populations' marginals move, as a scale for DICE's potential.

        For every group and every gap ``k`` the per-channel rates
        ``r_c = (m_c(t_{k+1}) - m_c(t_k)) / d_k`` and ``q_c = (sd_c(t_{k+1}) - sd_c(t_k))
        / d_k`` of the population's mean ``m_c`` and standard deviation ``sd_c`` (over
        samples and grid points) give ``u_k^2 = mean_c (r_c^2 + q_c^2) std_c^2``, with
        ``std_c`` the ``state_std`` of :meth:`statistics`; the result is the root mean
        square of ``u_k`` over all gaps of all groups.

        ``u_k / std_c`` is the speed of the moments in physical units, so ``u_k`` is the
        size of a potential over standardised states whose gradient moves them at that
        speed: what :class:`slift_plugin.DICE`'s ``potential_scale`` multiplies by. It sees
        the first two moments only (a law that changes its shape but not its moments
        moves at speed zero here), and a periodic coordinate's linear moments mean little.

        Returns
        -------
        float
            The root-mean-square marginal speed, ``>= 0`` (0 when no moment changes).
        """
        std = self.statistics()["state_std"].double()
        squares = []
        for times, pops, _ in self.groups:
            moments = [_channel_mean_std(pop) for pop in pops]
            gaps = (times[1:] - times[:-1]).double()
            for k, gap in enumerate(gaps):
                rate_mean = (moments[k + 1][0] - moments[k][0]) / gap
                rate_std = (moments[k + 1][1] - moments[k][1]) / gap
                squares.append(float(((rate_mean**2 + rate_std**2) * std**2).mean()))
        return math.sqrt(sum(squares) / len(squares))

    def statistics(self) -> dict[str, Tensor]:
        """Normalisation statistics over every population of every group.

        Returns
        -------
        dict of str to torch.Tensor
            ``"state_mean"`` and ``"state_std"`` (at least 1e-6) per channel (dim 1 of the
            populations), ``"time_offset"`` and ``"time_scale"`` (scalars: first time and
            time span over all groups) and, with parameters, ``"param_mean"`` and
            ``"param_std"`` ``(n_params,)`` over the groups (1 where a parameter does not
            vary or there is a single group).
        """
        moments = _Moments()
        for _, pops, _ in self.groups:
            for pop in pops:
                moments.add(pop)
        mean, std = moments.mean_std()
        t0 = min(float(t[0]) for t, _, _ in self.groups)
        t1 = max(float(t[-1]) for t, _, _ in self.groups)
        stats = {
            "state_mean": mean,
            "state_std": std.clamp_min(1e-6),
            "time_offset": torch.tensor(t0),
            "time_scale": torch.tensor(t1 - t0),
        }
        if self.n_params:
            mus = torch.stack([mu for _, _, mu in self.groups])
            pstd = mus.std(0) if len(mus) > 1 else torch.ones(self.n_params)
            stats["param_mean"] = mus.mean(0)
            stats["param_std"] = torch.where(pstd > 1e-8, pstd, torch.ones_like(pstd))
        return stats
