"""Tests for slift_plugin.metrics: energy distance, sliced W2, moments, evaluate()."""

import dcor
import numpy as np
import ot
import pytest
import scipy.stats
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from slift_plugin.metrics import (
    energy_distance,
    evaluate,
    moments,
    random_projections,
    sliced_wasserstein2,
)

torch.set_num_threads(1)


def _randn(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# --------------------------------------------------------------------------------------------
# energy_distance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 3, 12])
def test_energy_distance_matches_dcor_unequal_sizes(dim):
    x = _randn(173, dim, seed=1) * 2.0 + 5.0
    y = _randn(121, dim, seed=2) * 1.5 + 5.3
    ours = float(energy_distance(x, y))
    ref = dcor.energy_distance(x.numpy(), y.numpy())
    assert ours == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert ours > 0


@pytest.mark.parametrize("dim", [2, 40])
def test_energy_distance_matches_dcor_over_many_cpu_tiles(dim):
    # 700 x 650 pairs: the CPU forms each block in row tiles of about 65k distances, with
    # the exact zero diagonal of the symmetric blocks restored tile by tile
    x = _randn(700, dim, seed=40) * 2.0 + 5.0
    y = _randn(650, dim, seed=41) + 5.2
    ours = float(energy_distance(x, y))
    assert ours == pytest.approx(dcor.energy_distance(x.numpy(), y.numpy()), rel=1e-9)
    assert abs(float(energy_distance(x, x))) < 1e-9 * float(torch.cdist(x, x).mean())


def test_energy_distance_is_square_of_scipy_in_1d():
    x = _randn(200, seed=3)
    y = _randn(157, seed=4) * 1.3 + 0.2
    ref = scipy.stats.energy_distance(x.numpy(), y.numpy()) ** 2
    assert float(energy_distance(x, y)) == pytest.approx(ref, rel=1e-10)
    # (n, 1) and (n,) are the same samples
    assert float(energy_distance(x[:, None], y[:, None])) == pytest.approx(ref, rel=1e-10)


def test_energy_distance_flattens_field_states():
    x = _randn(40, 2, 3, 4, seed=5)
    y = _randn(31, 2, 3, 4, seed=6) + 0.1
    flat = float(energy_distance(x.reshape(40, -1), y.reshape(31, -1)))
    assert float(energy_distance(x, y)) == pytest.approx(flat, rel=1e-12)
    assert flat == pytest.approx(
        dcor.energy_distance(x.reshape(40, -1).numpy(), y.reshape(31, -1).numpy()), rel=1e-10
    )


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_energy_distance_blocking_matches_unblocked(block_size):
    x = _randn(150, 5, seed=7)
    y = _randn(97, 5, seed=8) + 0.4
    unblocked = float(energy_distance(x, y, block_size=10_000))
    blocked = float(energy_distance(x, y, block_size=block_size))
    assert blocked == pytest.approx(unblocked, rel=1e-11)


def test_energy_distance_float32_input_computed_in_float64():
    x = _randn(80, 4, seed=9)
    y = _randn(60, 4, seed=10) + 0.3
    out = energy_distance(x.float(), y.float())
    assert out.dtype == torch.float64 and out.ndim == 0
    ref = dcor.energy_distance(x.float().double().numpy(), y.float().double().numpy())
    assert float(out) == pytest.approx(ref, rel=1e-10)


def test_energy_distance_zero_for_identical_sets_positive_for_shift():
    x = _randn(300, 6, seed=11) * 3.0 + 50.0
    assert abs(float(energy_distance(x, x))) < 1e-12
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    assert abs(float(energy_distance(x, x[perm]))) < 1e-8
    shifted = x + 1.0
    assert float(energy_distance(x, shifted)) > 0.1
    # Large D (matmul formulation): zero up to ~1e-8 of the data scale.
    big = _randn(200, 300, seed=12) * 3.0 + 50.0
    scale = float(torch.cdist(big, big).mean())
    assert abs(float(energy_distance(big, big[perm[perm < 200]]))) < 1e-8 * scale
    assert float(energy_distance(big, big + 0.1)) > 1e-4 * scale


def test_energy_distance_same_law_is_at_noise_floor_and_shift_is_far_above():
    n, d = 400, 8
    a, b, c = _randn(n, d, seed=12), _randn(n, d, seed=13), _randn(n, d, seed=14)
    floor = float(energy_distance(a, b))
    same = float(energy_distance(a, c))
    # V-statistic bias for equal sizes: E[ED] = 2 E|X-X'| / n, with E|X-X'| ~ sqrt(2 d)
    expected_floor = 2.0 * np.sqrt(2 * d) / n
    assert 0.3 < floor / expected_floor < 3
    assert 0.3 < same / floor < 3
    far = float(energy_distance(a, c + 0.5))
    assert far / floor > 10


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 12),
    d=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    shift=st.floats(-100, 100),
)
def test_energy_distance_properties(n, m, d, seed, shift):
    x = _randn(n, d, seed=seed)
    y = _randn(m, d, seed=seed + 1) * 2.0
    e = float(energy_distance(x, y))
    assert e >= -1e-12
    assert float(energy_distance(y, x)) == pytest.approx(e, rel=1e-9, abs=1e-12)
    assert float(energy_distance(x + shift, y + shift)) == pytest.approx(e, rel=1e-6, abs=1e-9)
    assert e == pytest.approx(dcor.energy_distance(x.numpy(), y.numpy()), rel=1e-9, abs=1e-12)


def test_energy_distance_bad_input():
    x = _randn(10, 3)
    with pytest.raises(ValueError, match=r"same state size.*\(10, 3\).*\(10, 4\)"):
        energy_distance(x, _randn(10, 4))
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="y contains 1 non-finite"):
        energy_distance(x, bad)
    with pytest.raises(ValueError, match="empty"):
        energy_distance(x, x[:0])
    with pytest.raises(ValueError, match="block_size"):
        energy_distance(x, x, block_size=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        energy_distance(x.numpy(), x)


# -- periodic coordinates --------------------------------------------------------------------


def _energy_distance_brute_force(x: np.ndarray, y: np.ndarray, period: list) -> float:
    """Independent reference: all pairs at once in numpy, the circle distance by mod."""

    def mean_distance(u, v):
        d = np.abs(u[:, None, :] - v[None, :, :])
        for i, length in enumerate(period):
            if length is not None:
                r = np.mod(d[..., i], length)
                d[..., i] = np.minimum(r, length - r)
        return np.sqrt((d**2).sum(-1)).mean()

    return 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)


def test_periodic_energy_distance_by_hand():
    # one point at 0.05 and one at L - 0.05 on a circle of length L = 1: 0.1 apart, not 0.9
    x, y = torch.tensor([[0.05]], dtype=torch.float64), torch.tensor([[0.95]], dtype=torch.float64)
    assert float(energy_distance(x, y)) == pytest.approx(2 * 0.9, rel=1e-12)
    assert float(energy_distance(x, y, period=1.0)) == pytest.approx(2 * 0.1, rel=1e-12)
    assert float(energy_distance(x, y, period=[None])) == pytest.approx(2 * 0.9, rel=1e-12)
    # (position, velocity) with only the position periodic: sqrt(0.1^2 + 0.3^2)
    x2 = torch.tensor([[0.05, 0.0]], dtype=torch.float64)
    y2 = torch.tensor([[0.95, 0.3]], dtype=torch.float64)
    got = float(energy_distance(x2, y2, period=[1.0, None]))
    assert got == pytest.approx(2 * np.sqrt(0.1**2 + 0.3**2), rel=1e-12)
    # a whole number of turns is no distance; half a turn is the largest one
    assert float(energy_distance(x2, x2 + torch.tensor([3.0, 0.0]), period=[1.0, None])) == (
        pytest.approx(0.0, abs=1e-12)
    )
    half = float(energy_distance(x2, x2 + torch.tensor([2.5, 0.0]), period=[1.0, None]))
    assert half == pytest.approx(2 * 0.5, rel=1e-12)


def test_periodic_energy_distance_is_the_plain_one_away_from_the_boundary():
    # every pair is less than L/2 apart on the line: the circle changes no distance
    length = 10.0
    x = _randn(120, 3, seed=30) * 0.3 + 4.0
    y = _randn(90, 3, seed=31) * 0.4 + 4.5
    plain = float(energy_distance(x, y))
    for period in (length, [length, None, length], [None, None, None]):
        assert float(energy_distance(x, y, period=period)) == pytest.approx(plain, rel=1e-10)
    # ... and whole turns added to some samples change nothing on the circle only
    turns = torch.randint(-3, 4, x.shape, generator=torch.Generator().manual_seed(1))
    wound = x + length * turns
    assert float(energy_distance(wound, y, period=length)) == pytest.approx(plain, rel=1e-10)
    assert float(energy_distance(wound, y)) > 10 * plain


@pytest.mark.parametrize("block_size", [7, 2048])
@pytest.mark.parametrize(
    "period", [2.0, [2.0, None, 3.0], [None, 0.5, None], [None, 1.0, None, None, None, None]]
)
def test_periodic_energy_distance_matches_brute_force(period, block_size):
    d = len(period) if isinstance(period, list) else 3
    lengths = period if isinstance(period, list) else [period] * d
    # values on both sides of [0, L) and far from it
    x = _randn(70, d, seed=32) * 2.0 + 0.5
    y = _randn(53, d, seed=33) * 3.0 - 1.0
    ours = float(energy_distance(x, y, period=period, block_size=block_size))
    brute = _energy_distance_brute_force(x.numpy(), y.numpy(), lengths)
    assert ours == pytest.approx(brute, rel=1e-10, abs=1e-13)
    assert ours != pytest.approx(float(energy_distance(x, y)), rel=1e-3)


def test_periodic_energy_distance_with_many_plain_coordinates():
    # more plain coordinates than are formed one at a time: those go through cdist
    period = [1.5] + [None] * 7
    x, y = _randn(60, 8, seed=34), _randn(45, 8, seed=35) + 0.2
    brute = _energy_distance_brute_force(x.numpy(), y.numpy(), period)
    assert float(energy_distance(x, y, period=period)) == pytest.approx(brute, rel=1e-10)


@pytest.mark.parametrize(
    ("period", "match"),
    [
        (0.0, r"period\[0\] must be None or a finite number > 0"),
        (-1.0, r"period\[0\] must be None or a finite number > 0"),
        (float("inf"), r"period\[0\] must be None or a finite number > 0"),
        ([1.0, None], r"one entry per coordinate of the flattened state \(D=3\), got 2"),
        ([1.0, "a", None], r"period\[1\] must be None or a finite number > 0"),
        ([1.0, True, None], r"period\[1\] must be None or a finite number > 0"),
        ("x", "period must be None, a number .* or a sequence"),
    ],
)
def test_periodic_energy_distance_bad_period(period, match):
    x = _randn(10, 3)
    with pytest.raises(ValueError, match=match):
        energy_distance(x, x, period=period)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu():
    x = _randn(500, 10, seed=15)
    y = _randn(300, 10, seed=16) + 0.2
    cpu = float(energy_distance(x, y, block_size=128))
    gpu = energy_distance(x.cuda(), y.cuda(), block_size=128)
    assert gpu.device.type == "cuda"
    assert float(gpu) == pytest.approx(cpu, rel=1e-9)
    period = [2.0] + [None] * 8 + [1.0]  # the periodic path: whole blocks on a GPU
    cpu_periodic = float(energy_distance(x, y, period=period, block_size=128))
    gpu_periodic = energy_distance(x.cuda(), y.cuda(), period=period, block_size=128)
    assert float(gpu_periodic) == pytest.approx(cpu_periodic, rel=1e-9)
    sw_cpu = float(sliced_wasserstein2(x, y, seed=3))
    sw_gpu = float(sliced_wasserstein2(x.cuda(), y.cuda(), seed=3))
    assert sw_gpu == pytest.approx(sw_cpu, rel=1e-9)


# --------------------------------------------------------------------------------------------
# sliced_wasserstein2
# --------------------------------------------------------------------------------------------


def _exact_w2_squared_1d(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: exact OT between uniform empirical measures (linear program)."""
    cost = (a[:, None] - b[None, :]) ** 2
    wa = np.full(a.size, 1.0 / a.size)
    wb = np.full(b.size, 1.0 / b.size)
    return float(ot.emd2(wa, wb, cost))


@pytest.mark.parametrize("n,m", [(50, 50), (37, 23), (64, 16), (1, 5)])
def test_sliced_w2_in_1d_is_exact_w2(n, m):
    x = _randn(n, seed=17)
    y = _randn(m, seed=18) * 0.7 + 1.1
    exact = _exact_w2_squared_1d(x.numpy(), y.numpy())
    # In 1-D every unit direction is +-1, so the Monte Carlo average is exact.
    sw2 = float(sliced_wasserstein2(x, y, n_projections=5, squared=True))
    assert sw2 == pytest.approx(exact, rel=1e-10)
    assert float(sliced_wasserstein2(x, y, n_projections=5)) == pytest.approx(
        np.sqrt(exact), rel=1e-10
    )


def test_sliced_w2_equal_sizes_is_sorted_matching():
    x, y = _randn(40, seed=19), _randn(40, seed=20) + 0.3
    expected = float(((torch.sort(x).values - torch.sort(y).values) ** 2).mean())
    assert float(sliced_wasserstein2(x, y, squared=True)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n,m", [(60, 60), (70, 45)])
def test_sliced_w2_matches_pot_with_same_projections(n, m):
    x = _randn(n, 5, seed=21)
    y = _randn(m, 5, seed=22) * 1.4 + 0.5
    theta = random_projections(5, 40, seed=4)
    ours = float(sliced_wasserstein2(x, y, projections=theta))
    pot = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=theta.numpy(), p=2)
    assert ours == pytest.approx(float(pot), rel=1e-10)


def test_sliced_w2_statistically_agrees_with_pot_random_projections():
    # Gaussian N(0, I) vs N(s, I): each direction gives W2^2 = (theta . s)^2 (plus sampling
    # noise), whose mean over the sphere is |s|^2 / d.
    d = 4
    x = _randn(2000, d, seed=23)
    s = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    y = _randn(2000, d, seed=24) + s
    ours = float(sliced_wasserstein2(x, y, n_projections=500, seed=1))
    pot = float(ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), n_projections=500, seed=1))
    analytic = float(s.norm()) / np.sqrt(d)
    assert ours == pytest.approx(analytic, rel=0.1)
    assert ours == pytest.approx(pot, rel=0.1)


def test_sliced_w2_seeding_and_generator():
    x, y = _randn(30, 6, seed=25), _randn(30, 6, seed=26) + 0.2
    a = float(sliced_wasserstein2(x, y, seed=5))
    assert float(sliced_wasserstein2(x, y, seed=5)) == a
    assert float(sliced_wasserstein2(x, y, seed=6)) != a
    g = torch.Generator().manual_seed(5)
    assert float(sliced_wasserstein2(x, y, generator=g)) == a
    assert float(sliced_wasserstein2(x, x)) == 0.0
    theta = random_projections(6, 10, seed=0)
    assert theta.shape == (6, 10)
    torch.testing.assert_close(theta.norm(dim=0), torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"projections must have shape \(D=6"):
        sliced_wasserstein2(x, y, projections=torch.ones(5, 3))


# --------------------------------------------------------------------------------------------
# evaluate / moments on synthetic Gaussian fields
# --------------------------------------------------------------------------------------------

TIMES = np.linspace(0.0, 1.0, 4)
GX = np.linspace(0.0, 1.0, 6)
GY = np.linspace(0.0, 1.0, 5)


def _law():
    """Known mean and std fields, shape (time, channel, x, y)."""
    mean = np.sin(2 * np.pi * GX)[:, None] * np.cos(np.pi * GY)[None, :]
    std = 0.5 + GX[:, None] + 0.0 * GY[None, :]
    m = np.stack([mean * (1 + t) for t in TIMES])[:, None].repeat(2, axis=1)
    s = np.stack([std * (1 + t) for t in TIMES])[:, None].repeat(2, axis=1)
    return m, s


def _gaussian_ensemble(n, seed, shift=0.0, scale=1.0):
    """Samples mean + shift * std + scale * std * z with z ~ N(0, 1) iid."""
    m, s = _law()
    z = np.random.default_rng(seed).standard_normal((n,) + m.shape)
    return xr.DataArray(
        m + shift * s + scale * s * z,
        dims=("sample", "time", "channel", "x", "y"),
        coords={"time": TIMES, "channel": ["u", "v"], "x": GX, "y": GY},
    )


N_GEN, N_REF = 200, 500


@pytest.fixture(scope="module")
def reference():
    return _gaussian_ensemble(N_REF, seed=1000)


def test_moments(reference):
    mom = moments(reference)
    m, s = _law()
    assert set(mom.data_vars) == {"mean", "std"}
    assert mom["mean"].dims == ("time", "channel", "x", "y")
    np.testing.assert_allclose(mom["std"].values, reference.std("sample", ddof=1).values)
    # sample moments of 500 Gaussians: within ~5 standard errors
    assert np.all(np.abs(mom["mean"].values - m) < 5 * s / np.sqrt(N_REF))
    assert np.all(np.abs(mom["std"].values / s - 1) < 5 / np.sqrt(2 * N_REF))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_same_law_is_at_noise_floor(reference, seed):
    gen = _gaussian_ensemble(N_GEN, seed=seed)
    ds = evaluate(gen, reference, seed=seed)
    assert ds.sizes["time"] == len(TIMES)
    np.testing.assert_array_equal(ds["time"].values, gen["time"].values)
    assert ds.attrs["n"] == N_GEN and ds.attrs["seed"] == seed
    assert np.all((ds["ed_ratio"] > 0.3) & (ds["ed_ratio"] < 3)), ds["ed_ratio"].values
    # mean error of two independent sample means, relative to the spread:
    # E||diff||^2 / ||std||^2 = 1/N_GEN + 1/N_REF
    expected = np.sqrt(1 / N_GEN + 1 / N_REF)
    assert np.all(np.abs(ds["mean_rel_error"] - expected) < 0.3 * expected)
    assert np.all(ds["std_rel_error"] < 0.15)
    sw_ratio = ds["sliced_w2"] / ds["sliced_w2_noise_floor"]
    assert np.all((sw_ratio > 0.3) & (sw_ratio < 3))


def test_evaluate_collapsed_ensemble(reference):
    m, _ = _law()
    collapsed = xr.zeros_like(_gaussian_ensemble(N_GEN, seed=3)) + m  # every sample = mean
    ds = evaluate(collapsed, reference)
    assert np.all(ds["ed_ratio"] > 10), ds["ed_ratio"].values
    np.testing.assert_allclose(ds["std_rel_error"].values, 1.0, atol=1e-12)
    assert np.all(ds["sliced_w2"] > 2 * ds["sliced_w2_noise_floor"])


def test_evaluate_known_shift_gives_analytic_mean_error(reference):
    c = 0.5
    gen = _gaussian_ensemble(N_GEN, seed=4, shift=c)  # mean shifted by c * std, pointwise
    ds = evaluate(gen, reference)
    # ||c std + noise|| / ||std|| with E||noise||^2 = (1/N_GEN + 1/N_REF) ||std||^2
    expected = np.sqrt(c**2 + 1 / N_GEN + 1 / N_REF)
    np.testing.assert_allclose(ds["mean_rel_error"].values, expected, atol=0.04)
    assert np.all(ds["ed_ratio"] > 5)
    assert np.all(ds["std_rel_error"] < 0.15)


def test_evaluate_known_scale_gives_analytic_std_error(reference):
    gen = _gaussian_ensemble(N_GEN, seed=5, scale=1.5)
    ds = evaluate(gen, reference)
    np.testing.assert_allclose(ds["std_rel_error"].values, 0.5, atol=0.06)


def test_evaluate_dataset_metadata_and_determinism(reference):
    gen = _gaussian_ensemble(300, seed=6)
    ds = evaluate(gen, reference, seed=11)
    assert ds.attrs["n"] == 250  # min(300, 500 // 2): generated is subsampled too
    assert ds.attrs["n_generated"] == 300 and ds.attrs["n_reference"] == 500
    for name in [
        "energy_distance",
        "noise_floor",
        "ed_ratio",
        "mean_rel_error",
        "std_rel_error",
        "sliced_w2",
    ]:
        assert ds[name].dims == ("time",)
        assert ds[name].attrs["long_name"] and ds[name].attrs["description"]
    assert "std_ref" in ds["mean_rel_error"].attrs["description"]
    np.testing.assert_allclose(ds["ed_ratio"], ds["energy_distance"] / ds["noise_floor"])
    again = evaluate(gen, reference, seed=11)
    xr.testing.assert_identical(ds, again)
    other = evaluate(gen, reference, seed=12)
    assert not np.allclose(other["noise_floor"], ds["noise_floor"])


def test_evaluate_noise_floor_uses_disjoint_reference_halves():
    # A reference with 4 distinct values per time: if the two halves overlapped (or were the
    # same sample), the noise floor would be 0 for some seed.
    ref = xr.DataArray(
        np.arange(4.0)[:, None, None] * np.ones((1, 2, 1)),
        dims=("sample", "time", "channel"),
        coords={"time": [0.0, 1.0]},
    )
    for seed in range(10):
        ds = evaluate(ref, ref, seed=seed)
        assert ds.attrs["n"] == 2
        assert np.all(ds["noise_floor"] > 0)


def _samples_over_time(values: np.ndarray) -> xr.DataArray:
    """``(n, D)`` samples as an ensemble with one output time."""
    return xr.DataArray(
        values[:, None, :], dims=("sample", "time", "channel"), coords={"time": [0.0]}
    )


def test_evaluate_many_splits_converge_to_the_mean_over_all_splits():
    # Independent truth: over uniformly random halvings of a pool of 2n reference points,
    # E[ED_V(B, A)] = 2 Dbar / n (Dbar: mean distance over distinct pool pairs), and with the
    # generated sample G fixed, E[ED_V(G, A)] = 2 mean|g - r| - mean_{g,g'}|g - g'|
    # - (1 - 1/n) Dbar. Both are closed forms of scipy's pairwise distances.
    from scipy.spatial.distance import cdist, pdist

    rng = np.random.default_rng(5)
    n = 40
    pool, gen = rng.normal(size=(2 * n, 2)), rng.normal(loc=0.3, size=(n, 2))
    d_bar = pdist(pool).mean()
    floor_mean = 2 * d_bar / n
    ed_mean = 2 * cdist(gen, pool).mean() - cdist(gen, gen).mean() - (1 - 1 / n) * d_bar
    many = evaluate(_samples_over_time(gen), _samples_over_time(pool), seed=3, n_splits=3000)
    one = evaluate(_samples_over_time(gen), _samples_over_time(pool), seed=3)
    assert many.attrs["n_splits"] == 3000 and one.attrs["n_splits"] == 1
    assert float(many["noise_floor"][0]) == pytest.approx(floor_mean, rel=0.06)
    assert float(many["energy_distance"][0]) == pytest.approx(ed_mean, rel=0.06)
    # one split is one draw of that law, well away from its mean
    assert float(one["noise_floor"][0]) != pytest.approx(floor_mean, rel=0.06)


def test_evaluate_more_splits_narrow_the_ratio_of_a_perfect_generator():
    # A 1-D law: one split's ED is close to a chi-square variable with one degree of freedom,
    # so a perfect generator's ed_ratio scatters widely; averaging over splits removes the
    # floor's share of that scatter (the generated sample's own share stays).
    def draw(n, seed):
        return _samples_over_time(np.random.default_rng(seed).standard_normal((n, 1)))

    ref = draw(400, 12345)
    spread = {}
    for n_splits in (1, 8):
        ratios = [
            float(evaluate(draw(200, s), ref, seed=s, n_splits=n_splits)["ed_ratio"][0])
            for s in range(100)
        ]
        q25, q75 = np.percentile(np.log(ratios), [25, 75])
        spread[n_splits] = q75 - q25
    assert spread[8] < 0.8 * spread[1]


def test_evaluate_one_split_is_the_default():
    gen, ref = _gaussian_ensemble(N_GEN, seed=21), _gaussian_ensemble(2 * N_GEN, seed=22)
    one = evaluate(gen, ref, seed=4)
    xr.testing.assert_identical(one, evaluate(gen, ref, seed=4, n_splits=1))
    two = evaluate(gen, ref, seed=4, n_splits=2)
    assert two.attrs["n_splits"] == 2
    assert not np.allclose(two["noise_floor"], one["noise_floor"], rtol=1e-3)


@pytest.mark.parametrize("n_splits", [0, -1, 2.5, True, "4"])
def test_evaluate_rejects_a_bad_number_of_splits(reference, n_splits):
    with pytest.raises(ValueError, match="n_splits must be a positive integer"):
        evaluate(_gaussian_ensemble(N_GEN, seed=9), reference, n_splits=n_splits)


def test_evaluate_vector_states_and_transposed_reference():
    rng = np.random.default_rng(7)
    t = [0.0, 0.5]
    ref = xr.DataArray(
        rng.standard_normal((100, 2, 3)), dims=("sample", "time", "channel"), coords={"time": t}
    )
    gen = xr.DataArray(
        rng.standard_normal((40, 2, 3)), dims=("sample", "time", "channel"), coords={"time": t}
    )
    ds = evaluate(gen, ref)
    ds_t = evaluate(gen, ref.transpose("channel", "time", "sample"))
    xr.testing.assert_allclose(ds, ds_t)
    assert np.all(ds["ed_ratio"] < 5)


def _particles(n, seed, length, wrap=True):
    """(x, v) particles, x a normal around the box edge 0 (wrapped into [0, L) or not)."""
    rng = np.random.default_rng(seed)
    values = np.stack([rng.normal(0.0, 1.0, (n, 2)), rng.normal(0.0, 1.0, (n, 2))], axis=-1)
    if wrap:
        values[..., 0] = np.mod(values[..., 0], length)
    return xr.DataArray(
        values,
        dims=("sample", "time", "channel"),
        coords={"time": [0.0, 1.0], "channel": ["x", "v"]},
    )


def test_evaluate_periodic_positions():
    length = 10.0
    ref, gen = _particles(400, 41, length), _particles(200, 42, length, wrap=False)
    period = [length, None]  # (x, v): only the position is periodic
    periodic, plain = evaluate(gen, ref, period=period), evaluate(gen, ref)
    # the same law on the circle, but the unwrapped positions are far apart on the line
    assert np.all(periodic["ed_ratio"] < 3) and np.all(plain["ed_ratio"] > 20)
    assert periodic.attrs["periodic_coordinates"] == [0]
    assert periodic.attrs["periods"] == [length]
    assert plain.attrs["periodic_coordinates"] == [] and plain.attrs["periods"] == []
    # A rotation of the box moves no particle on the circle: the distance and its noise
    # floor stay, while on the line the wrapped cloud splits in two.
    rotated = [e.copy(data=e.values + np.array([length / 2, 0.0])) for e in (gen, ref)]
    rotated = [e.copy(data=np.where(e["channel"] == "x", np.mod(e, length), e)) for e in rotated]
    again = evaluate(*rotated, period=period)
    for var in ("energy_distance", "noise_floor"):
        np.testing.assert_allclose(again[var], periodic[var], rtol=1e-9)
    assert not np.allclose(evaluate(*rotated)["noise_floor"], plain["noise_floor"], rtol=0.1)
    # the moments and the sliced distances stay Euclidean
    for var in ("sliced_w2", "mean_rel_error", "std_rel_error"):
        np.testing.assert_array_equal(periodic[var], plain[var])
    with pytest.raises(ValueError, match=r"one entry per coordinate .*\(D=2\), got 1"):
        evaluate(gen, ref, period=[length])


def test_evaluate_time_subset_and_tolerance(reference):
    gen = _gaussian_ensemble(N_GEN, seed=8).isel(time=[1, 3])
    gen = gen.assign_coords(time=gen["time"].values + 1e-12)  # round-off in the time coord
    ds = evaluate(gen, reference)
    np.testing.assert_array_equal(ds["time"].values, gen["time"].values)
    full = evaluate(_gaussian_ensemble(N_GEN, seed=8), reference)
    np.testing.assert_allclose(ds["mean_rel_error"], full["mean_rel_error"].isel(time=[1, 3]))


# --------------------------------------------------------------------------------------------
# evaluate: bad input
# --------------------------------------------------------------------------------------------


def test_evaluate_rejects_mismatched_grid(reference):
    gen = _gaussian_ensemble(N_GEN, seed=9).isel(x=slice(0, 4))
    with pytest.raises(ValueError, match=r"generated has .*'x': 4.*reference has .*'x': 6"):
        evaluate(gen, reference)


def test_evaluate_rejects_different_grid_coordinates(reference):
    gen = _gaussian_ensemble(N_GEN, seed=9).assign_coords(x=GX * 2)
    with pytest.raises(ValueError, match="different coordinates on dim 'x'"):
        evaluate(gen, reference)


def test_evaluate_rejects_missing_dims(reference):
    gen = _gaussian_ensemble(N_GEN, seed=10).isel(time=0)
    with pytest.raises(ValueError, match=r"generated must have dims .*missing \['time'\]"):
        evaluate(gen, reference)
    with pytest.raises(ValueError, match=r"reference must have dims .*missing \['sample'\]"):
        evaluate(_gaussian_ensemble(N_GEN, seed=10), reference.isel(sample=0))
    with pytest.raises(TypeError, match="generated must be an xarray.DataArray"):
        evaluate(_gaussian_ensemble(N_GEN, seed=10).values, reference)


def test_evaluate_rejects_nan_and_inf(reference):
    gen = _gaussian_ensemble(N_GEN, seed=11)
    gen[3, 1, 0, 2, 2] = np.nan
    gen[4, 1, 1, 0, 0] = np.inf
    gen[0, 3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"3 non-finite values \(NaN/Inf\) at 2 time\(s\)") as e:
        evaluate(gen, reference)
    assert str(TIMES[1]) in str(e.value) and str(TIMES[3]) in str(e.value)


def test_evaluate_rejects_too_few_samples(reference):
    with pytest.raises(ValueError, match="reference needs at least 4 samples.*got 3"):
        evaluate(_gaussian_ensemble(N_GEN, seed=12), reference.isel(sample=slice(0, 3)))
    with pytest.raises(ValueError, match="generated needs at least 2 samples, got 1"):
        evaluate(_gaussian_ensemble(1, seed=12), reference)


def test_evaluate_rejects_disjoint_or_extra_times(reference):
    gen = _gaussian_ensemble(N_GEN, seed=13).assign_coords(time=TIMES + 10.0)
    with pytest.raises(ValueError, match="no time in common"):
        evaluate(gen, reference)
    gen = _gaussian_ensemble(N_GEN, seed=13).assign_coords(time=np.r_[TIMES[:-1], 5.0])
    with pytest.raises(ValueError, match=r"1 generated time\(s\) not found in reference: \[5.0\]"):
        evaluate(gen, reference)
