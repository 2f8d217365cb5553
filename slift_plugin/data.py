"""Data: xarray ensembles <-> tensors, transition datasets with fixed labels, files.

Conventions (see DESIGN.md): a trajectory ensemble is an ``xarray.DataArray`` with dims
``("sample", "time", "channel", *grid)``. Physics parameters are coords named
``mu_<name>`` with dims ``("sample",)``, one per parameter; the parameter vector ``mu``
lists them in sorted name order. (A DataArray cannot carry a coord with a ``param`` dim
it does not have, so the ``("sample", "param")`` layout of DESIGN.md is spelled out per
parameter here.) This module never knows about models.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from torch.utils.data import Dataset

from .distributed import shard_bounds
from .labels import hash_seed

LEADING_DIMS = ("sample", "time", "channel")


# -- xarray <-> tensors ---------------------------------------------------------------------
def check_ensemble(da: object, name: str = "ensemble") -> xr.DataArray:
    """Validate the ensemble layout; returns ``da``."""
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"{name} must be an xarray.DataArray, got {type(da).__name__}")
    if tuple(da.dims[:3]) != LEADING_DIMS:
        raise ValueError(
            f"{name} must have dims ('sample', 'time', 'channel', *grid), got {da.dims}"
        )
    if 0 in da.shape:
        raise ValueError(f"{name} is empty: shape {dict(zip(da.dims, da.shape, strict=True))}")
    return da


MU_PREFIX = "mu_"


def param_names(da: xr.DataArray) -> list[str]:
    """Names of the physics parameters of an ensemble (``mu_<name>`` coords), sorted."""
    return sorted(k[len(MU_PREFIX) :] for k in da.coords if str(k).startswith(MU_PREFIX))


def ensemble_params(da: xr.DataArray, name: str = "ensemble") -> Tensor | None:
    """The ``(sample, n_params)`` float32 parameters of an ensemble, or None."""
    names = param_names(da)
    if not names:
        return None
    columns = []
    for p in names:
        c = da.coords[MU_PREFIX + p]
        if c.dims != ("sample",):
            raise ValueError(f"{name}.{MU_PREFIX}{p} must have dims ('sample',), got {c.dims}")
        columns.append(np.asarray(c.values, dtype=np.float32))
    return torch.as_tensor(np.stack(columns, axis=1))


def ensemble_to_tensor(da: xr.DataArray, name: str = "ensemble") -> tuple[Tensor, Tensor | None]:
    """``(states (sample, time, channel, *grid) float32, mu (sample, n_params) or None)``."""
    check_ensemble(da, name)
    states = torch.as_tensor(np.asarray(da.values, dtype=np.float32))
    return states, ensemble_params(da, name)


def uniform_step(times: Sequence[float] | np.ndarray, name: str = "time") -> float:
    """The constant spacing of ``times``; raises if the spacing is not uniform."""
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size < 2:
        raise ValueError(f"{name} needs at least two values, got {t.size}")
    d = np.diff(t)
    if (d <= 0).any() or not np.allclose(d, d[0], rtol=1e-5, atol=1e-9):
        raise ValueError(f"{name} must be increasing with a constant step, got steps {d}")
    return float(d[0])


def tensor_to_ensemble(
    states: Tensor | np.ndarray,
    times: Sequence[float] | np.ndarray,
    *,
    coords: Mapping[str, object] | None = None,
    mu: Tensor | np.ndarray | None = None,
    param_names: Sequence[str] | None = None,
    attrs: Mapping[str, object] | None = None,
    name: str = "state",
) -> xr.DataArray:
    """Wrap ``(sample, time, channel, *grid)`` values as an ensemble DataArray."""
    values = states.numpy() if isinstance(states, Tensor) else np.asarray(states)
    grid_dims = tuple(f"x{i}" if i else "x" for i in range(values.ndim - 3))
    if coords is not None:
        named = [d for d in coords if d not in LEADING_DIMS and not d.startswith(MU_PREFIX)]
        if len(named) == len(grid_dims):
            grid_dims = tuple(named)
    dims = (*LEADING_DIMS, *grid_dims)
    all_coords: dict[str, object] = {"time": np.asarray(times, dtype=np.float64)}
    for key, value in (coords or {}).items():
        if key in dims and key not in ("sample", "time"):
            all_coords[key] = value
    if mu is not None:
        m = mu.numpy() if isinstance(mu, Tensor) else np.asarray(mu)
        names = (
            list(param_names) if param_names is not None else [f"p{i}" for i in range(m.shape[1])]
        )
        if len(names) != m.shape[1] or names != sorted(names):
            raise ValueError(
                f"param_names must be {m.shape[1]} names in sorted order (the order of mu), "
                f"got {names}"
            )
        for i, p in enumerate(names):
            all_coords[MU_PREFIX + p] = ("sample", m[:, i])
    return xr.DataArray(values, dims=dims, coords=all_coords, attrs=dict(attrs or {}), name=name)


# -- files ----------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename into ``path``; no partial file survives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:  # the data must be on disk before the rename
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_netcdf(obj: xr.DataArray | xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``obj`` to netCDF (h5netcdf engine) atomically."""
    return atomic_write(path, lambda tmp: obj.to_netcdf(tmp, engine="h5netcdf"))


def load_ensemble(path: str | os.PathLike) -> xr.DataArray:
    """Read an ensemble written by :func:`save_netcdf` (netCDF) or to zarr."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ensemble file at {path}")
    try:
        if path.is_dir():
            ds = xr.open_zarr(path)
        else:
            ds = xr.open_dataset(path, engine="h5netcdf")
    except Exception as exc:
        raise ValueError(f"could not read an ensemble from {path}: {exc}") from exc
    if isinstance(ds, xr.Dataset):
        if len(ds.data_vars) != 1:
            raise ValueError(f"{path} holds {list(ds.data_vars)}; expected one ensemble variable")
        ds = ds[next(iter(ds.data_vars))]
    return check_ensemble(ds.load(), str(path))


# -- transitions ----------------------------------------------------------------------------
def _check_finite(t: Tensor, name: str) -> None:
    bad = ~torch.isfinite(t)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/Inf values (shape {tuple(t.shape)})"
        )


class TransitionDataset(Dataset):
    """Transitions ``(window_k, x_{k+1})`` of a trajectory ensemble, with fixed labels.

    Parameters
    ----------
    states:
        ``(n_trajectories, n_times, C, *grid)``.
    history:
        Number of states in the input window (stacked on channels, oldest first).
    mu:
        Optional physics parameters ``(n_trajectories, n_params)``.
    labels:
        Optional label source ``labels(indices) -> (n, *label_shape)``, usually
        ``stepper.fixed_labels(seed, grid)``. Transition ``j`` always gets label ``j``.
    dt:
        Physical step between consecutive states.

    Items are dicts ``{"x": (history*C, *grid), "y": (C, *grid), "index": (),
    "label": (*label_shape), "mu": (n_params,)}`` (the last two when present): the dict
    batches that neuraloperator's ``Trainer`` expects.
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

    @classmethod
    def from_xarray(
        cls,
        ensemble: xr.DataArray,
        *,
        history: int = 1,
        labels: Callable[[Tensor], Tensor] | None = None,
    ) -> TransitionDataset:
        """Transitions of an ensemble DataArray (``mu`` coord used when present)."""
        states, mu = ensemble_to_tensor(ensemble, "ensemble")
        dt = (
            uniform_step(ensemble["time"].values, "ensemble time")
            if "time" in ensemble.coords
            else math.nan
        )
        return cls(states, history=history, mu=mu, labels=labels, dt=dt)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.states.shape[2:])

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.states.shape[3:])

    @property
    def n_params(self) -> int:
        return 0 if self.mu is None else self.mu.shape[1]

    def __len__(self) -> int:
        return self.states.shape[0] * self.per_trajectory

    def get_batch(self, index: Tensor) -> dict[str, Tensor]:
        """Vectorised fetch of transitions ``index`` (1-D integer tensor)."""
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
        """Per-channel state mean/std, increment std and parameter mean/std."""
        index = torch.arange(len(self))
        return transition_statistics(self.get_batch(i) for i in index.split(4096))


class WithFixedLabels(Dataset):
    """Attach fixed labels to any map-style dataset of dict samples.

    For a neuraloperator user: wrap the dataset that feeds ``Trainer`` (items
    ``{"x": ..., "y": ...}``); each item gains ``"label"`` = ``labels([i])[0]`` and
    ``"index"`` = ``i``. The label of item ``i`` is the same in every epoch. With
    ``labels=None`` items gain only ``"index"``: what :class:`slift_plugin.FlowMatching`
    and :class:`slift_plugin.EnergyScoreLifting` key their fresh training noise by.
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
        """Per-channel statistics from one pass over the data (cached)."""
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
        mean = self.total / self.count
        var = (self.squares / self.count - mean**2).clamp_min(0.0)
        n = self.count
        return mean.float(), (var * n / max(n - 1, 1)).sqrt().float()


def transition_statistics(batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Normalisation statistics from dict batches ``{"x": window, "y": next, "mu"?}``.

    State mean/std are taken over the next states ``y``, the increment std over
    ``y - last state of x`` (the quantity the residual form predicts), and parameter
    mean/std over the per-example ``mu``. Raises on empty data or NaN/Inf.
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


# -- snapshots (DICE) -------------------------------------------------------------------------
class SnapshotDataset:
    """Unpaired sample populations ``X_k`` at sorted times ``t_k``, per parameter value.

    Parameters
    ----------
    groups:
        One entry per physics-parameter value: ``(times (K+1,), populations, mu)`` where
        ``populations[k]`` is ``(n_k, *state)`` (sizes may differ per time) and ``mu`` is
        ``(n_params,)`` or None. All groups share the state shape.
    n_times:
        Times per training batch: a random sorted subset that keeps both endpoints
        (default: all times).
    seed:
        Seeds the per-batch Hutchinson probes handed to the loss.

    Batches are dicts ``{"x": (n_times, B, *state), "t": (n_times,), "mu": (n_params,),
    "probe_seed": ()}``: an independent minibatch of ``B`` samples at each chosen time, all
    from one randomly chosen parameter value.
    """

    def __init__(
        self,
        groups: Sequence[tuple[Tensor, Sequence[Tensor], Tensor | None]],
        *,
        n_times: int | None = None,
    ) -> None:
        if not groups:
            raise ValueError("SnapshotDataset needs at least one group of populations")
        checked = []
        state_shape = None
        for g, (times, populations, mu) in enumerate(groups):
            times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
            if times.numel() < 2:
                raise ValueError(
                    f"group {g}: DICE needs populations at two or more times, got {times.numel()}"
                )
            if not (times[1:] > times[:-1]).all():
                raise ValueError(
                    f"group {g}: times must be strictly increasing, got {times.tolist()}"
                )
            if len(populations) != times.numel():
                raise ValueError(
                    f"group {g}: {len(populations)} populations for {times.numel()} times"
                )
            pops = []
            for k, pop in enumerate(populations):
                pop = torch.as_tensor(pop, dtype=torch.float32)
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
                mu = torch.as_tensor(mu, dtype=torch.float32).reshape(-1)
                _check_finite(mu, f"group {g} mu")
            checked.append((times, pops, mu))
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

    @classmethod
    def from_xarray(
        cls,
        data: xr.DataArray | Sequence[xr.DataArray],
        *,
        n_times: int | None = None,
        exclude_params: Sequence[Sequence[float]] = (),
    ) -> SnapshotDataset:
        """Snapshots from xarray, grouped by the ``mu_<name>`` coords.

        ``data`` is either a trajectory ensemble ``(sample, time, channel, *grid)`` whose
        pairing across times is ignored, or a list with one population per time, each
        ``(sample, channel, *grid)`` with a scalar ``time`` coord (sizes may differ).
        Parameter vectors listed in ``exclude_params`` are held out (e.g. for testing
        generalisation in ``mu``).
        """
        if isinstance(data, xr.DataArray):
            states, mu = ensemble_to_tensor(data, "snapshots")
            times = torch.as_tensor(np.asarray(data["time"].values, dtype=np.float32))
            per_time = [states[:, k] for k in range(states.shape[1])]
            per_time_mu = [mu] * len(per_time)
        else:
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
                per_time.append(torch.as_tensor(np.asarray(pop.values, dtype=np.float32)))
                per_time_mu.append(ensemble_params(pop, f"population {k}"))
                t.append(float(pop["time"]))
            times = torch.tensor(t)
        excluded = {tuple(round(float(v), 6) for v in p) for p in exclude_params}
        keys: dict[tuple, int] = {}
        buckets: list[list[list[Tensor]]] = []
        for k, (pop, mu) in enumerate(zip(per_time, per_time_mu, strict=True)):
            rows = (
                [()] * pop.shape[0]
                if mu is None
                else [tuple(round(float(v), 6) for v in m) for m in mu]
            )
            for key in dict.fromkeys(rows):
                if key in excluded:
                    continue
                mask = torch.tensor([r == key for r in rows])
                if key not in keys:
                    keys[key] = len(buckets)
                    buckets.append([[] for _ in per_time])
                buckets[keys[key]][k].append(pop[mask])
        groups = []
        for key, b in zip(keys, buckets, strict=True):
            present = [k for k in range(len(per_time)) if b[k]]
            groups.append(
                (
                    times[present],
                    [torch.cat(b[k]) for k in present],
                    torch.tensor(key) if key else None,
                )
            )
        if not groups:
            raise ValueError("every parameter value was excluded: no data left")
        return cls(groups, n_times=n_times)

    @property
    def params(self) -> list[Tensor | None]:
        return [mu for _, _, mu in self.groups]

    def __len__(self) -> int:
        return sum(max(p.shape[0] for p in pops) for _, pops, _ in self.groups)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches per epoch: enough to see about every sample of the largest population."""
        return max(1, math.ceil(len(self) / batch_size))

    def iter_batches(self, batch_size: int, generator: torch.Generator):
        """Yield :meth:`steps_per_epoch` random batches (see the class docstring)."""
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
        """
        lo, hi = shard_bounds(batch["x"].shape[1], rank, world_size, 1)
        shard = dict(batch, x=batch["x"][:, lo:hi])
        if "probe_seed" in batch:
            seed = hash_seed(int(batch["probe_seed"]), rank)
            shard["probe_seed"] = torch.tensor(seed, dtype=batch["probe_seed"].dtype)
        return shard

    def statistics(self) -> dict[str, Tensor]:
        """Per-channel state mean/std, time offset/scale and parameter mean/std."""
        moments = _Moments()
        for _, pops, _ in self.groups:
            for pop in pops:
                moments.add(pop if pop.ndim > 2 else pop)
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
