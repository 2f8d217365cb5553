"""Sample-based metrics for comparing a generated ensemble with a reference ensemble.

Everything here compares *distributions* (marginals at each output time), never sample paths:

- :func:`energy_distance`: the squared energy distance (V-statistic), computed in float64 in
  blocks so that memory stays bounded for tens of thousands of samples; coordinates may be
  periodic (distance on the circle, e.g. particle positions in a periodic box).
- :func:`sliced_wasserstein2`: the sliced 2-Wasserstein distance with seeded random projections
  and exact 1-D quantile matching (sample sizes may differ).
- :func:`moments`: ensemble mean and standard deviation over ``"sample"``.
- :func:`evaluate`: all of the above per output time, with a *noise floor* (the same statistic
  between two disjoint reference subsamples of the same size), returned as an
  :class:`xarray.Dataset`.

Runtime dependencies: torch, numpy, xarray only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr

from .data.ensemble import time_counts_steps

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_N_PROJECTIONS",
    "energy_distance",
    "same_law_energy_distance",
    "sliced_wasserstein2",
    "random_projections",
    "moments",
    "evaluate",
]

DEFAULT_BLOCK_SIZE = 2048
DEFAULT_N_PROJECTIONS = 128
_DIRECT_CDIST_MAX_DIM = 16
_CPU_TILE_ELEMENTS = 1 << 16  # distances per tile on the CPU (512 KiB of float64)
_EXPLICIT_MAX_PLAIN = 4  # with periodic coordinates, up to this many plain ones skip cdist


# --------------------------------------------------------------------------------------------
# Tensor-level helpers
# --------------------------------------------------------------------------------------------


def _as_samples(x: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``x`` as a float64 matrix (n, D); a 1-D tensor is read as n scalar samples."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have shape (n, ...) with a sample dim, got a scalar")
    if x.shape[0] == 0:
        raise ValueError(
            f"{name} is empty: expected at least one sample, got shape {tuple(x.shape)}"
        )
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite values (NaN/Inf)")
    return x


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = _as_samples(x, "x"), _as_samples(y, "y")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(
            "x and y must have the same state size per sample: "
            f"x has shape {tuple(x.shape)}, y has shape {tuple(y.shape)}"
        )
    if xs.device != ys.device:
        raise ValueError(f"x and y must be on the same device, got {xs.device} and {ys.device}")
    return xs, ys


class _Periodic(NamedTuple):
    """Which coordinates of a flattened state are periodic, and how distances are formed.

    Attributes
    ----------
    index : torch.Tensor
        ``(p,)`` int64 positions of the periodic coordinates.
    length : torch.Tensor
        ``(p,)`` float64 periods, on the CPU.
    plain : torch.Tensor
        int64 positions of the plain coordinates whose distances go through cdist.
    explicit : torch.Tensor
        int64 positions of the plain coordinates whose differences are formed one at a
        time, like the periodic ones (when there are few: cheaper than a cdist).
    """

    index: torch.Tensor
    length: torch.Tensor
    plain: torch.Tensor
    explicit: torch.Tensor


def _check_period(period: object, dim: int) -> _Periodic | None:
    """Validate ``period`` for states of ``dim`` coordinates; None when nothing is periodic.

    Parameters
    ----------
    period : None, float or sequence of (float or None)
        None (no coordinate periodic), one period for every coordinate, or one entry per
        coordinate of the flattened state (None: that coordinate is not periodic).
    dim : int
        Size ``D`` of the flattened state.

    Returns
    -------
    _Periodic or None

    Raises
    ------
    ValueError
        A period that is not a finite number > 0, or a sequence whose length is not ``dim``.
    """
    if period is None:
        return None
    if isinstance(period, (int, float, np.integer, np.floating)) and not isinstance(period, bool):
        entries: list[object] = [period] * dim
    elif isinstance(period, (str, bytes)) or not hasattr(period, "__len__"):
        raise ValueError(
            "period must be None, a number (every coordinate periodic) or a sequence of "
            f"numbers or None, one per state coordinate; got {period!r}"
        )
    else:
        entries = list(period)  # type: ignore[call-overload]
        if len(entries) != dim:
            raise ValueError(
                f"period must have one entry per coordinate of the flattened state (D={dim}), "
                f"got {len(entries)}"
            )
    index, lengths = [], []
    for i, entry in enumerate(entries):
        if entry is None:
            continue
        ok = isinstance(entry, (int, float, np.integer, np.floating)) and not isinstance(
            entry, bool
        )
        if not ok or not math.isfinite(float(entry)) or float(entry) <= 0:
            raise ValueError(
                f"period[{i}] must be None or a finite number > 0 (the length of the circle), "
                f"got {entry!r}"
            )
        index.append(i)
        lengths.append(float(entry))
    if not index:
        return None
    plain = sorted(set(range(dim)) - set(index))
    few = len(plain) <= _EXPLICIT_MAX_PLAIN
    return _Periodic(
        torch.tensor(index, dtype=torch.int64),
        torch.tensor(lengths, dtype=torch.float64),
        torch.tensor([] if few else plain, dtype=torch.int64),
        torch.tensor(plain if few else [], dtype=torch.int64),
    )


_Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _split_columns(x: torch.Tensor, periodic: _Periodic) -> _Split:
    """The columns of ``x`` as :func:`_pairwise_distances` takes them with periodic ones.

    Returns ``(plain (n, r), explicit (q, n), wrapped (p, n))``, all contiguous: the plain
    columns for cdist, the plain columns formed one at a time, and the periodic columns
    wrapped into ``[0, L)``.
    """
    dev = x.device
    wrapped = torch.remainder(x[:, periodic.index.to(dev)].T, periodic.length.to(dev)[:, None])
    explicit = x[:, periodic.explicit.to(dev)].T
    return x[:, periodic.plain.to(dev)], explicit.contiguous(), wrapped.contiguous()


def _pairwise_distances(a: _Split, b: _Split, lengths: list[float], mode: str) -> torch.Tensor:
    """Distances ``(n, m)`` between the rows of two samples split by :func:`_split_columns`.

    Each periodic coordinate of length ``L`` adds the square of its distance on the circle,
    ``min(|d| mod L, L - |d| mod L)``, to the squared Euclidean distance of the other
    coordinates. Coordinates are added one at a time, so that the memory stays ``O(n m)``.
    """
    (a_plain, a_explicit, a_wrapped), (b_plain, b_explicit, b_wrapped) = a, b
    if a_plain.shape[1]:
        squared = torch.cdist(a_plain, b_plain, compute_mode=mode).square_()
    else:
        squared = a_plain.new_zeros(a_plain.shape[0], b_plain.shape[0])
    for k in range(a_explicit.shape[0]):
        squared.add_((a_explicit[k, :, None] - b_explicit[k, None, :]).square_())
    for k, length in enumerate(lengths):
        # Both columns are wrapped into [0, L), so |d| < L and the distance on the circle
        # is min(|d|, L - |d|) = L/2 - ||d| - L/2|; only its square is needed, which is
        # that of ||d| - L/2| - L/2 (elementwise ops only: torch.round is slow on the CPU).
        d = (a_wrapped[k, :, None] - b_wrapped[k, None, :]).abs_()
        d.sub_(length / 2).abs_().sub_(length / 2)
        squared.add_(d.square_())
    return squared.sqrt_()


def _block_sum(
    a: torch.Tensor,
    b: torch.Tensor,
    periodic: _Periodic | None,
    mode: str,
    zero_diagonal: bool,
) -> torch.Tensor:
    """Sum of the distances between the rows of ``a`` and of ``b`` (one block).

    On the CPU the block is formed in row tiles of about :data:`_CPU_TILE_ELEMENTS`
    distances: tiles that stay in cache are several times faster than one large block. A
    GPU gets the block at once (large kernels). ``zero_diagonal`` (a diagonal block of a
    sample with itself) sets ``d(a_i, a_i)`` to its exact value 0: the matmul form of cdist
    leaves about ``sqrt(eps) |a_i|`` there.
    """
    n = a.shape[0]
    rows = max(1, _CPU_TILE_ELEMENTS // b.shape[0]) if a.device.type == "cpu" else n
    if periodic is not None:  # split once per block, not once per tile
        a_split, b_split = _split_columns(a, periodic), _split_columns(b, periodic)
        lengths = periodic.length.tolist()
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for r in range(0, n, rows):
        if periodic is None:
            d = torch.cdist(a[r : r + rows], b, compute_mode=mode)
        else:
            plain, explicit, wrapped = a_split
            tile = (plain[r : r + rows], explicit[:, r : r + rows], wrapped[:, r : r + rows])
            d = _pairwise_distances(tile, b_split, lengths, mode)
        if zero_diagonal:
            d[:, r : r + rows].diagonal().zero_()
        total = total + d.sum()
    return total


def _mean_pairwise_distance(
    a: torch.Tensor,
    b: torch.Tensor | None,
    block_size: int,
    periodic: _Periodic | None = None,
) -> torch.Tensor:
    """Mean distance over all pairs (a_i, b_j), diagonal included, in blocks.

    ``b=None`` means ``b = a``; the symmetry is then used to compute only blocks j >= i.
    ``periodic`` (see :func:`_check_period`) makes some coordinates distances on a circle.
    """
    symmetric = b is None
    if symmetric:
        b = a
    n, m = a.shape[0], b.shape[0]
    # Direct differences are exact and no slower for small D; for larger D the matmul form
    # |a|^2 + |b|^2 - 2 a.b is several times faster, at the price of an absolute error of about
    # sqrt(eps) * |a| on distances between (nearly) coincident points.
    direct = a.shape[1] <= _DIRECT_CDIST_MAX_DIM
    mode = "donot_use_mm_for_euclid_dist" if direct else "use_mm_for_euclid_dist"
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, n, block_size):
        ai = a[i : i + block_size]
        j0 = i if symmetric else 0
        for j in range(j0, m, block_size):
            diagonal = symmetric and j == i
            s = _block_sum(ai, b[j : j + block_size], periodic, mode, diagonal)
            total = total + (2.0 * s if symmetric and j != i else s)
    return total / (n * m)


def energy_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    period: float | Sequence[float | None] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """Squared energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between two samples.

    The expectations are V-statistics: plain means over all pairs, diagonal included. This is
    what ``dcor.energy_distance(x, y)`` returns by default, and in 1-D it is the square of
    ``scipy.stats.energy_distance``. The result is non-negative up to round-off, zero when the
    two samples are identical as sets (exactly for D <= 16; for larger D distances are formed
    as |a|^2 + |b|^2 - 2 a.b for speed, which leaves about 1e-8 relative to the data scale
    on coincident points), and for two independent samples of size n from the same
    law its expectation is ``E|X-X'| / n`` per sample (a positive *bias*; see :func:`evaluate`,
    which reports it as a noise floor).

    Parameters
    ----------
    x : torch.Tensor
        Samples ``(n, ...)`` or ``(n,)``; everything after the first dim is flattened into
        the state, and the norm is the Euclidean norm of the flattened state.
    y : torch.Tensor
        Samples ``(m, ...)``, same state size as ``x`` and on the same device; n and m may
        differ.
    period : float or sequence of (float or None) or None
        Periodic coordinates (e.g. positions in a periodic box). None: none. A number
        ``L``: every coordinate lives on a circle of length ``L``. A sequence: one entry per
        coordinate of the flattened state, ``L`` for a periodic coordinate and None for a
        plain one. A periodic coordinate enters the Euclidean norm with its distance on
        the circle, ``min(|d| mod L, L - |d| mod L)``, so values need not be wrapped into
        ``[0, L)`` first. The result is then the energy distance of the flat torus
        metric.
    block_size : int
        The pairwise distances are formed in blocks of ``block_size`` x ``block_size``
        (float64), so memory is O(block_size**2 + (n + m) D), with or without periodic
        coordinates (they are added one coordinate at a time).

    Returns
    -------
    torch.Tensor
        A float64 scalar on the device of the inputs.

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a real tensor.
    ValueError
        If ``block_size < 1``, a sample is empty or holds NaN/Inf, the state sizes or
        devices of ``x`` and ``y`` differ, or ``period`` is not None, a number > 0 or a
        sequence of one such number (or None) per state coordinate.
    """
    if int(block_size) < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    xs, ys = _check_pair(x, y)
    periodic = _check_period(period, xs.shape[1])
    # Centre on the pooled mean: the statistic is translation invariant (on a circle a shift
    # changes no distance either), and centring reduces cancellation in cdist's
    # |a|^2 + |b|^2 - 2 a.b formulation.
    centre = (xs.sum(0) + ys.sum(0)) / (xs.shape[0] + ys.shape[0])
    xs, ys = xs - centre, ys - centre
    bs = int(block_size)
    exy = _mean_pairwise_distance(xs, ys, bs, periodic)
    exx = _mean_pairwise_distance(xs, None, bs, periodic)
    eyy = _mean_pairwise_distance(ys, None, bs, periodic)
    return 2.0 * exy - exx - eyy


def same_law_energy_distance(
    y: torch.Tensor,
    n_other: int,
    *,
    period: float | Sequence[float | None] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> float:
    """Expected :func:`energy_distance` between ``y`` and ``n_other`` fresh draws of its law.

    For independent samples of sizes ``n`` and ``m`` from one law the V-statistic has
    expectation ``E|X-X'| (1/n + 1/m)``; ``E|X-X'|`` is estimated without bias from ``y``
    (the mean over its pairs ``i != j``). A model whose samples have the law of ``y``
    scores this in expectation: a noise floor without the variance of a random split.

    Parameters
    ----------
    y : torch.Tensor
        Samples ``(m, ...)``, ``m >= 2``, flattened as in :func:`energy_distance`.
    n_other : int
        The size of the sample that will be compared with ``y`` (>= 1).
    period : float or sequence of (float or None) or None
        Periodic coordinates, as in :func:`energy_distance`.
    block_size : int
        Pairwise distances are formed in blocks of this size.

    Returns
    -------
    float
        ``E|X-X'| (1/n_other + 1/m)``.

    Raises
    ------
    ValueError
        ``y`` has fewer than two samples or holds NaN/Inf, ``n_other < 1``, or
        ``period``/``block_size`` is invalid (as in :func:`energy_distance`).
    """
    if int(n_other) < 1 or int(block_size) < 1:
        raise ValueError(f"n_other and block_size must be >= 1, got {n_other}, {block_size}")
    ys, _ = _check_pair(y, y)
    m = ys.shape[0]
    if m < 2:
        raise ValueError(f"need at least two samples to estimate E|X-X'|, got {m}")
    periodic = _check_period(period, ys.shape[1])
    v_mean = float(_mean_pairwise_distance(ys - ys.mean(0), None, int(block_size), periodic))
    pair_mean = v_mean * m / (m - 1)  # the diagonal's zeros left out
    return pair_mean * (1 / int(n_other) + 1 / m)


def random_projections(
    dim: int,
    n_projections: int = DEFAULT_N_PROJECTIONS,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Directions drawn uniformly on the unit sphere of R^dim.

    Drawn on the CPU in float64 (from ``generator`` if given, else from a fresh generator seeded
    with ``seed``), so the same seed gives the same directions on every device.

    Parameters
    ----------
    dim : int
        Dimension ``D`` of the space (>= 1).
    n_projections : int
        Number of directions (>= 1).
    seed : int
        Seed of a fresh CPU generator, used when ``generator`` is None.
    generator : torch.Generator or None
        Explicit CPU generator to draw from.

    Returns
    -------
    torch.Tensor
        float64 unit columns ``(dim, n_projections)`` on the CPU.

    Raises
    ------
    ValueError
        If ``dim`` or ``n_projections`` is below one.
    """
    if int(dim) < 1 or int(n_projections) < 1:
        raise ValueError(
            f"dim and n_projections must be positive, got dim={dim}, n_projections={n_projections}"
        )
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
    theta = torch.randn(int(dim), int(n_projections), generator=generator, dtype=torch.float64)
    return theta / theta.norm(dim=0, keepdim=True)


def _w2_squared_1d_sorted(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between uniform empirical measures, rows of sorted samples.

    ``xs`` (P, n) and ``ys`` (P, m) are sorted along the last dim. W2^2 is the integral over
    u in (0, 1) of (F^-1(u) - G^-1(u))^2; both quantile functions are piecewise constant with
    breaks at i/n and j/m. The breaks are merged exactly in integer arithmetic (scaled by n*m).
    """
    n, m = xs.shape[-1], ys.shape[-1]
    if n == m:
        return ((xs - ys) ** 2).mean(-1)
    dev = xs.device
    breaks = torch.cat(
        [
            torch.arange(1, n + 1, device=dev, dtype=torch.int64) * m,
            torch.arange(1, m + 1, device=dev, dtype=torch.int64) * n,
        ]
    )
    breaks = torch.unique(breaks)  # sorted; last entry is n*m
    widths = torch.diff(breaks, prepend=breaks.new_zeros(1)).to(torch.float64) / (n * m)
    # On the segment (u_prev, u], the left-continuous quantile index is ceil(u*n) - 1.
    ix = (breaks + m - 1) // m - 1
    iy = (breaks + n - 1) // n - 1
    return (((xs[:, ix] - ys[:, iy]) ** 2) * widths).sum(-1)


def sliced_wasserstein2(
    x: torch.Tensor,
    y: torch.Tensor,
    n_projections: int = DEFAULT_N_PROJECTIONS,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    projections: torch.Tensor | None = None,
    squared: bool = False,
) -> torch.Tensor:
    """Sliced 2-Wasserstein distance, Monte Carlo over random directions.

    ``SW2(x, y) = ( mean_theta W2^2(<theta, x>, <theta, y>) )^(1/2)``, the same convention as
    POT's ``ot.sliced_wasserstein_distance(..., p=2)`` (NOT squared unless ``squared=True``).
    Each 1-D W2^2 is computed exactly between the uniform empirical measures by quantile
    matching, so n and m may differ.

    Parameters
    ----------
    x : torch.Tensor
        Samples ``(n, ...)`` or ``(n,)``; flattened per sample like :func:`energy_distance`.
    y : torch.Tensor
        Samples ``(m, ...)``, same state size.
    n_projections : int
        Number of random directions (ignored if ``projections`` is given).
    seed : int
        Seed of the directions, used when neither ``generator`` nor ``projections`` is.
    generator : torch.Generator or None
        Explicit CPU generator for the directions.
    projections : torch.Tensor or None
        Explicit directions ``(D, n_projections)``; used as given (not normalised).
    squared : bool
        Return the mean of the squared 1-D distances instead of its square root.

    Returns
    -------
    torch.Tensor
        A float64 scalar on the device of the inputs.

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a real tensor.
    ValueError
        If a sample is empty or holds NaN/Inf, the state sizes or devices of ``x`` and
        ``y`` differ, or ``projections`` is not ``(D, n_projections)``.
    """
    xs, ys = _check_pair(x, y)
    dim = xs.shape[1]
    if projections is None:
        projections = random_projections(dim, n_projections, seed=seed, generator=generator)
    if projections.ndim != 2 or projections.shape[0] != dim:
        raise ValueError(
            f"projections must have shape (D={dim}, n_projections), got {tuple(projections.shape)}"
        )
    theta = projections.to(device=xs.device, dtype=torch.float64)
    px = torch.sort((xs @ theta).T, dim=-1).values
    py = torch.sort((ys @ theta).T, dim=-1).values
    sw2 = _w2_squared_1d_sorted(px, py).mean()
    return sw2 if squared else sw2.sqrt()


# --------------------------------------------------------------------------------------------
# xarray level
# --------------------------------------------------------------------------------------------


def moments(ens: xr.DataArray, *, ddof: int = 1) -> xr.Dataset:
    """Mean and standard deviation of an ensemble over ``"sample"``.

    Parameters
    ----------
    ens : xarray.DataArray
        An ensemble with a ``"sample"`` dim, e.g. ``(sample, time, channel, *grid)``.
    ddof : int
        Delta degrees of freedom of ``std`` (default 1, the unbiased variance).

    Returns
    -------
    xarray.Dataset
        Variables ``mean`` and ``std`` over the dims of ``ens`` without ``"sample"``;
        attrs ``ddof`` and ``n_samples``.

    Raises
    ------
    TypeError
        If ``ens`` is not a DataArray.
    ValueError
        If ``ens`` has no ``"sample"`` dim or at most ``ddof`` samples.
    """
    if not isinstance(ens, xr.DataArray):
        raise TypeError(f"ens must be an xarray.DataArray, got {type(ens).__name__}")
    if "sample" not in ens.dims:
        raise ValueError(f"ens must have a 'sample' dim, got dims {ens.dims}")
    if ens.sizes["sample"] <= ddof:
        raise ValueError(
            f"ens needs more than ddof={ddof} samples for std, got {ens.sizes['sample']}"
        )
    out = xr.Dataset(
        {"mean": ens.mean("sample"), "std": ens.std("sample", ddof=ddof)},
        attrs={"ddof": ddof, "n_samples": ens.sizes["sample"]},
    )
    out["mean"].attrs.update(long_name="ensemble mean over 'sample'")
    out["std"].attrs.update(long_name=f"ensemble standard deviation over 'sample' (ddof={ddof})")
    return out


def _check_ensemble(da: object, name: str) -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        raise TypeError(
            f"{name} must be an xarray.DataArray with dims ('sample', 'time', 'channel', *grid), "
            f"got {type(da).__name__}"
        )
    missing = [d for d in ("sample", "time") if d not in da.dims]
    if missing:
        raise ValueError(
            f"{name} must have dims ('sample', 'time', ...), missing {missing}; got dims {da.dims}"
        )
    if not (np.issubdtype(da.dtype, np.floating) or np.issubdtype(da.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {da.dtype}")
    return da


def _time_values(da: xr.DataArray) -> np.ndarray:
    if "time" in da.coords:
        return np.asarray(da["time"].values)
    return np.arange(da.sizes["time"])


def _match_times(t_gen: np.ndarray, t_ref: np.ndarray, rtol: float) -> np.ndarray:
    """Index into t_ref for every generated time; -1 where there is no match."""
    numeric = np.issubdtype(t_gen.dtype, np.number) and np.issubdtype(t_ref.dtype, np.number)
    idx = np.full(t_gen.shape[0], -1, dtype=np.int64)
    if numeric:
        tg, tr = t_gen.astype(np.float64), t_ref.astype(np.float64)
        scale = max(1.0, float(np.max(np.abs(np.concatenate([tg, tr])))))
        tol = rtol * scale
        for k, t in enumerate(tg):
            d = np.abs(tr - t)
            j = int(np.argmin(d))
            if d[j] <= tol:
                idx[k] = j
    else:
        lookup = {v: j for j, v in enumerate(t_ref.tolist())}
        for k, t in enumerate(t_gen.tolist()):
            idx[k] = lookup.get(t, -1)
    return idx


def _check_coords(gen: xr.DataArray, ref: xr.DataArray, dims: list[Hashable]) -> None:
    for d in dims:
        if d not in gen.coords or d not in ref.coords:
            continue
        a, b = np.asarray(gen[d].values), np.asarray(ref[d].values)
        if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
            same = np.allclose(a, b, rtol=1e-6, atol=1e-9)
        else:
            same = bool(np.array_equal(a, b))
        if not same:
            raise ValueError(
                f"generated and reference have different coordinates on dim {d!r}: "
                f"generated {a.tolist()[:8]}..., reference {b.tolist()[:8]}..."
            )


def _non_finite_report(da: xr.DataArray, name: str) -> None:
    bad = ~np.isfinite(da)
    n_bad = int(bad.sum())
    if n_bad:
        per_time = bad.sum([d for d in da.dims if d != "time"])
        times = _time_values(da)[np.asarray(per_time.values) > 0]
        shown = ", ".join(str(t) for t in times[:10]) + (" ..." if times.size > 10 else "")
        raise ValueError(
            f"{name} contains {n_bad} non-finite values (NaN/Inf) at {times.size} time(s): "
            f"[{shown}]; expected all-finite values"
        )


_DESCRIPTIONS = {
    "energy_distance": (
        "squared energy distance, generated vs reference",
        "2E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic, Euclidean norm over channel and grid; "
        "periodic coordinates, if any, by their distance on the circle, see the attrs "
        "periodic_coordinates and periods) between n generated samples and a reference "
        "subsample A of size n (mean over the n_splits splits of the attrs)",
    ),
    "noise_floor": (
        "energy distance between two disjoint reference subsamples",
        "the same statistic between reference subsamples A and B (disjoint, both of size n): "
        "the value a perfect generator would get, sampling noise and V-statistic bias included "
        "(mean over the n_splits splits)",
    ),
    "ed_ratio": (
        "energy distance / noise floor",
        "about 1 when generated is indistinguishable from reference at this sample size; "
        ">> 1 when it is not; NaN where the noise floor is 0 (reference has no spread)",
    ),
    "mean_rel_error": (
        "relative error of the ensemble mean",
        "||mean_gen - mean_ref||_2 / ||std_ref||_2 over all channel and grid points. "
        "Normalised by the reference spread, not by ||mean_ref||, because the mean may be ~0 "
        "(symmetric systems). Full ensembles; NaN where ||std_ref|| = 0",
    ),
    "std_rel_error": (
        "relative error of the ensemble standard deviation",
        "||std_gen - std_ref||_2 / ||std_ref||_2 over all channel and grid points (ddof=1, full "
        "ensembles); 1 for a collapsed ensemble; NaN where ||std_ref|| = 0",
    ),
    "ref_std_norm": (
        "norm of the reference standard deviation",
        "||std_ref||_2 over all channel and grid points (ddof=1), the normaliser of "
        "mean_rel_error and std_rel_error",
    ),
    "sliced_w2": (
        "sliced 2-Wasserstein distance, generated vs reference",
        "(mean over random unit directions of W2^2 of the projections)^(1/2), not squared, "
        "between the same n generated samples and reference subsample A",
    ),
    "sliced_w2_noise_floor": (
        "sliced 2-Wasserstein distance between two disjoint reference subsamples",
        "sliced_w2 between reference subsamples A and B (same directions)",
    ),
}


class _Subsamples(NamedTuple):
    """The seeded draws of :func:`evaluate`, shared by every output time.

    Attributes
    ----------
    n : int
        Size of every compared sample.
    gen_idx : numpy.ndarray
        ``(n,)`` sorted indices of the generated samples used by the distances.
    ref_a : numpy.ndarray
        ``(n_splits, n)`` indices of reference subsample A, one row per split.
    ref_b : numpy.ndarray
        ``(n_splits, n)`` indices of reference subsample B, disjoint from A in the same
        row.
    theta : torch.Tensor
        ``(D, n_projections)`` float64 directions of the sliced distances.
    """

    n: int
    gen_idx: np.ndarray
    ref_a: np.ndarray
    ref_b: np.ndarray
    theta: torch.Tensor


def _check_comparable(gen: xr.DataArray, ref: xr.DataArray) -> tuple[xr.DataArray, list[Hashable]]:
    """Check that two ensembles describe the same state space with enough samples.

    Parameters
    ----------
    gen : xarray.DataArray
        Generated ensemble, dims ``("sample", "time", *state_dims)`` in any order.
    ref : xarray.DataArray
        Reference ensemble, the same dims and state sizes; its number of times may differ.

    Returns
    -------
    ref : xarray.DataArray
        ``ref`` transposed to the dim order of ``gen``.
    state_dims : list of Hashable
        The dims of ``gen`` other than ``"sample"`` and ``"time"``, in order.

    Raises
    ------
    ValueError
        Different non-sample dims or state sizes, different state coordinates, fewer than 2
        generated or 4 reference samples.
    """
    gen_dims = [d for d in gen.dims if d != "sample"]
    ref_dims = [d for d in ref.dims if d != "sample"]
    gen_shape = {d: gen.sizes[d] for d in gen_dims if d != "time"}
    ref_shape = {d: ref.sizes[d] for d in ref_dims if d != "time"}
    if set(gen_dims) != set(ref_dims) or gen_shape != ref_shape:
        raise ValueError(
            "generated and reference must have the same non-sample dims and sizes (except "
            f"time): generated has {gen_shape} (dims {tuple(gen.dims)}), reference has "
            f"{ref_shape} (dims {tuple(ref.dims)})"
        )
    state_dims = [d for d in gen_dims if d != "time"]
    _check_coords(gen, ref, state_dims)
    ref = ref.transpose(*gen.dims)

    n_gen, n_ref = gen.sizes["sample"], ref.sizes["sample"]
    if n_gen < 2:
        raise ValueError(f"generated needs at least 2 samples, got {n_gen}")
    if n_ref < 4:
        raise ValueError(
            f"reference needs at least 4 samples (two disjoint subsamples of at least 2 for the "
            f"noise floor), got {n_ref}"
        )
    return ref, state_dims


def _align_times(gen: xr.DataArray, ref: xr.DataArray, time_rtol: float) -> xr.DataArray:
    """Select the reference times that match the generated ones.

    Parameters
    ----------
    gen : xarray.DataArray
        Generated ensemble with ``n_t`` times.
    ref : xarray.DataArray
        Reference ensemble, dims in the order of ``gen``.
    time_rtol : float
        Tolerance of the time match, relative to the largest ``|t|`` (at least 1).

    Returns
    -------
    xarray.DataArray
        ``ref`` restricted to ``n_t`` times, in the order of the generated times. Without a
        time coord on either side, times are matched by position.

    Raises
    ------
    ValueError
        One side's time coord counts steps and the other's is physical time (their
        ``long_name``, see :func:`slift_plugin.data.ensemble.time_counts_steps`), only one
        side has a time coord and the numbers of times differ, no time in common, or a
        generated time missing from the reference.
    """
    steps = {"generated": time_counts_steps(gen), "reference": time_counts_steps(ref)}
    if None not in steps.values() and len(set(steps.values())) == 2:
        # Matched by value, step k would meet whatever state the other holds at time k:
        # a silent comparison of the wrong times.
        counted, other = sorted(steps, key=lambda name: not steps[name])
        raise ValueError(
            f"the {counted} ensemble counts time in steps (its time coord has long_name "
            f"'step': its stepper has no physical time step) while the {other} ensemble's "
            "time coord is physical time; pass the physical step to rollout(..., dt=...), or "
            "give the steps their times yourself (e.g. generated.assign_coords(time=t0 + dt * "
            "k))"
        )
    t_gen, t_ref = _time_values(gen), _time_values(ref)
    if "time" in gen.coords and "time" in ref.coords:
        idx = _match_times(t_gen, t_ref, time_rtol)
    elif gen.sizes["time"] == ref.sizes["time"]:
        idx = np.arange(gen.sizes["time"])  # no time coord on one side: compare positions
    else:
        raise ValueError(
            "generated and reference must both carry a 'time' coord, or have the same number of "
            f"times: generated has {gen.sizes['time']}, reference has {ref.sizes['time']}"
        )
    if (idx < 0).all():
        raise ValueError(
            "generated and reference have no time in common: generated times "
            f"{t_gen.tolist()[:10]}, reference times {t_ref.tolist()[:10]}"
        )
    if (idx < 0).any():
        missing = t_gen[idx < 0]
        raise ValueError(
            f"{missing.size} generated time(s) not found in reference: {missing.tolist()[:10]}; "
            "select the common times first, e.g. generated.sel(time=...)"
        )
    return ref.isel(time=idx)


def _draw_subsamples(
    n_gen: int, n_ref: int, dim: int, n_projections: int, seed: int, n_splits: int = 1
) -> _Subsamples:
    """Draw the subsamples and the projection directions of :func:`evaluate`.

    Parameters
    ----------
    n_gen, n_ref : int
        Generated and reference sample counts (``n_gen >= 2``, ``n_ref >= 4``).
    dim : int
        State size ``D`` (product of the state dims).
    n_projections : int
        Number of directions of the sliced distances.
    seed : int
        Seed of the one CPU generator all draws come from.
    n_splits : int
        Number of reference splits (A, B).

    Returns
    -------
    _Subsamples
        ``n = min(n_gen, n_ref // 2)``; the generated indices are all samples when
        ``n_gen == n``, else a sorted random subset (the same for every split).

    Raises
    ------
    ValueError
        ``n_projections`` or ``n_splits`` is not positive.
    """
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer, got {n_splits!r}")
    n = min(n_gen, n_ref // 2)
    # One generator, drawn in a fixed order (first reference permutation, generated subset,
    # directions, further permutations), so that a seed reproduces every draw and the
    # first split of n_splits > 1 is the single split of n_splits = 1.
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    perms = [torch.randperm(n_ref, generator=g)]
    gen_idx = (
        np.arange(n_gen) if n_gen == n else np.sort(torch.randperm(n_gen, generator=g)[:n].numpy())
    )
    theta = random_projections(dim, n_projections, generator=g)
    perms += [torch.randperm(n_ref, generator=g) for _ in range(int(n_splits) - 1)]
    perm_ref = torch.stack(perms).numpy()
    return _Subsamples(n, gen_idx, perm_ref[:, :n], perm_ref[:, n : 2 * n], theta)


def _distances_per_time(
    gen: xr.DataArray,
    ref: xr.DataArray,
    sub: _Subsamples,
    block_size: int,
    device: str | torch.device | None,
    period: float | Sequence[float | None] | None = None,
) -> dict[str, np.ndarray]:
    """Energy and sliced W2 distances, and their noise floors, at every output time.

    Parameters
    ----------
    gen : xarray.DataArray
        Generated ensemble ``(n_gen, n_t, *state)``.
    ref : xarray.DataArray
        Reference ensemble ``(n_ref, n_t, *state)``, times aligned with ``gen``.
    sub : _Subsamples
        The sample indices and projection directions.
    block_size : int
        Block size of :func:`energy_distance`.
    device : str or torch.device or None
        Where to compute (CPU when None).
    period : float or sequence of (float or None) or None
        Periodic coordinates of the energy distances, see :func:`energy_distance`.

    Returns
    -------
    dict of str to numpy.ndarray
        ``"energy_distance"``, ``"noise_floor"``, ``"sliced_w2"`` and
        ``"sliced_w2_noise_floor"``, each ``(n_t,)`` float64: the mean over the splits
        of ``sub`` (the squared distance for sliced W2, reported as its square root).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    n_gen, n_ref = gen.sizes["sample"], ref.sizes["sample"]
    gen_idx = torch.as_tensor(sub.gen_idx, device=dev)
    splits = list(
        zip(
            torch.as_tensor(sub.ref_a, device=dev),
            torch.as_tensor(sub.ref_b, device=dev),
            strict=True,
        )
    )
    n_t = gen.sizes["time"]
    ed, nf, sw, sw_nf = (np.zeros(n_t) for _ in range(4))
    for k in range(n_t):
        xg = torch.as_tensor(np.asarray(gen.isel(time=k).values), device=dev)
        xr_ = torch.as_tensor(np.asarray(ref.isel(time=k).values), device=dev)
        xg = xg.reshape(n_gen, -1).to(torch.float64)[gen_idx]
        xr_ = xr_.reshape(n_ref, -1).to(torch.float64)
        for ref_a, ref_b in splits:
            a, b = xr_[ref_a], xr_[ref_b]
            ed[k] += float(energy_distance(xg, a, period=period, block_size=block_size))
            nf[k] += float(energy_distance(b, a, period=period, block_size=block_size))
            sw[k] += float(sliced_wasserstein2(xg, a, projections=sub.theta)) ** 2
            sw_nf[k] += float(sliced_wasserstein2(b, a, projections=sub.theta)) ** 2
    n_splits = len(splits)
    ed, nf = ed / n_splits, nf / n_splits
    sw, sw_nf = np.sqrt(sw / n_splits), np.sqrt(sw_nf / n_splits)
    return {
        "energy_distance": ed,
        "noise_floor": nf,
        "sliced_w2": sw,
        "sliced_w2_noise_floor": sw_nf,
    }


def _moment_errors(
    gen: xr.DataArray, ref: xr.DataArray, state_dims: list[Hashable]
) -> dict[str, np.ndarray]:
    """Relative errors of the ensemble mean and standard deviation at every output time.

    Parameters
    ----------
    gen : xarray.DataArray
        Generated ensemble ``(n_gen, n_t, *state)``, all samples.
    ref : xarray.DataArray
        Reference ensemble ``(n_ref, n_t, *state)``, times aligned with ``gen``.
    state_dims : list of Hashable
        The dims the norms run over.

    Returns
    -------
    dict of str to numpy.ndarray
        ``"mean_rel_error"``, ``"std_rel_error"`` (NaN where the reference has no spread)
        and ``"ref_std_norm"``, each ``(n_t,)``.
    """
    mom_gen, mom_ref = moments(gen), moments(ref)
    diff_mean = np.sqrt(((mom_gen["mean"] - mom_ref["mean"].values) ** 2).sum(state_dims))
    diff_std = np.sqrt(((mom_gen["std"] - mom_ref["std"].values) ** 2).sum(state_dims))
    ref_norm = np.sqrt((mom_ref["std"] ** 2).sum(state_dims)).values
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(ref_norm > 0, ref_norm, 1.0)
        mean_rel = np.where(ref_norm > 0, np.asarray(diff_mean.values) / safe, np.nan)
        std_rel = np.where(ref_norm > 0, np.asarray(diff_std.values) / safe, np.nan)
    return {"mean_rel_error": mean_rel, "std_rel_error": std_rel, "ref_std_norm": ref_norm}


def _ed_ratio(ed: np.ndarray, nf: np.ndarray) -> np.ndarray:
    """``ed / nf`` elementwise, NaN where the noise floor ``nf`` is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nf > 0, ed / np.where(nf > 0, nf, 1.0), np.nan)


def _metrics_dataset(
    gen: xr.DataArray, values: dict[str, np.ndarray], attrs: dict[str, object]
) -> xr.Dataset:
    """Wrap the per-time metrics as the Dataset that :func:`evaluate` returns.

    Parameters
    ----------
    gen : xarray.DataArray
        Generated ensemble; its ``time`` coord (if any) becomes the Dataset's.
    values : dict of str to numpy.ndarray
        ``(n_t,)`` values, keyed by the variable names of ``_DESCRIPTIONS``; the order of
        the keys is the order of the variables.
    attrs : dict of str to object
        Dataset attrs (sample sizes, seed, ...); a ``description`` is added.

    Returns
    -------
    xarray.Dataset
        float64 variables over ``"time"``, each with ``long_name`` and ``description`` attrs.
    """
    # the time coord's attrs say whether it counts steps or time
    time_coord = (
        {"time": ("time", gen["time"].values, dict(gen["time"].attrs))}
        if "time" in gen.coords
        else {}
    )
    return xr.Dataset(
        {
            name: xr.DataArray(
                np.asarray(v, dtype=np.float64),
                dims=("time",),
                coords=time_coord,
                attrs={"long_name": _DESCRIPTIONS[name][0], "description": _DESCRIPTIONS[name][1]},
            )
            for name, v in values.items()
        },
        attrs={
            **attrs,
            "description": (
                "generated vs reference per output time; distances use n generated samples and "
                "two disjoint seeded reference subsamples A, B of size n (noise floor = A vs B), "
                "averaged over n_splits seeded splits; moment errors use the full ensembles"
            ),
        },
    )


def evaluate(
    generated: xr.DataArray,
    reference: xr.DataArray,
    *,
    seed: int = 0,
    n_projections: int = DEFAULT_N_PROJECTIONS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
    time_rtol: float = 1e-6,
    period: float | Sequence[float | None] | None = None,
    n_splits: int = 1,
) -> xr.Dataset:
    """Compare a generated ensemble with a reference ensemble at every output time.

    Both are DataArrays with dims ("sample", "time", "channel", *grid) (or no grid, for vector
    states) and the same non-sample dims and sizes; their sample counts may differ. The times of
    ``generated`` must all appear in ``reference`` (compared with relative tolerance
    ``time_rtol`` of the largest |t|); extra reference times are ignored. Without a time coord,
    time positions are compared. A time coord that counts steps (``long_name`` "step", from
    ``rollout`` of a stepper without a physical ``dt``) is never matched with one in physical
    time (``long_name`` "time"); unmarked times are matched by value.

    Sample sizes: n = min(n_generated, n_reference // 2). A seeded permutation of the reference
    gives two disjoint subsamples A and B of size n, and if n_generated > n a seeded subsample of
    n generated samples is used (the same samples at every time). The distribution distances
    compare equal sample sizes, so ``ed_ratio`` = energy_distance / noise_floor is about 1 for a
    generator that matches the reference law and grows when it does not. The moment errors use
    the full ensembles.

    With ``n_splits > 1`` the reference is split ``n_splits`` times (seeded, independent
    permutations; the first is the split of ``n_splits=1``), and ``energy_distance`` and
    ``noise_floor`` are the means over the splits of ED(generated, A) and ED(B, A) (the
    sliced W2 distances: the root of the mean squared distance). The ratio of means keeps its
    meaning and loses the noise of one split: for a law with few directions of spread (1-D, or
    bimodal) a single split's ED is close to a chi-square variable with one degree of
    freedom, so ``ed_ratio`` of a perfect generator scatters over about 0.1-4 from split to
    split. Cost grows with ``n_splits``.

    Parameters
    ----------
    generated : xarray.DataArray
        ``(n_generated, n_t, channel, *grid)``, real values; ``n_generated >= 2``.
    reference : xarray.DataArray
        ``(n_reference, n_t_ref, channel, *grid)``, real values; ``n_reference >= 4``.
    seed : int
        Seed of the subsamples and of the projection directions.
    n_projections : int
        Number of random directions of the sliced W2 distances.
    block_size : int
        Block size of the pairwise distances, see :func:`energy_distance`.
    device : str or torch.device, optional
        Where the distances are computed (default CPU).
    time_rtol : float
        Relative tolerance of the time match.
    period : float or sequence of (float or None) or None
        Periodic coordinates of the energy distance and its noise floor (see
        :func:`energy_distance`): one period for all, or one entry per coordinate of the
        flattened state in the dim order of ``generated`` (e.g. ``[L, None]`` for
        channels ``("x", "v")`` of particles in a box of length ``L``). The sliced W2
        distances and the moment errors stay Euclidean.
    n_splits : int
        Number of seeded reference splits the distances and noise floors average over
        (default 1).

    Returns
    -------
    xarray.Dataset
        Over "time" (coords of ``generated``), ``(n_t,)`` float64 variables
        ``energy_distance``, ``noise_floor``, ``ed_ratio``, ``mean_rel_error``,
        ``std_rel_error``, ``ref_std_norm``, ``sliced_w2`` and ``sliced_w2_noise_floor``;
        each carries ``long_name`` and ``description`` attrs. Dataset attrs record n, the
        sample counts, the seed, the number of projections and the periodic coordinates
        (``periodic_coordinates``, ``periods``: positions in the flattened state and
        lengths, empty lists without ``period``).

    Raises
    ------
    TypeError
        Inputs are not real-valued DataArrays.
    ValueError
        Missing "sample"/"time" dims, different non-sample dims, sizes or coordinates, a
        time coord counting steps (``rollout`` of a stepper without ``dt``) against one
        in physical time, no common times or generated times missing from reference,
        NaN/Inf in either ensemble, fewer than 2 generated or 4 reference samples, an
        invalid ``period``, or ``n_splits`` not a positive integer.
    """
    gen = _check_ensemble(generated, "generated")
    ref = _check_ensemble(reference, "reference")
    ref, state_dims = _check_comparable(gen, ref)
    ref = _align_times(gen, ref, time_rtol)
    _non_finite_report(gen, "generated")
    _non_finite_report(ref, "reference")

    n_gen, n_ref = gen.sizes["sample"], ref.sizes["sample"]
    dim = int(np.prod([gen.sizes[d] for d in state_dims], dtype=np.int64))
    periodic = _check_period(period, dim)  # before any work: a bad period fails fast
    sub = _draw_subsamples(n_gen, n_ref, dim, n_projections, seed, n_splits)
    dist = _distances_per_time(gen, ref, sub, block_size, device, period)
    errors = _moment_errors(gen, ref, state_dims)
    values = {
        "energy_distance": dist["energy_distance"],
        "noise_floor": dist["noise_floor"],
        "ed_ratio": _ed_ratio(dist["energy_distance"], dist["noise_floor"]),
        **errors,
        "sliced_w2": dist["sliced_w2"],
        "sliced_w2_noise_floor": dist["sliced_w2_noise_floor"],
    }
    attrs = {
        "n": sub.n,
        "n_generated": n_gen,
        "n_reference": n_ref,
        "seed": int(seed),
        "n_splits": int(sub.ref_a.shape[0]),
        "n_projections": int(sub.theta.shape[1]),
        "std_ddof": 1,
        # netCDF-safe: the periodic coordinates' positions and lengths (empty: none)
        "periodic_coordinates": [] if periodic is None else periodic.index.tolist(),
        "periods": [] if periodic is None else periodic.length.tolist(),
    }
    return _metrics_dataset(gen, values, attrs)
