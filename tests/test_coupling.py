"""Coupled labels for Stochastic Lifting, against an exact, skewed transition law.

Geometric Brownian motion has the log-normal transition
``X_{t+dt} | X_t = x  =  x exp((a - b^2/2) dt + b sqrt(dt) Z)``, so the exact conditional
quantile label of a pair is the ``Z`` that generated it. The truths here are that law
(scipy's log-normal), that quantile, and the teacher's own samples.
"""

import math

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
