"""Stochastic Lifting against closed-form and reference transition laws.

These train small MLP steppers (tens of seconds on one CPU thread) and compare sampled
one-step laws with the truth: the exact Ornstein-Uhlenbeck transition, and the bimodal
double-well transition estimated from a large reference ensemble.
"""

import math

import numpy as np
import pytest
import torch

from slift_plugin import MLP, MeanRegression, StochasticLifting, TransitionDataset, fit, rollout
from slift_plugin.systems import double_well, ornstein_uhlenbeck, ou_transition_moments

N_SAMPLE = 20_000


def one_step(stepper, x, mu=None, seed=123):
    ens = rollout(stepper, torch.tensor([x]), n_steps=1, n_samples=N_SAMPLE, mu=mu, seed=seed)
    return ens.isel(time=1, channel=0).values


def test_ou_transition_law_with_parameter_conditioning():
    """SL conditioned on theta reproduces the exact OU transition mean and std.

    Tolerance: mean within 0.25 transition std, std within 15%, at two values of theta.
    The 20k-sample estimate is accurate to ~1%; the slack is the sampling error of the
    ~100 training transitions near x = 0.6 for each theta (~0.1 std), and a measured
    systematic pull of the two conditional stds towards each other (theta=0.5: -10%,
    theta=2: +3%, over 3 seeds). The calibration of the std depends on label_dim and
    width (label_dim=16, hidden=128 gives +16..+32%), which this test pins.
    """
    n_traj, dt, sigma = 500, 0.25, 0.5
    theta = np.where(np.arange(n_traj) % 2 == 0, 0.5, 2.0)
    x0 = np.random.default_rng(0).uniform(-1.5, 1.5, n_traj)  # cover the state space
    data = ornstein_uhlenbeck(
        n_samples=n_traj, n_steps=4, dt=dt, x0=x0, theta=theta, sigma=sigma, seed=0
    )
    torch.manual_seed(0)
    sl = StochasticLifting(
        MLP(1, 1, label_dim=32, n_cond=1, hidden=256, depth=3), (1,), n_params=1, dt=dt
    )
    ds = TransitionDataset.from_xarray(data, labels=sl.fixed_labels(seed=1))
    assert ds.n_params == 1 and len(ds) == n_traj * 4
    res = fit(sl, ds, epochs=150, batch_size=128, lr=3e-3, weight_decay=0.0, progress=False)
    # SL relies on fitting the training set closely (labels make it interpolable)
    assert res.final_loss < 0.05, res.final_loss
    for th in (0.5, 2.0):
        mean, var = ou_transition_moments(0.6, dt, th, 0.0, sigma)
        y = one_step(sl, 0.6, mu=torch.tensor([th]))
        assert abs(y.mean() - mean) < 0.25 * math.sqrt(var), (th, y.mean(), mean)
        assert abs(y.std() / math.sqrt(var) - 1) < 0.15, (th, y.std(), math.sqrt(var))


def fit_double_well(train, label_dim, epochs):
    torch.manual_seed(0)
    dt = float(train["time"][1] - train["time"][0])
    net = MLP(1, 1, label_dim=label_dim, hidden=128, depth=3)
    stepper = (StochasticLifting if label_dim else MeanRegression)(net, (1,), dt=dt)
    labels = stepper.fixed_labels(seed=2) if label_dim else None
    ds = TransitionDataset.from_xarray(train, labels=labels)
    fit(stepper, ds, epochs=epochs, batch_size=64, lr=3e-3, weight_decay=0.0, progress=False)
    return stepper


def law_at(stepper, n_steps):
    ens = rollout(stepper, torch.tensor([0.0]), n_steps=n_steps, n_samples=N_SAMPLE, seed=5)
    return ens.isel(time=-1, channel=0).values


def bimodality(y):
    """(fraction in the right well, density near the wells / density near 0)."""
    near_wells = np.mean(np.abs(np.abs(y) - 1.0) < 0.25) / 2
    near_zero = np.mean(np.abs(y) < 0.25)
    return np.mean(y > 0), near_wells / max(near_zero, 1e-12)


@pytest.fixture(scope="module")
def reference_law():
    """X_2 from X_0 = 0 (sigma=0.5): two wells at +-1, equal weights, a deep valley at 0."""
    ref = double_well(n_samples=N_SAMPLE, n_steps=1, dt=2.0, x0=0.0, seed=1)
    y = ref.isel(time=1, channel=0).values
    p, peak = bimodality(y)
    assert 0.45 < p < 0.55 and peak > 1.8  # the reference law really is bimodal
    return y


def test_double_well_bimodal_law_at_fine_output_step(reference_law):
    """Rolled out over 8 steps of 0.25, SL reproduces the bimodal law of X_2; MSE cannot.

    Tolerances: right-well weight within 0.1, peak/valley density ratio > 1.2 (reference
    ~2.0; SL measures ~1.5), std within 15%.
    """
    train = double_well(n_samples=200, n_steps=8, dt=0.25, x0=0.0, seed=0)
    p_ref, _ = bimodality(reference_law)
    for label_dim, should_pass in ((16, True), (0, False)):
        y = law_at(fit_double_well(train, label_dim, epochs=300), n_steps=8)
        p, peak = bimodality(y)
        checks = (
            abs(p - p_ref) < 0.1,
            peak > 1.2,
            abs(y.std() / reference_law.std() - 1) < 0.15,
        )
        assert all(checks) == should_pass, (label_dim, p, peak, y.std(), reference_law.std())
        if not should_pass:  # the mean regression sends every sample to the same point
            assert np.ptp(y) == 0.0


@pytest.mark.xfail(
    strict=True,
    reason="known limit: at the coarse step dt=2 the one-step law is bimodal, and SL fits the "
    "training set (loss ~1e-5) but a fresh high-dimensional label is nearly orthogonal to "
    "every training label, so the fitted map acts on it almost linearly and fills the "
    "valley (peak/valley ratio ~0.4-0.6 measured for label_dim 4-16 vs 2.0 reference)",
)
def test_double_well_bimodal_law_in_one_coarse_step(reference_law):
    train = double_well(n_samples=300, n_steps=3, dt=2.0, x0=0.0, seed=0)
    y = law_at(fit_double_well(train, 16, epochs=200), n_steps=1)
    p, peak = bimodality(y)
    assert abs(p - 0.5) < 0.1 and peak > 1.2, (p, peak)


def ar2_trajectories(n_traj=300, n_times=10, seed=0):
    """x_{k+1} = 1.6 x_k - 0.8 x_{k-1} + 0.1 eps: Markov only in (x_{k-1}, x_k)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_traj, n_times, 1), dtype=np.float32)
    x[:, :2, 0] = rng.uniform(-1, 1, (n_traj, 2))
    for k in range(1, n_times - 1):
        x[:, k + 1] = 1.6 * x[:, k] - 0.8 * x[:, k - 1] + 0.1 * rng.standard_normal((n_traj, 1))
    return torch.from_numpy(x)


def test_history_window_captures_non_markovian_dynamics():
    """With h=2 SL recovers the AR(2) law (mean 0.88, std 0.1 from (0.5, 0.8)); h=1 cannot."""
    states = ar2_trajectories()
    stds = {}
    for history in (2, 1):
        torch.manual_seed(0)
        sl = StochasticLifting(MLP(history, 1, label_dim=32, hidden=256), (1,), history=history)
        ds = TransitionDataset(states, history=history, labels=sl.fixed_labels(seed=3))
        fit(sl, ds, epochs=100, batch_size=128, lr=3e-3, weight_decay=0.0, progress=False)
        window = torch.tensor([[[0.5], [0.8]]])[:, -history:]  # (1, history, 1)
        y = rollout(sl, window, 1, N_SAMPLE, seed=4).isel(time=1, channel=0).values
        stds[history] = y.std()
        if history == 2:
            assert abs(y.mean() - 0.88) < 0.25 * 0.1, y.mean()
            assert abs(y.std() / 0.1 - 1) < 0.2, y.std()
    # given x_k alone, x_{k-1} is unknown: the one-state law is much wider
    assert stds[1] > 1.5 * stds[2], stds
