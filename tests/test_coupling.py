"""Coupled labels for Stochastic Lifting, against an exact, skewed transition law.

Geometric Brownian motion has the log-normal transition
``X_{t+dt} | X_t = x  =  x exp((a - b^2/2) dt + b sqrt(dt) Z)``, so the exact conditional
quantile label of a pair is the ``Z`` that generated it. The truths here are that law
(scipy's log-normal), that quantile, and the teacher's own samples.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from slift_plugin import (
    MLP,
    FlowMatching,
    StochasticLifting,
    StoredLabels,
    TransitionDataset,
    fit,
    rollout,
    teacher_labels,
)

A, B, DT = 0.2, 0.6, 0.5
N_PAIRS, N_SAMPLES = 2000, 4000
KS_CRITICAL = 1.358 / math.sqrt(N_SAMPLES)  # 5% two-sided, large-sample
FIT = dict(batch_size=128, lr=3e-3, progress=False)


def gbm_pairs(n=N_PAIRS, seed=0):
    """States ``(n, 2 times, 1)`` from x ~ U(0.5, 2), and the normal Z behind each y."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 1.5 * torch.rand(n, generator=g)
    z = torch.randn(n, generator=g)
    y = x * torch.exp((A - B**2 / 2) * DT + B * math.sqrt(DT) * z)
    return torch.stack([x, y], 1)[:, :, None], z


def exact_law(x0=1.0):
    return stats.lognorm(s=B * math.sqrt(DT), scale=x0 * math.exp((A - B**2 / 2) * DT))


def one_step_samples(stepper, x0=1.0, seed=3):
    ens = rollout(stepper, torch.tensor([x0]), n_steps=1, n_samples=N_SAMPLES, seed=seed)
    return ens.isel(time=1, channel=0).values


def trained_lifting(labels, label_dim, states, epochs=100):
    torch.manual_seed(0)
    sl = StochasticLifting(MLP(1, 1, label_dim=label_dim, hidden=64), (1,), dt=DT)
    data = TransitionDataset(states, labels=labels or sl.fixed_labels(1))
    fit(sl, data, epochs=epochs, **FIT)
    return sl


@pytest.fixture(scope="module")
def teacher_and_data():
    states, z = gbm_pairs()
    torch.manual_seed(0)
    teacher = FlowMatching(MLP(2, 1, label_dim=0, n_cond=1, hidden=64), (1,), dt=DT, seed=1)
    data = TransitionDataset(states)
    fit(teacher, data, epochs=60, **FIT)
    teacher.n_euler = 100
    return teacher, data, states, z


def test_exact_quantile_labels_give_the_exact_law_and_independent_labels_do_not():
    states, z = gbm_pairs()
    law = exact_law()
    coupled = trained_lifting(StoredLabels(z[:, None]), 1, states)
    independent = trained_lifting(None, 32, states)
    ks_coupled = stats.kstest(one_step_samples(coupled), law.cdf)
    ks_independent = stats.kstest(one_step_samples(independent), law.cdf)
    assert ks_coupled.pvalue > 0.01, ks_coupled  # measured KS 0.012
    assert ks_independent.statistic > 3 * KS_CRITICAL, ks_independent  # measured 0.11


def test_teacher_labels_are_the_exact_quantiles_up_to_the_teachers_error(teacher_and_data):
    teacher, data, _, z = teacher_and_data
    labels = teacher_labels(teacher, data)
    assert labels.shape == (1,) and len(labels) == len(data)
    xi = labels.values[:, 0]
    assert stats.kstest(xi.numpy(), "norm").statistic < 0.04  # measured 0.022
    assert torch.corrcoef(torch.stack([xi, z]))[0, 1] > 0.99  # measured 0.996


def test_teacher_coupled_lifting_reaches_the_law_and_reproduces_the_teacher(teacher_and_data):
    teacher, data, states, _ = teacher_and_data
    sl = trained_lifting(teacher_labels(teacher, data), 1, states)
    ks = stats.kstest(one_step_samples(sl), exact_law().cdf).statistic
    independent = trained_lifting(None, 32, states)
    assert ks < 1.75 * KS_CRITICAL, ks  # measured 0.023 (critical value 0.021)
    assert ks < stats.kstest(one_step_samples(independent), exact_law().cdf).statistic / 3
    # the same noise in gives the teacher's sample out: SL distils the teacher's flow map
    xi = torch.randn(500, 1, generator=torch.Generator().manual_seed(9))
    x = 0.5 + 1.5 * torch.rand(500, 1, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours, theirs = sl.step(x, xi), teacher.step(x, xi)
    rms = (ours - theirs).pow(2).mean().sqrt()
    assert rms < 0.05 * theirs.std(), (rms, theirs.std())  # measured 3%
    shuffled = teacher.step(x, xi.flip(0))  # control: a different noise is far off
    assert (ours - shuffled).pow(2).mean().sqrt() > 10 * rms


def test_teacher_labels_are_fixed_and_reproducible(teacher_and_data):
    teacher, data, _, _ = teacher_and_data
    first = teacher_labels(teacher, data, n_steps=10)
    again = teacher_labels(teacher, data, n_steps=10)
    assert torch.equal(first.values, again.values)
    rebatched = teacher_labels(teacher, data, n_steps=10, batch_size=7)
    torch.testing.assert_close(rebatched.values, first.values, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first.values, teacher_labels(teacher, data, n_steps=3).values)
    # the dataset hands out label j for transition j in every epoch and any order
    labelled = TransitionDataset(data.states, labels=first)
    index = torch.tensor([5, 0, 1999, 5])
    assert torch.equal(labelled.get_batch(index)["label"], first.values[index])


def test_label_tables_refuse_what_would_pair_labels_and_data_wrongly(teacher_and_data):
    teacher, data, states, _ = teacher_and_data
    with pytest.raises(ValueError, match="holds 5 labels but the data has 2000 transitions"):
        TransitionDataset(states, labels=StoredLabels(torch.zeros(5, 1)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        StoredLabels(torch.tensor([[0.0], [math.nan]]))
    with pytest.raises(ValueError, match=r"\(N, \*shape\)"):
        StoredLabels(torch.zeros(3))
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        StoredLabels(torch.zeros(2, 1))(torch.tensor([2]))
    untrained = FlowMatching(MLP(2, 1, label_dim=0, n_cond=1, hidden=8), (1,))
    with pytest.raises(ValueError, match="not normalised"):
        teacher_labels(untrained, data)
    with pytest.raises(TypeError, match="FlowMatching"):
        teacher_labels(trained_lifting(None, 2, states, epochs=1), data)


# -- calibration: the Euler inversion's contraction, on an exact Gaussian flow ----------------

GRID, N_FIELDS = 32, 400


class ExactGaussianVelocity(torch.nn.Module):
    """The exact straight-path velocity from white noise to a stationary Gaussian field
    whose Fourier mode k has standard deviation ``spread[k]`` (modes independent):
    ``v_k(z, s) = a_k(s) z_k``, ``a = (s sigma^2 - (1 - s)) / ((1 - s)^2 + s^2 sigma^2)``."""

    window_channels, n_cond, label_dim = 2, 1, 0

    def __init__(self, spread):
        super().__init__()
        self.spread = spread

    def forward(self, inputs, label, cond):
        z, s = inputs[:, -1:], cond[:, -1:, None].double()
        var = self.spread.pow(2)
        a = (s * var - (1 - s)) / ((1 - s) ** 2 + s**2 * var)
        modes = torch.fft.rfft(z.double(), dim=-1, norm="ortho") * a
        return torch.fft.irfft(modes, n=z.shape[-1], dim=-1, norm="ortho").to(z.dtype)


def euler_contraction(sigma, n_steps):
    """The label spread that n backward Euler steps (v at the upper end) give for a target
    of spread sigma (exact inversion: 1): sigma times the per-step factors, in numpy."""
    s = np.linspace(0.0, 1.0, n_steps + 1)[1:]
    a = (s * sigma**2 - (1 - s)) / ((1 - s) ** 2 + s**2 * sigma**2)
    return sigma * np.prod(1 - a / n_steps)


@pytest.fixture(scope="module")
def gaussian_field_flow():
    k = torch.arange(GRID // 2 + 1, dtype=torch.float64)
    spread = 0.8 / (1 + k / 2)  # 0.8 down to 0.089: fine modes are narrow
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(N_FIELDS, 1, GRID, generator=g, dtype=torch.float64)
    increment = torch.fft.irfft(
        torch.fft.rfft(noise, dim=-1, norm="ortho") * spread, n=GRID, dim=-1, norm="ortho"
    )
    x = torch.randn(N_FIELDS, 1, GRID, generator=g, dtype=torch.float64)
    states = torch.stack([x, x + increment], 1).float()
    teacher = FlowMatching(ExactGaussianVelocity(spread), (1, GRID), dt=DT)
    teacher.set_normalization({"state_mean": [0.0], "state_std": [1.0], "delta_std": [1.0]})
    return teacher, TransitionDataset(states), noise.float(), spread.numpy()


def mode_power(labels):
    return torch.fft.rfft(labels.double(), dim=-1, norm="ortho").abs().pow(2).mean((0, 1))


def test_euler_inversion_contracts_narrow_modes_and_fourier_calibration_undoes_it(
    gaussian_field_flow,
):
    teacher, data, noise, spread = gaussian_field_flow
    raw = teacher_labels(teacher, data, n_steps=20).values
    # the contraction is the closed-form Euler product, mode by mode (0.94 .. 0.77)
    expected = np.array([euler_contraction(s, 20) for s in spread])
    np.testing.assert_allclose(
        mode_power(raw).sqrt().numpy(), expected * mode_power(noise).sqrt().numpy(), rtol=1e-3
    )
    assert expected.max() < 0.95 and expected.min() < 0.8
    # calibrated labels are the noise that made the data, up to the sample's own power error
    calibrated = teacher_labels(teacher, data, n_steps=20, calibrate="fourier").values
    torch.testing.assert_close(
        mode_power(calibrated), torch.ones(GRID // 2 + 1, dtype=torch.float64)
    )
    assert (calibrated - noise).pow(2).mean().sqrt() < 0.06
    assert (raw - noise).pow(2).mean().sqrt() > 0.1
    # per coordinate the calibration cannot tell fine modes from coarse ones
    per_coordinate = teacher_labels(teacher, data, n_steps=20, calibrate="coordinates").values
    torch.testing.assert_close(
        per_coordinate.pow(2).mean(0), torch.ones(1, GRID), rtol=1e-5, atol=1e-5
    )
    power = mode_power(per_coordinate)
    assert power[-4:].mean() < 0.9 < 1.05 < power[:4].mean(), power


def test_calibration_refuses_what_it_cannot_rescale(teacher_and_data, gaussian_field_flow):
    teacher, data, _, _ = teacher_and_data
    with pytest.raises(ValueError, match="calibrate must be None or one of"):
        teacher_labels(teacher, data, n_steps=2, calibrate="spectral")
    with pytest.raises(ValueError, match=r"needs states on a grid .*got state shape \(1,\)"):
        teacher_labels(teacher, data, n_steps=2, calibrate="fourier")
    vector = teacher_labels(teacher, data, n_steps=10, calibrate="coordinates").values
    raw = teacher_labels(teacher, data, n_steps=10).values
    torch.testing.assert_close(vector.pow(2).mean(), torch.tensor(1.0))
    torch.testing.assert_close(vector / raw, (vector / raw)[:1].expand_as(raw))
    field_teacher, _, _, _ = gaussian_field_flow
    flat = TransitionDataset(torch.zeros(6, 2, 1, GRID))
    with pytest.raises(ValueError, match="zero power"):
        teacher_labels(field_teacher, flat, n_steps=2, calibrate="fourier")
