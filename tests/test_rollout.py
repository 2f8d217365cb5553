"""rollout(): determinism, chunking, one backbone call per step, layout, bad input."""

import numpy as np
import pytest
import torch
import xarray as xr

from slift_plugin import MLP, MeanRegression, StochasticLifting, rollout
from slift_plugin.rollout import SEED_BLOCK


def make_stepper(history=1, n_params=0, label_dim=3, d=2):
    torch.manual_seed(0)  # weights only; the library itself never seeds globally
    backbone = MLP(history * d, d, label_dim=label_dim, n_cond=n_params, hidden=16, depth=2)
    cls = StochasticLifting if label_dim else MeanRegression
    return cls(backbone, (d,), history=history, n_params=n_params, dt=0.1)


def test_same_seed_same_ensemble_and_layout():
    sl = make_stepper()
    a = rollout(sl, torch.zeros(2), n_steps=4, n_samples=10, seed=5, t0=1.0)
    b = rollout(sl, torch.zeros(2), n_steps=4, n_samples=10, seed=5, t0=1.0)
    c = rollout(sl, torch.zeros(2), n_steps=4, n_samples=10, seed=6, t0=1.0)
    assert isinstance(a, xr.DataArray)
    assert a.dims == ("sample", "time", "channel") and a.shape == (10, 5, 2)
    np.testing.assert_allclose(a["time"].values, 1.0 + 0.1 * np.arange(5))
    xr.testing.assert_identical(a, b)
    assert not np.allclose(a.values[:, 1:], c.values[:, 1:])
    # samples within one ensemble differ from each other: fresh labels per sample
    assert np.unique(a.values[:, 1, 0]).size == 10


@pytest.mark.parametrize("chunk_size", [1, 7, SEED_BLOCK - 1, SEED_BLOCK + 3, 10_000])
def test_chunking_does_not_change_the_ensemble(chunk_size):
    sl = make_stepper()
    n = SEED_BLOCK + 40  # spans two seed blocks
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    ref = rollout(sl, x0, n_steps=3, seed=9, chunk_size=n)
    got = rollout(sl, x0, n_steps=3, seed=9, chunk_size=chunk_size)
    # BLAS kernels differ with the batch size, so allow float32 round-off; a different
    # noise draw would differ by O(1).
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-5)


def test_exactly_one_backbone_call_per_step():
    sl = make_stepper()
    calls = []
    sl.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    rollout(sl, torch.zeros(2), n_steps=6, n_samples=30, chunk_size=12)
    # 3 chunks (12, 12, 6) x 6 steps, one call each, each on the whole chunk
    assert calls == [12] * 6 + [12] * 6 + [6] * 6


def test_history_window_and_initial_state():
    sl = make_stepper(history=3)
    x0 = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(2))
    ens = rollout(sl, x0, n_steps=2, seed=0)
    np.testing.assert_allclose(ens.isel(time=0).values, x0[:, -1].numpy())
    with pytest.raises(ValueError, match="history=3"):
        rollout(sl, torch.zeros(4, 2), n_steps=2)


def test_mu_broadcast_and_coords():
    sl = make_stepper(n_params=1)
    ens = rollout(sl, torch.zeros(2), 2, n_samples=3, mu=torch.tensor([0.5]), param_names=["theta"])
    assert ens["mu_theta"].dims == ("sample",) and ens["mu_theta"].values.tolist() == [0.5] * 3
    with pytest.raises(ValueError, match="mu"):
        rollout(sl, torch.zeros(2), 2, n_samples=3)


def test_deterministic_baseline_collapses():
    mse = make_stepper(label_dim=0)
    ens = rollout(mse, torch.ones(2), n_steps=3, n_samples=8)
    assert np.ptp(ens.values, axis=0).max() == 0.0


@pytest.mark.parametrize(
    "x0, n, match",
    [
        (torch.zeros(3), 4, "shape"),  # wrong state size
        (torch.zeros(5, 2, 2, 2), None, "x0 must have shape"),  # wrong rank
        (torch.tensor([0.0, float("nan")]), 4, "NaN"),
        (torch.zeros(3, 2), 4, "3 samples but n_samples=4"),
    ],
)
def test_bad_initial_state(x0, n, match):
    with pytest.raises(ValueError, match=match):
        rollout(make_stepper(), x0, n_steps=2, n_samples=n)


def test_bad_step_counts():
    with pytest.raises(ValueError, match="n_steps"):
        rollout(make_stepper(), torch.zeros(2), n_steps=0, n_samples=2)
    with pytest.raises(ValueError, match="chunk_size"):
        rollout(make_stepper(), torch.zeros(2), n_steps=1, n_samples=2, chunk_size=0)
