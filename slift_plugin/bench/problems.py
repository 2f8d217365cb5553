"""The benchmark problems: reference data, a start state, and one problem-specific score.

Every problem builds, from the suite's data seed:

* ``train``: trajectories of the reference system (SL, MSE, CFM and ES regress their
  transitions; DICE reads them as unpaired populations), all from the test start state;
  the problems with a physics parameter (Vlasov's beam speed, Lorenz-96's forcing)
  train at other values than the test's, from populations of the same kind;
* ``reference``: an independent, larger ensemble from the same start (two disjoint
  halves of it give the noise floor of :func:`slift_plugin.evaluate`, with the
  problem's periodic coordinates, if any, measured on the circle);
* ``solver``: the reference system itself at its fine internal step, timed on the same
  number of trajectories the learned methods generate. Its cost is the number to beat.

Sizes come in two scales: ``quick`` (the whole quick suite runs in minutes on a 2-core
CPU, for CI) and full (the committed ``BENCHMARKS.md``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from ..systems import (
    allen_cahn,
    double_well,
    field_energy,
    lorenz63,
    lorenz96,
    vlasov_two_stream,
)
from ..systems.sdes import LORENZ63_X0
from ..systems.vlasov import DEFAULT_LENGTH

__all__ = [
    "LORENZ96_DT",
    "LORENZ96_INIT_STD",
    "LORENZ96_TEST_FORCING",
    "LORENZ96_TRAIN_FORCING",
    "PROBLEMS",
    "PROBLEM_KINDS",
    "ProblemData",
    "autocorrelation",
    "autocorrelation_error",
    "build_problem",
    "field_energy_error",
    "lorenz96_problem",
    "lorenz96_runs",
    "power_spectrum",
    "relative_cost",
    "spatial_autocovariance",
    "spatial_autocovariance_error",
    "spectrum_error",
    "timed",
    "well_occupancy_error",
]


@dataclass
class ProblemData:
    """What one problem hands to the runner.

    Attributes
    ----------
    name : str
        The problem's key in :data:`PROBLEMS`.
    kind : str
        ``"vector"``, ``"field"``, ``"particles"`` or ``"population"``
        (:data:`PROBLEM_KINDS`).
    train : xarray.DataArray
        Training trajectories ``(sample, time, channel, *grid)``.
    reference : xarray.DataArray
        The independent reference ensemble, from the test start state.
    x0 : numpy.ndarray
        The start state (shared by all samples, ``state_shape``) or per-sample states.
    n_steps : int
        Output steps of the test horizon.
    dt : float
        Output step.
    n_generate : int
        Trajectories every method generates.
    solve : callable
        ``solve(n, seed, device)`` integrates the reference system for ``n``
        trajectories over the test horizon on ``device`` and returns the ensemble.
    solver_evals_per_step : int
        The solver's drift evaluations per output step.
    quantity : str
        What the problem-specific score measures, for people.
    quantity_error : callable
        ``quantity_error(generated, reference)``, the problem-specific score (smaller is
        better).
    sigma : float
        Known diffusion, for DICE's diffusion variant.
    mu : list of float or None
        The physics parameters of the test ensemble.
    param_names : list of str or None
        Their names.
    postprocess : callable or None
        Applied to every generated ensemble before scoring (e.g. wrapping positions).
    extras : dict
        Problem-specific settings (e.g. the box length).
    quick : bool
        Built at the quick suite's sizes.
    period : float or list of (float or None) or None
        Periodic coordinates of the flattened state, for the energy distances of
        :func:`slift_plugin.evaluate` (its ``period``): e.g. ``[L, None]`` for particle
        positions in a box of length ``L`` and their velocities.
    """

    name: str
    kind: str  # "vector", "field", "particles" or "population"
    train: xr.DataArray
    reference: xr.DataArray
    x0: np.ndarray
    n_steps: int
    dt: float
    n_generate: int
    solve: Callable[..., xr.DataArray]
    solver_evals_per_step: int
    quantity: str
    quantity_error: Callable[[xr.DataArray, xr.DataArray], float]
    sigma: float = 0.0  # known diffusion, for DICE's diffusion variant
    mu: list[float] | None = None
    param_names: list[str] | None = None
    postprocess: Callable[[xr.DataArray], xr.DataArray] | None = None
    extras: dict = field(default_factory=dict)
    quick: bool = False  # built at the quick suite's sizes (the budgets differ)
    period: float | list[float | None] | None = None  # periodic coordinates, for evaluate()

    @property
    def state_shape(self) -> tuple[int, ...]:
        """``(C, *grid)`` of one state of the reference."""
        return tuple(self.reference.shape[2:])

    @property
    def coords(self) -> dict:
        """Channel and grid coords of the reference, for generated ensembles."""
        ref = self.reference
        return {d: ref[d].values for d in ref.dims[2:] if d in ref.coords}

    @property
    def horizons(self) -> list[int]:
        """Output steps reported as short, middle and final horizon."""
        n = self.n_steps
        return sorted({max(1, round(n / 8)), max(1, round(n / 2)), n})


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """Run ``fn()`` and time it.

    Parameters
    ----------
    fn : callable
        The work, called once without arguments.

    Returns
    -------
    result : object
        What ``fn()`` returned.
    seconds : float
        Its wall time.
    """
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# -- problem-specific scores --------------------------------------------------------------
def well_occupancy_error(gen: xr.DataArray, ref: xr.DataArray, threshold: float = 0.5) -> float:
    """Largest error over time of the right-well occupancy ``P(X_t > threshold)``.

    Parameters
    ----------
    gen, ref : xarray.DataArray
        Generated and reference ensembles with channel ``"x"``, over the same times.
    threshold : float
        States above it count as in the right well.

    Returns
    -------
    float
        ``max_t |P_gen(X_t > threshold) - P_ref(X_t > threshold)|``.
    """
    occ_gen = (gen.sel(channel="x") > threshold).mean("sample").values
    occ_ref = (ref.sel(channel="x") > threshold).mean("sample").values
    return float(np.abs(occ_gen - occ_ref).max())


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Mean over samples of the normalised time-autocorrelation of ``x``.

    Parameters
    ----------
    x : numpy.ndarray
        Trajectories ``(sample, time)``.
    max_lag : int
        Number of lags, ``0 .. max_lag - 1``.

    Returns
    -------
    numpy.ndarray
        ``(max_lag,)``, 1 at lag 0.
    """
    x = x - x.mean(axis=1, keepdims=True)
    var = (x * x).mean(axis=1)
    acf = [(x[:, : x.shape[1] - lag] * x[:, lag:]).mean(axis=1) / var for lag in range(max_lag)]
    return np.stack(acf, axis=1).mean(axis=0)


def autocorrelation_error(gen: xr.DataArray, ref: xr.DataArray) -> float:
    """Largest difference of the autocorrelation of ``x(t)`` over lags up to half the run.

    Parameters
    ----------
    gen, ref : xarray.DataArray
        Generated and reference ensembles with channel ``"x"``, over the same times.

    Returns
    -------
    float
        ``max_lag |acf_gen - acf_ref|`` (:func:`autocorrelation`).
    """
    lags = gen.sizes["time"] // 2
    a = autocorrelation(gen.sel(channel="x").values.astype(np.float64), lags)
    b = autocorrelation(ref.sel(channel="x").values.astype(np.float64), lags)
    return float(np.abs(a - b).max())


def power_spectrum(u: np.ndarray) -> np.ndarray:
    """Ensemble-mean power spectrum ``E|u_hat(k)|^2`` of fields.

    Parameters
    ----------
    u : numpy.ndarray
        Fields ``(sample, ..., x)``.

    Returns
    -------
    numpy.ndarray
        ``(..., x // 2 + 1)``: the mean over samples of ``|rfft(u)|^2``.
    """
    return (np.abs(np.fft.rfft(u, axis=-1)) ** 2).mean(axis=0)


def spectrum_error(gen: xr.DataArray, ref: xr.DataArray) -> float:
    """Relative L2 error of the log power spectrum of ``u`` at the final time.

    Parameters
    ----------
    gen, ref : xarray.DataArray
        Generated and reference field ensembles ``(sample, time, channel, x)``.

    Returns
    -------
    float
        ``||log P_gen - log P_ref|| / ||log P_ref||`` (:func:`power_spectrum`).
    """
    a = np.log(power_spectrum(gen.isel(time=-1).values.astype(np.float64)) + 1e-12)
    b = np.log(power_spectrum(ref.isel(time=-1).values.astype(np.float64)) + 1e-12)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def spatial_autocovariance(x: np.ndarray) -> np.ndarray:
    """Ensemble spatial autocovariance of states on a ring of sites, per time.

    ``C(t, r) = mean over samples and sites i of (x_i - m(t)) (x_{i+r} - m(t))`` with
    cyclic ``i + r`` and ``m(t)`` the mean over samples and sites (the statistics of a
    ring are the same at every site). ``C(t, 0)`` is the variance, the energy about the
    mean.

    Parameters
    ----------
    x : numpy.ndarray
        States ``(sample, time, site)``.

    Returns
    -------
    numpy.ndarray
        ``(time, site // 2 + 1)``: lags ``0 .. site // 2`` (the others repeat them).
    """
    x = x - x.mean(axis=(0, 2), keepdims=True)
    lags = range(x.shape[2] // 2 + 1)
    return np.stack([(x * np.roll(x, -r, axis=2)).mean(axis=(0, 2)) for r in lags], axis=1)


def spatial_autocovariance_error(gen: xr.DataArray, ref: xr.DataArray) -> float:
    """The score of the Lorenz-96 problem: relative error of the spatial autocovariance.

    Parameters
    ----------
    gen, ref : xarray.DataArray
        Generated and reference ensembles ``(sample, time, channel)`` over the same times;
        the channels are the sites of the ring.

    Returns
    -------
    float
        ``||C_gen - C_ref|| / ||C_ref||`` over all times and lags
        (:func:`spatial_autocovariance`).
    """
    order = ("sample", "time", "channel")
    a = spatial_autocovariance(gen.transpose(*order).values.astype(np.float64))
    b = spatial_autocovariance(ref.transpose(*order).values.astype(np.float64))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def field_energy_error(length: float, n_grid: int) -> Callable[[xr.DataArray, xr.DataArray], float]:
    """The score of the Vlasov problem: relative L2 error of the curve ``W_E(t)``.

    Parameters
    ----------
    length : float
        Box length.
    n_grid : int
        Grid nodes of :func:`slift_plugin.systems.field_energy`.

    Returns
    -------
    callable
        ``error(generated, reference) -> float`` on particle ensembles with channel
        ``"x"`` (positions).
    """

    def error(gen: xr.DataArray, ref: xr.DataArray) -> float:
        """Relative L2 error of the electric-energy curve ``W_E(t)``."""
        we = [
            field_energy(torch.as_tensor(e.sel(channel="x").values.T), length, n_grid).numpy()
            for e in (gen, ref)
        ]
        return float(np.linalg.norm(we[0] - we[1]) / np.linalg.norm(we[1]))

    return error


# -- the problems -------------------------------------------------------------------------
# Known before a problem is built, so that the default methods of a problem follow from the
# kinds each method family applies to.
PROBLEM_KINDS: dict[str, str] = {
    "double_well": "vector",
    "lorenz63": "vector",
    "allen_cahn": "field",
    "vlasov": "particles",
    # vector states started from a population, with a held-out physics parameter
    "lorenz96": "population",
}


def _sde_problem(
    name: str,
    generate: Callable[..., xr.DataArray],
    x0: np.ndarray,
    *,
    n_steps: int,
    dt: float,
    dt_internal: float,
    noise: dict[str, float],
    quick: bool,
    seed: int,
    quantity: str,
    quantity_error: Callable[[xr.DataArray, xr.DataArray], float],
) -> ProblemData:
    """A torchsde reference system started from one state ``x0``."""
    sizes = (128, 512, 256) if quick else (512, 4096, 2048)  # train, reference, generated

    def solve(n: int, s: int, device: str = "cpu") -> xr.DataArray:
        return generate(
            n_samples=n,
            n_steps=n_steps,
            dt=dt,
            dt_internal=dt_internal,
            seed=s,
            device=device,
            **noise,
        )

    return ProblemData(
        name=name,
        kind=PROBLEM_KINDS[name],
        train=solve(sizes[0], seed),
        reference=solve(sizes[1], seed + 1),
        x0=x0,
        n_steps=n_steps,
        dt=dt,
        n_generate=sizes[2],
        solve=solve,
        solver_evals_per_step=round(dt / dt_internal),
        quantity=quantity,
        quantity_error=quantity_error,
        sigma=next(iter(noise.values())),
    )


def _double_well(quick: bool, seed: int) -> ProblemData:
    return _sde_problem(
        "double_well",
        double_well,
        np.zeros(1, dtype=np.float32),
        n_steps=16,
        dt=0.25,
        dt_internal=1e-2,
        noise={"sigma": 0.5},
        quick=quick,
        seed=seed,
        quantity="max |error| of right-well occupancy P(x > 0.5)",
        quantity_error=well_occupancy_error,
    )


def _lorenz63(quick: bool, seed: int) -> ProblemData:
    return _sde_problem(
        "lorenz63",
        lorenz63,
        np.asarray(LORENZ63_X0, dtype=np.float32),
        n_steps=20 if quick else 40,
        dt=0.05,
        dt_internal=1e-3,
        noise={"noise": 1.0},
        quick=quick,
        seed=seed,
        quantity="max |error| of the autocorrelation of x(t), lags up to half the run",
        quantity_error=autocorrelation_error,
    )


def _allen_cahn(quick: bool, seed: int) -> ProblemData:
    n_steps, dt, n_grid, dt_internal = (8, 0.4, 64, 1e-2) if quick else (20, 0.4, 128, 1e-2)
    sizes = (16, 128, 64) if quick else (128, 512, 256)

    def solve(n: int, s: int, device: str = "cpu") -> xr.DataArray:
        return allen_cahn(
            n_samples=n,
            n_steps=n_steps,
            dt=dt,
            n_grid=n_grid,
            dt_internal=dt_internal,
            seed=s,
            device=device,
        )

    reference = solve(sizes[1], seed + 1)
    return ProblemData(
        name="allen_cahn",
        quick=quick,
        kind=PROBLEM_KINDS["allen_cahn"],
        train=solve(sizes[0], seed),
        reference=reference,
        x0=np.zeros((1, n_grid), dtype=np.float32),
        n_steps=n_steps,
        dt=dt,
        n_generate=sizes[2],
        solve=solve,
        solver_evals_per_step=round(dt / dt_internal),
        quantity="relative L2 error of the log power spectrum of u at the final time",
        quantity_error=spectrum_error,
        sigma=float(reference.attrs["sigma"]),
    )


VLASOV_TRAIN_V0 = (0.8, 0.9, 1.1, 1.2)
VLASOV_TEST_V0 = 1.0


def _vlasov(quick: bool, seed: int) -> ProblemData:
    n_steps, dt, dt_internal = 40, 1.0, 0.1
    n_particles = 2000 if quick else 6000
    train_v0 = (0.9, 1.1) if quick else VLASOV_TRAIN_V0

    def run(n: int, v0: float, s: int, device: str = "cpu") -> xr.DataArray:
        return vlasov_two_stream(
            n_particles=n,
            n_steps=n_steps,
            dt=dt,
            v0=v0,
            dt_internal=dt_internal,
            seed=s,
            device=device,
        )["state"]

    train = xr.concat([run(n_particles, v0, seed + i) for i, v0 in enumerate(train_v0)], "sample")
    reference = run(2 * n_particles, VLASOV_TEST_V0, seed + 100)
    start = run(n_particles, VLASOV_TEST_V0, seed + 101).isel(time=0).values
    length, n_grid = DEFAULT_LENGTH, 64  # the box and field grid of vlasov_two_stream

    def wrap_positions(ens: xr.DataArray) -> xr.DataArray:
        ens = ens.copy(data=np.array(ens.values))
        ens.loc[{"channel": "x"}] = np.mod(ens.sel(channel="x"), length)
        return ens

    channels = list(reference["channel"].values)  # ("x", "v"): only positions wrap
    return ProblemData(
        name="vlasov",
        quick=quick,
        kind=PROBLEM_KINDS["vlasov"],
        train=train,
        reference=reference,
        x0=start,
        n_steps=n_steps,
        dt=dt,
        n_generate=n_particles,
        solve=lambda n, s, device="cpu": run(n, VLASOV_TEST_V0, s, device),
        solver_evals_per_step=round(dt / dt_internal),
        quantity="relative L2 error of the electric-energy curve W_E(t)",
        quantity_error=field_energy_error(length, n_grid),
        mu=[VLASOV_TEST_V0],
        param_names=["v0"],
        postprocess=wrap_positions,
        extras={"length": length},
        period=[length if c == "x" else None for c in channels],
    )


LORENZ96_TRAIN_FORCING = (6.0, 7.0, 9.0, 10.0)
LORENZ96_TEST_FORCING = 8.0
# The start F + 3 N(0, I) is about as broad as the attractor (2.8-4.3 per coordinate at
# F = 6-10); F + N(0, I), the start until 2026-12-03, made the first half time unit a fast
# collapse onto it that DICE's rollouts missed: DICE's ED ratio at t = 0.25 / 1 / 2 went
# 9.6 / 17 / 16.5 -> 1.8 / 2.8 / 4.9 with this start, 2,048 trajectories per training
# forcing and 1,600 steps (medians of 3 seeds; BENCHMARKS.md, "DICE on Lorenz-96: the
# potential's shape, the start's breadth, and what 512 trajectories allow")
LORENZ96_INIT_STD = 3.0
LORENZ96_DT = 0.05
_LORENZ96_RK4_DT = 0.01


def lorenz96_runs(
    n: int,
    forcings: Sequence[float],
    seed: int,
    *,
    quick: bool,
    init_std: float = LORENZ96_INIT_STD,
    snapshot_dt: float = LORENZ96_DT,
    device: str = "cpu",
) -> xr.DataArray:
    """Runs of the bench's Lorenz-96 problem: ``n`` per forcing, concatenated.

    Parameters
    ----------
    n : int
        Runs per forcing.
    forcings : sequence of float
        The forcings ``F``; the ``i``-th is run with data seed ``seed + i``.
    seed : int
        The first data seed.
    quick : bool
        The quick suite's sizes (``d = 10``, 1 time unit) or the full ones (``d = 20``,
        2 time units).
    init_std : float
        Each run starts at ``F + init_std N(0, I)``, then a burn-in of 0.2.
    snapshot_dt : float
        Time between saved states (a divisor of the problem's step, 0.05): the same
        trajectories, saved more often.
    device : str
        Where to integrate.

    Returns
    -------
    xarray.DataArray
        ``(sample, time, channel)``, ``n * len(forcings)`` samples with coordinate
        ``mu_forcing``.
    """
    dim, n_steps = (10, 20) if quick else (20, 40)
    every = round(LORENZ96_DT / snapshot_dt)
    if every < 1 or abs(every * snapshot_dt - LORENZ96_DT) > 1e-9:
        raise ValueError(f"snapshot_dt must divide {LORENZ96_DT}, got {snapshot_dt}")
    runs = [
        lorenz96(
            n,
            n_steps * every,
            snapshot_dt,
            dim=dim,
            forcing=np.full(n, forcing),  # per sample: the ensemble carries mu_forcing
            init_std=init_std,
            burn_in=0.2,
            dt_internal=_LORENZ96_RK4_DT,
            seed=seed + i,
            device=device,
        )
        for i, forcing in enumerate(forcings)
    ]
    return runs[0] if len(runs) == 1 else xr.concat(runs, "sample")


def lorenz96_problem(
    quick: bool, seed: int, *, init_std: float = LORENZ96_INIT_STD, n_train: int | None = None
) -> ProblemData:
    """Lorenz-96 from a broad population, trained on some forcings, tested on another.

    The population starts at ``F + init_std N(0, I)`` and, after a burn-in of 0.2, the
    test horizon (2 time units, 1 in the quick suite) covers the relaxation towards the
    attractor: the marginals change a lot (see :mod:`slift_plugin.systems.lorenz96`).
    Deterministic dynamics: the spread is that of the population. Data seeds: training
    runs ``seed + i`` (one per forcing), reference ``seed + 100``, start states
    ``seed + 101``.

    Parameters
    ----------
    quick : bool
        Quick (CI) or full sizes.
    seed : int
        The suite's data seed.
    init_std : float
        The start's spread (:data:`LORENZ96_INIT_STD`; 1 until 2026-12-03).
    n_train : int or None
        Training runs per forcing; None: 128 quick, 2,048 full (512 until 2026-12-03).

    Returns
    -------
    ProblemData
    """
    n_reference, n_generate = (512, 256) if quick else (4096, 2048)
    if n_train is None:
        n_train = 128 if quick else 2048
    train_forcing = (7.0, 9.0) if quick else LORENZ96_TRAIN_FORCING
    test = LORENZ96_TEST_FORCING

    def run(n: int, s: int, forcings: Sequence[float] = (test,), device: str = "cpu"):
        return lorenz96_runs(n, forcings, s, quick=quick, init_std=init_std, device=device)

    return ProblemData(
        name="lorenz96",
        quick=quick,
        kind=PROBLEM_KINDS["lorenz96"],
        train=run(n_train, seed, train_forcing),
        reference=run(n_reference, seed + 100),
        x0=run(n_generate, seed + 101).isel(time=0).values,
        n_steps=20 if quick else 40,
        dt=LORENZ96_DT,
        n_generate=n_generate,
        solve=lambda n, s, device="cpu": run(n, s, device=device),
        solver_evals_per_step=4 * round(LORENZ96_DT / _LORENZ96_RK4_DT),  # RK4: 4 drift evaluations
        quantity="relative L2 error of the spatial autocovariance C(t, lag) over all times",
        quantity_error=spatial_autocovariance_error,
        mu=[test],
        param_names=["forcing"],
        extras={"train_forcing": list(train_forcing), "init_std": init_std},
    )


PROBLEMS: dict[str, Callable[[bool, int], ProblemData]] = {
    "double_well": _double_well,
    "lorenz63": _lorenz63,
    "allen_cahn": _allen_cahn,
    "vlasov": _vlasov,
    "lorenz96": lorenz96_problem,
}


def build_problem(name: str, *, quick: bool, seed: int = 0) -> ProblemData:
    """Build problem ``name`` at quick or full size.

    Parameters
    ----------
    name : str
        A key of :data:`PROBLEMS`.
    quick : bool
        Quick (CI) or full sizes.
    seed : int
        The suite's data seed.

    Returns
    -------
    ProblemData

    Raises
    ------
    ValueError
        If ``name`` is not a problem.
    """
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}")
    return dataclasses.replace(PROBLEMS[name](quick, seed), quick=bool(quick))


def relative_cost(seconds: float, n_samples: int, n_steps: int) -> float:
    """Wall seconds per 1,000 trajectory-steps.

    Parameters
    ----------
    seconds : float
        Wall time of the generation.
    n_samples, n_steps : int
        Trajectories and steps generated.

    Returns
    -------
    float
        ``1000 * seconds / (n_samples * n_steps)``; nan when either count is not positive.
    """
    if n_samples <= 0 or n_steps <= 0:
        return math.nan
    return 1000.0 * seconds / (n_samples * n_steps)
