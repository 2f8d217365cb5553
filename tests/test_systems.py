"""Tests of the reference stochastic systems and of the torchsde integration glue."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import solve_ivp

from slift_plugin.adapters.torchsde import integrate_sde
from slift_plugin.systems import (
    Lorenz96SDE,
    OrnsteinUhlenbeckSDE,
    allen_cahn,
    allen_cahn_initial_conditions,
    double_well,
    lorenz63,
    lorenz96,
    lorenz96_drift,
    ornstein_uhlenbeck,
    ou_transition_moments,
)

torch.set_num_threads(1)


def _check_gaussian(x, mean, var, n_sigma=4.0):
    """Sample ``x`` has the given mean and variance within sampling error, and is normal."""
    n = x.size
    z = (x - mean) / np.sqrt(var)
    assert abs(z.mean()) < n_sigma / math.sqrt(n), f"mean off by {z.mean():.4f} std units"
    # var of the sample variance of standard normals is 2/(n-1).
    assert abs(z.var(ddof=1) - 1) < n_sigma * math.sqrt(2 / (n - 1)), f"var ratio {z.var():.4f}"
    assert stats.kstest(z, "norm").pvalue > 1e-4


# ---------------------------------------------------------------------------- OU


def test_ou_transition_moments_closed_form():
    mean, var = ou_transition_moments(2.0, 0.5, 1.5, 0.5, 0.4)
    assert mean == pytest.approx(0.5 + 1.5 * math.exp(-0.75))
    assert var == pytest.approx(0.16 / 3.0 * (1 - math.exp(-1.5)))
    # long time: the stationary law N(center, sigma^2 / (2 theta))
    mean, var = ou_transition_moments(np.array([5.0, -5.0]), 100.0, 2.0, 1.0, 0.6)
    np.testing.assert_allclose(mean, [1.0, 1.0])
    np.testing.assert_allclose(var, [0.09, 0.09])
    mean_t, var_t = ou_transition_moments(torch.tensor([2.0]), 0.5, torch.tensor([1.5]), 0.5, 0.4)
    assert float(mean_t) == pytest.approx(0.5 + 1.5 * math.exp(-0.75), rel=1e-6)
    assert float(var_t) == pytest.approx(0.16 / 3.0 * (1 - math.exp(-1.5)), rel=1e-6)


def test_ou_one_step_matches_exact_transition():
    theta, center, sigma, dt, x0 = 1.5, 0.2, 0.5, 0.1, 1.0
    da = ornstein_uhlenbeck(20000, 1, dt, x0=x0, theta=theta, center=center, sigma=sigma, seed=3)
    assert np.all(da.values[:, 0, 0] == np.float32(x0))
    mean, var = ou_transition_moments(x0, dt, theta, center, sigma)
    _check_gaussian(da.values[:, 1, 0].astype(np.float64), mean, var)


def test_ou_multistep_and_dims():
    # Several output steps in 2 dims: every component at every time has the exact law.
    da = ornstein_uhlenbeck(8000, 3, 0.2, x0=np.array([1.0, -0.5]), dim=2, dt_internal=2e-3)
    assert da.sizes == {"sample": 8000, "time": 4, "channel": 2}
    assert list(da.channel.values) == ["x0", "x1"]
    for k in (1, 3):
        for c, start in enumerate((1.0, -0.5)):
            mean, var = ou_transition_moments(start, 0.2 * k, 1.0, 0.0, 0.5)
            _check_gaussian(da.values[:, k, c].astype(np.float64), mean, var)
    # the two components are driven by independent noise
    corr = np.corrcoef(da.values[:, 3, 0], da.values[:, 3, 1])[0, 1]
    assert abs(corr) < 4 / math.sqrt(8000)


def test_ou_per_sample_theta_carries_mu_coord():
    n = 12000
    theta = np.linspace(0.25, 4.0, n)
    da = ornstein_uhlenbeck(n, 2, 0.25, x0=1.0, theta=theta, sigma=0.3, seed=11)
    # the physics parameter in the layout of slift_plugin.data: coord mu_<name> on "sample"
    assert da.mu_theta.dims == ("sample",)
    np.testing.assert_allclose(da.mu_theta.values, theta, rtol=1e-6)
    assert da.attrs["theta"] == "per-sample (coord mu_theta)"
    assert "mu_theta" not in ornstein_uhlenbeck(4, 1).coords
    # each sample follows its own rate: standardised residuals are N(0, 1) ...
    mean, var = ou_transition_moments(1.0, 0.5, theta, 0.0, 0.3)
    x = da.values[:, 2, 0].astype(np.float64)
    _check_gaussian(x, mean, var)
    # ... and the rate matters: fast samples (last quarter, theta >= 3.06, exact mean <= 0.22)
    # have relaxed far more than slow ones (first quarter, theta <= 1.19, exact mean >= 0.55)
    assert x[: n // 4].mean() > 0.65 and x[-n // 4 :].mean() < 0.25


def test_ou_sde_module_interface():
    sde = OrnsteinUhlenbeckSDE(torch.tensor([1.0, 2.0]), center=1.0, sigma=0.3)
    y = torch.tensor([[2.0, 3.0], [2.0, 3.0]])
    torch.testing.assert_close(sde.f(0.0, y), torch.tensor([[-1.0, -2.0], [-2.0, -4.0]]))
    torch.testing.assert_close(sde.g(0.0, y), torch.full((2, 2), 0.3))
    assert sde.noise_type == "diagonal" and sde.sde_type == "ito"


# ---------------------------------------------------------------------------- double well


def test_double_well_transition_from_zero_is_bimodal():
    da = double_well(8000, 1, seed=4)  # default coarse step dt = 2, sigma = 0.5
    x = da.values[:, 1, 0]
    frac_neg = np.mean(x < 0)
    assert 0.4 < frac_neg < 0.6
    near_zero = np.mean(np.abs(x) < 0.2)
    near_plus = np.mean(np.abs(x - 1) < 0.2)
    near_minus = np.mean(np.abs(x + 1) < 0.2)
    assert near_zero < 0.7 * near_plus and near_zero < 0.7 * near_minus
    # modes near -1 and +1
    hist, edges = np.histogram(x, bins=np.linspace(-2, 2, 21))
    centres = (edges[1:] + edges[:-1]) / 2
    assert 0.6 < abs(centres[centres < 0][np.argmax(hist[centres < 0])]) < 1.3
    assert 0.6 < centres[centres > 0][np.argmax(hist[centres > 0])] < 1.3


def test_double_well_short_step_is_not_yet_bimodal():
    # Guards the bimodality test above: it can fail (a short step leaves mass near 0).
    x = double_well(4000, 1, 0.5, seed=4).values[:, 1, 0]
    assert np.mean(np.abs(x) < 0.2) > np.mean(np.abs(x - 1) < 0.2)


def test_double_well_x0_shapes():
    x0 = np.linspace(-1, 1, 16)
    a = double_well(16, 2, x0=x0, seed=1)
    b = double_well(16, 2, x0=x0[:, None], seed=1)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_allclose(a.values[:, 0, 0], x0, rtol=1e-6)


# ---------------------------------------------------------------------------- Lorenz-63


def test_lorenz63_reproducible_finite_bounded():
    a = lorenz63(32, 40, seed=5)
    b = lorenz63(32, 40, seed=5)
    c = lorenz63(32, 40, seed=6)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values[:, 1:], c.values[:, 1:])
    assert np.isfinite(a.values).all()
    assert np.abs(a.sel(channel=["x", "y"]).values).max() < 40
    z = a.sel(channel="z").values
    assert z.min() > -5 and z.max() < 70
    # the ensemble spreads: chaos amplifies the noise
    spread = a.values[:, -1].std(axis=0)
    assert spread.max() > 1.0
    np.testing.assert_allclose(a.values[:, 0], np.broadcast_to([13.79, 12.95, 34.90], (32, 3)))


def test_lorenz63_without_noise_is_deterministic_and_per_sample_x0():
    x0 = np.array([[1.0, 1.0, 1.0], [-5.0, -6.0, 20.0]])
    a = lorenz63(2, 10, x0=x0, noise=0.0, seed=0)
    b = lorenz63(2, 10, x0=x0, noise=0.0, seed=99)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_allclose(a.values[:, 0], x0)
    # a shared (3,) x0 also when n_samples == 3
    c = lorenz63(3, 2, x0=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(c.values[:, 0], np.tile([1.0, 2.0, 3.0], (3, 1)))


# ---------------------------------------------------------------------------- Lorenz-96


def _lorenz96_rhs_loop(x: np.ndarray, forcing: float) -> np.ndarray:
    """The textbook drift, one site at a time (independent of the vectorised one)."""
    d = x.size
    return np.array(
        [(x[(i + 1) % d] - x[(i - 2) % d]) * x[(i - 1) % d] - x[i] + forcing for i in range(d)]
    )


def test_lorenz96_drift_is_the_textbook_one():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 4.0, (3, 7))
    forcing = np.array([6.0, 8.0, 10.0])
    got = lorenz96_drift(torch.as_tensor(x), torch.as_tensor(forcing)).numpy()
    want = np.stack([_lorenz96_rhs_loop(x[b], forcing[b]) for b in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the SDE module: the same drift, additive noise, one forcing for all
    sde = Lorenz96SDE(8.0, noise=0.3)
    np.testing.assert_allclose(
        sde.f(None, torch.as_tensor(x)).numpy(),
        np.stack([_lorenz96_rhs_loop(row, 8.0) for row in x]),
        rtol=1e-12,
    )
    assert torch.equal(
        sde.g(None, torch.as_tensor(x)), torch.full((3, 7), 0.3, dtype=torch.float64)
    )


def test_lorenz96_deterministic_trajectories_match_solve_ivp():
    forcing = np.array([6.0, 8.0, 10.0])
    errors = []
    for h in (0.01, 0.005):
        ens = lorenz96(3, 10, 0.1, dim=12, forcing=forcing, dt_internal=h, seed=4)  # t = 0..1
        x0 = ens.values[:, 0].astype(np.float64)  # the float32 start the integration used
        worst = 0.0
        for b in range(3):
            ref = solve_ivp(
                lambda t, x, f=forcing[b]: _lorenz96_rhs_loop(x, f),
                (0.0, 1.0),
                x0[b],
                t_eval=ens["time"].values,
                method="DOP853",
                rtol=1e-12,
                atol=1e-12,
            )
            worst = max(worst, np.abs(ens.values[b].T - ref.y).max() / np.abs(ref.y).max())
        errors.append(worst)
    # RK4: about 1e-3 of the range at h = 0.01 through the violent transient of F = 10
    # (measured 1.1e-3; an Euler step of 0.01 is off by about 1), and fourth order: halving
    # the step divides the error by about 16 (measured 14)
    assert errors[0] < 2e-3 and errors[1] < 2e-4
    assert errors[0] / errors[1] > 8


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_lorenz96_energy_budget_and_climatology(noise):
    # On the attractor E[x_i^2] = F E[x_i] + noise^2 / 2 exactly (the advection conserves
    # energy); F = 8 has mean about 2.3 and standard deviation about 3.6 per site.
    ens = lorenz96(256, 40, 0.5, dim=20, noise=noise, burn_in=10.0, seed=1)
    x = ens.values.astype(np.float64)
    budget = (x**2).mean() - 8.0 * x.mean()
    assert budget == pytest.approx(noise**2 / 2, abs=0.15)
    assert 2.1 < x.mean() < 2.6 and 3.3 < x.std() < 3.9


def test_lorenz96_population_parameters_and_seeds():
    forcing = np.array([7.0, 7.0, 9.0, 9.0])
    a = lorenz96(4, 3, dim=6, forcing=forcing, init_std=0.5, seed=2)
    np.testing.assert_array_equal(a["mu_forcing"].values, forcing)
    assert a.attrs["forcing"] == "per-sample (coord mu_forcing)"
    np.testing.assert_array_equal(
        a.values, lorenz96(4, 3, dim=6, forcing=forcing, init_std=0.5, seed=2).values
    )
    assert not np.allclose(
        a.values, lorenz96(4, 3, dim=6, forcing=forcing, init_std=0.5, seed=3).values
    )
    # without burn-in the start is F + init_std N(0, 1) per sample
    start = lorenz96(2000, 1, dim=6, forcing=np.repeat([7.0, 9.0], 1000), init_std=0.5).values[:, 0]
    np.testing.assert_allclose(start[:1000].mean(), 7.0, atol=0.02)
    np.testing.assert_allclose(start[1000:].mean(), 9.0, atol=0.02)
    np.testing.assert_allclose(start[:1000].std(axis=0), 0.5, rtol=0.08)
    # a burn-in integrates before t0: the output starts where a longer run is at t = 0.2
    late = lorenz96(3, 2, 0.1, dim=6, burn_in=0.2, seed=5)
    early = lorenz96(3, 4, 0.1, dim=6, seed=5)
    np.testing.assert_allclose(late.values, early.values[:, 2:], rtol=1e-6, atol=1e-6)
    assert late.attrs["burn_in"] == pytest.approx(0.2)
    # a given start, shared by every sample
    x0 = np.arange(6.0)
    given = lorenz96(2, 1, dim=6, x0=x0)
    np.testing.assert_array_equal(given.values[:, 0], np.tile(x0, (2, 1)))
    assert "mu_forcing" not in given.coords and given.attrs["forcing"] == 8.0


def test_lorenz96_blow_up_is_reported():
    with pytest.raises(FloatingPointError, match="dt_internal"):
        lorenz96(2, 3, 1.0, dim=6, dt_internal=1.0, x0=np.array([50.0, -50, 30, -20, 10, 0]))


# ---------------------------------------------------------------------------- Allen-Cahn


def test_allen_cahn_reproducible():
    a = allen_cahn(8, 3, seed=2)
    b = allen_cahn(8, 3, seed=2)
    c = allen_cahn(8, 3, seed=3)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values[:, 1:], c.values[:, 1:])


def test_allen_cahn_linear_growth_of_small_fourier_modes():
    # sigma = 0, amplitude 1e-4: u_t = eps u_xx + u, so mode m grows by exp((1 - eps k^2) t).
    n_grid, length, eps, amp = 128, 1.0, 1e-3, 1e-4
    x = (np.arange(n_grid) + 0.5) * length / n_grid
    modes = (2, 8)  # growing (rate 0.84) and decaying (rate -1.53)
    u0 = np.stack([amp * np.sin(2 * np.pi * m * x / length) for m in modes])
    da = allen_cahn(
        2, 4, 0.5, n_grid=n_grid, length=length, eps=eps, sigma=0.0, dt_internal=1e-3, u0=u0
    )
    np.testing.assert_allclose(da.x.values, x)
    u = da.values[:, :, 0, :].astype(np.float64)
    times = da.time.values
    for i, m in enumerate(modes):
        basis = np.sin(2 * np.pi * m * x / length)
        coef = (u[i] @ basis) * 2 / n_grid  # amplitude of the mode at each time
        k = 2 * np.pi * m / length
        exact = amp * np.exp((1 - eps * k**2) * times)
        # first-order IMEX error ~ t h (1 + (eps k^2)^2) / 2 ~ 0.5% at t = 2 for m = 8
        np.testing.assert_allclose(coef, exact, rtol=1e-2)
        # and exactly the discrete IMEX factor (1 + h) / (1 + h eps k^2) per step
        n_internal = np.round(times / 1e-3)
        discrete = amp * ((1 + 1e-3) / (1 + 1e-3 * eps * k**2)) ** n_internal
        np.testing.assert_allclose(coef, discrete, rtol=1e-3)
        # nothing leaks into other modes
        resid = u[i] - coef[:, None] * basis[None, :]
        assert np.abs(resid).max() < 1e-3 * np.abs(coef).max()


def test_allen_cahn_default_regime_is_multimodal():
    da = allen_cahn(256, seed=7)
    u_final = da.values[:, -1, 0, :]
    point = u_final[:, n_grid_mid(da)]
    assert 0.3 < np.mean(point > 0) < 0.7  # both phases, comparable probability
    assert np.mean(np.abs(point) > 0.7) > 0.65  # near +1 or -1, rarely in between
    assert np.mean(np.abs(point) < 0.3) < 0.15
    assert abs(point.mean()) < 0.25 and point.std() > 0.7
    # the ensemble-mean field is far from every sample
    mean_field = u_final.mean(axis=0)
    rel = np.linalg.norm(u_final - mean_field, axis=1) / np.linalg.norm(u_final, axis=1)
    assert rel.min() > 0.8
    # random interface positions: many samples have interfaces, at different places
    has_interface = (u_final.max(axis=1) > 0.5) & (u_final.min(axis=1) < -0.5)
    assert has_interface.mean() > 0.5
    # after nucleation, successive coarse states are close
    u = da.values[:, :, 0, :]
    step = np.linalg.norm(u[:, -1] - u[:, -2], axis=1) / np.linalg.norm(u[:, -2], axis=1)
    assert np.median(step) < 0.2


def n_grid_mid(da):
    return da.sizes["x"] // 2


def test_allen_cahn_initial_conditions():
    ics = allen_cahn_initial_conditions(64, 128, amplitude=0.05, n_modes=4, seed=1)
    assert ics.shape == (64, 1, 128) and ics.dtype == np.float32
    np.testing.assert_array_equal(
        ics, allen_cahn_initial_conditions(64, 128, amplitude=0.05, seed=1)
    )
    assert not np.allclose(ics, allen_cahn_initial_conditions(64, 128, amplitude=0.05, seed=2))
    rms = np.sqrt(np.mean(ics.astype(np.float64) ** 2))
    assert 0.035 < rms < 0.065
    # smooth: only Fourier modes 0..4
    spec = np.abs(np.fft.rfft(ics[:, 0], axis=-1))
    assert spec[:, 5:].max() < 1e-5 * spec.max()
    # usable as per-sample u0, including repeated per noise realisation
    da = allen_cahn(4 * 3, 2, u0=np.repeat(ics[:4], 3, axis=0), seed=0)
    np.testing.assert_allclose(da.values[:, 0], np.repeat(ics[:4], 3, axis=0))


# ---------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("make", "channels", "grid", "keys"),
    [
        (lambda: ornstein_uhlenbeck(5, 2, seed=1), ["x"], [], ["theta", "center", "sigma"]),
        (lambda: double_well(5, 2, seed=1), ["x"], [], ["sigma"]),
        (lambda: lorenz63(5, 2, seed=1), ["x", "y", "z"], [], ["s", "r", "b", "noise"]),
        (
            lambda: allen_cahn(5, 2, seed=1),
            ["u"],
            ["x"],
            ["eps", "sigma", "n_grid", "length", "u0"],
        ),
        (
            lambda: lorenz96(5, 2, dim=4, seed=1),
            ["x0", "x1", "x2", "x3"],
            [],
            ["forcing", "noise", "dim", "x0", "init_std", "burn_in", "scheme"],
        ),
    ],
)
def test_layout(make, channels, grid, keys, tmp_path):
    da = make()
    assert da.name == "state"
    assert da.dims == ("sample", "time", "channel", *grid)
    assert da.dtype == np.float32
    assert list(da.channel.values) == channels
    dt = da.attrs["dt"]
    np.testing.assert_allclose(da.time.values, da.attrs["t0"] + dt * np.arange(3))
    for key in ["system", "dt", "dt_internal", "n_steps", "seed", "t0", "n_samples", *keys]:
        assert key in da.attrs, key
    if da.attrs["system"] not in ("allen_cahn", "lorenz96"):  # those two are not torchsde's
        assert da.attrs["method"] == "euler"
    # attrs are netCDF-safe
    path = tmp_path / "state.nc"
    da.to_netcdf(path, engine="h5netcdf")


def test_time_offset():
    da = double_well(3, 2, 0.5, t0=10.0, dt_internal=0.05)
    np.testing.assert_allclose(da.time.values, [10.0, 10.5, 11.0])


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ornstein_uhlenbeck(0), "n_samples"),
        (lambda: ornstein_uhlenbeck(4, n_steps=-1), "n_steps"),
        (lambda: ornstein_uhlenbeck(4, dt=0.1, dt_internal=0.2), "dt_internal must be <= dt"),
        (lambda: ornstein_uhlenbeck(4, dt=0.1, dt_internal=0.03), "integer"),
        (lambda: ornstein_uhlenbeck(4, dt=-0.1), "dt must be > 0"),
        (lambda: ornstein_uhlenbeck(4, sigma=-1.0), "sigma must be >= 0"),
        (lambda: ornstein_uhlenbeck(4, theta=0.0), "theta must be > 0"),
        (lambda: ornstein_uhlenbeck(4, theta=np.ones(3)), "length n_samples=4"),
        (lambda: ornstein_uhlenbeck(4, theta=-np.ones(4)), "theta must be finite and > 0"),
        (lambda: ornstein_uhlenbeck(4, x0=np.ones((4, 2))), "x0 must be"),
        (lambda: ornstein_uhlenbeck(4, x0=float("nan")), "x0 must be finite"),
        (lambda: ornstein_uhlenbeck(4, seed=-1), "seed"),
        (lambda: ornstein_uhlenbeck(4, seed=1.5), "seed"),
        (lambda: ornstein_uhlenbeck(4, method="rk4"), "method"),
        (lambda: ornstein_uhlenbeck(4, dim=0), "dim"),
        (lambda: double_well(4, x0=np.array([0.0, np.inf, 0.0, 0.0])), "NaN or Inf"),
        (lambda: double_well(4, x0=np.zeros(5)), "x0 must be"),
        (lambda: lorenz63(4, x0=1.0), "x0 must be an array"),
        (lambda: lorenz63(4, x0=np.zeros(2)), "x0 must be"),
        (lambda: lorenz63(4, noise=-0.1), "noise"),
        (lambda: allen_cahn(4, eps=-1e-3), "eps must be >= 0"),
        (lambda: allen_cahn(4, n_grid=0), "n_grid"),
        (lambda: allen_cahn(4, u0=np.zeros(64)), "u0 must be None or have shape"),
        (lambda: allen_cahn(4, u0=np.zeros((3, 128))), "u0 must be None or have shape"),
        (lambda: allen_cahn(4, dt=0.4, dt_internal=0.3), "integer"),
        (lambda: allen_cahn(4, sigma=float("inf")), "sigma must be finite"),
        (lambda: allen_cahn_initial_conditions(0), "n must be a positive int"),
        (lambda: allen_cahn_initial_conditions(2, amplitude=-1.0), "amplitude"),
        (lambda: lorenz96(4, dim=3), "dim must be >= 4"),
        (lambda: lorenz96(4, forcing=np.ones(3)), "length n_samples=4"),
        (lambda: lorenz96(4, forcing=np.array([1.0, np.nan, 1.0, 1.0])), "forcing must be finite"),
        (lambda: lorenz96(4, forcing="8"), "forcing must be a number or a 1-D array"),
        (lambda: lorenz96(4, noise=-0.1), "noise must be >= 0"),
        (lambda: lorenz96(4, init_std=-1.0), "init_std must be >= 0"),
        (lambda: lorenz96(4, burn_in=0.015), "whole number of internal steps"),
        (lambda: lorenz96(4, burn_in=-0.1), "burn_in must be >= 0"),
        (lambda: lorenz96(4, x0=np.zeros(3)), "x0 must be"),
        (lambda: lorenz96(4, x0=1.0), "x0 must be None or an array"),
        (lambda: lorenz96(4, dt=0.05, dt_internal=0.03), "integer"),
    ],
)
def test_bad_parameters_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_allen_cahn_blow_up_is_reported():
    with pytest.raises(FloatingPointError, match="dt_internal"):
        allen_cahn(2, 5, 2.0, dt_internal=2.0, u0=np.full(128, 3.0), sigma=0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y0": torch.zeros(3)}, "shape \\(batch, d\\)"),
        ({"y0": torch.full((2, 1), float("nan"))}, "NaN or Inf"),
        ({"ts": torch.tensor([0.0])}, "at least 2"),
        ({"ts": torch.zeros(2, 2)}, "1-D"),
        ({"ts": torch.tensor([0.0, 0.2, 0.1])}, "strictly increasing"),
        ({"dt": 0.0}, "dt must be > 0"),
        ({"dt": 0.2}, "smallest gap"),
        ({"seed": -3}, "seed"),
    ],
)
def test_integrate_sde_validates(kwargs, match):
    args = {
        "y0": torch.zeros(2, 1),
        "ts": torch.tensor([0.0, 0.1, 0.2]),
        "dt": 0.01,
        "seed": 0,
    }
    args.update(kwargs)
    sde = OrnsteinUhlenbeckSDE()
    with pytest.raises(ValueError, match=match):
        integrate_sde(sde, args.pop("y0"), args.pop("ts"), **args)


def test_integrate_sde_shapes_and_seed():
    sde = OrnsteinUhlenbeckSDE(sigma=0.5)
    y0 = torch.ones(7, 3)
    ts = torch.linspace(0, 1, 5)
    a = integrate_sde(sde, y0, ts, dt=0.05, seed=1)
    b = integrate_sde(sde, y0, ts, dt=0.05, seed=1)
    c = integrate_sde(sde, y0, ts, dt=0.05, seed=2)
    assert a.shape == (5, 7, 3) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a[1:], c[1:])
