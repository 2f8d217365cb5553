"""DICE: exact invariance, trapezoid weights, Gaussian marginals, FNO potentials, bad input."""

import math

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from slift_plugin import DICE, PotentialMLP, SnapshotDataset, fit, rollout, trapezoid_weights
from slift_plugin.systems import ornstein_uhlenbeck


def test_trapezoid_weights_on_a_non_uniform_grid():
    t = torch.tensor([0.0, 0.1, 0.5, 0.6, 2.0], dtype=torch.float64)
    w = trapezoid_weights(t)
    torch.testing.assert_close(w, torch.tensor([0.05, 0.25, 0.25, 0.75, 0.7], dtype=torch.float64))
    f = torch.sin(3 * t) + t**2
    assert float((w * f).sum()) == pytest.approx(float(np.trapezoid(f.numpy(), t.numpy())))
    assert float(w.sum()) == pytest.approx(2.0)


class Shifted(torch.nn.Module):
    """s(x, t) + c(t) for a function c of time alone."""

    def __init__(self, potential, c):
        super().__init__()
        self.potential, self.c, self.n_cond = potential, c, potential.n_cond

    def forward(self, x, t, cond=None):
        return self.potential(x, t, cond) + self.c(t)


def make_dice(dim=3, sigma=0.0, laplacian="exact", n_params=0, kinetic_on_neighbours=0.0):
    torch.manual_seed(0)
    d = DICE(
        PotentialMLP(dim, n_params=n_params, hidden=16, depth=2),
        (dim,),
        sigma=sigma,
        laplacian=laplacian,
        n_params=n_params,
        kinetic_on_neighbours=kinetic_on_neighbours,
    )
    return d.double()


@settings(max_examples=25, deadline=None)
@given(
    gaps=st.lists(st.floats(0.01, 2.0), min_size=1, max_size=5),
    t0=st.floats(-3, 3),
    coeffs=st.tuples(st.floats(-50, 50), st.floats(0.1, 10), st.floats(-5, 5)),
    sigma=st.sampled_from([0.0, 0.7]),
    lam=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 10_000),
)
def test_loss_is_exactly_invariant_to_adding_a_function_of_time(gaps, t0, coeffs, sigma, lam, seed):
    """Also with the kinetic energy on neighbouring populations (``lam``): it only sees
    ``grad_x s``. The ``alpha`` regulariser is not invariant (test_dice_regime.py)."""
    a, b, q = coeffs
    times = torch.tensor(np.cumsum([t0, *gaps]), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(times), 7, 3, generator=g, dtype=torch.float64) * 2
    dice = make_dice(sigma=sigma, kinetic_on_neighbours=lam)
    batch = {"x": x, "t": times}
    base = dice.loss(batch)
    shifted = make_dice(sigma=sigma, kinetic_on_neighbours=lam)
    shifted.potential = Shifted(shifted.potential, lambda t: a * torch.sin(b * t) + q * t**2)
    moved = shifted.loss(batch)
    # rounding only: the shift is O(|a| + |q| t^2), the loss differences must vanish
    scale = 1.0 + abs(a) + abs(q) * float(times.abs().max()) ** 2
    assert abs((moved - base).item()) <= 1e-12 * scale * (1 + abs(base.item()))


def test_invariance_test_can_fail_for_an_action_matching_style_boundary():
    """Control: E_{k+1}[s_{k+1}] - E_k[s_k] (no time symmetrisation) is not invariant."""
    dice = make_dice()
    times = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    x = torch.randn(3, 5, 3, dtype=torch.float64)

    def naive_boundary(d):
        s = [d.potential_value(x[k], times[k]).mean() for k in range(3)]
        return s[-1] - s[0]

    shifted = make_dice()
    shifted.potential = Shifted(shifted.potential, lambda t: 5.0 * t)
    assert abs((naive_boundary(shifted) - naive_boundary(dice)).item()) > 1.0


class Quadratic(torch.nn.Module):
    n_cond = 0

    def forward(self, x, t, cond=None):
        return -0.5 * (x**2).sum(1)


def test_hutchinson_laplacian_is_unbiased():
    dice = make_dice(dim=6, sigma=1.0, laplacian="exact")
    x = torch.randn(4, 6, dtype=torch.float64).requires_grad_(True)
    v, _ = dice.velocity(x, 0.3, create_graph=True)
    exact = dice._laplacian(x, v, None)
    dice.laplacian, dice.n_probes = "hutchinson", 4000
    estimate = dice._laplacian(x, v, torch.Generator().manual_seed(0))
    # Rademacher variance is 2 * sum of squared off-diagonal Hessian entries
    assert torch.allclose(estimate, exact, atol=0.05 * float(exact.abs().max()) + 1e-3)
    # and it is a Laplacian: for s = -|x|^2 / 2 it is -d
    quadratic = make_dice(dim=6, sigma=1.0)
    quadratic.potential = Quadratic()
    xq = torch.randn(2, 6, dtype=torch.float64).requires_grad_(True)
    vq, _ = quadratic.velocity(xq, 0.0, create_graph=True)
    torch.testing.assert_close(
        quadratic._laplacian(xq, vq, None), torch.full((2,), -6.0, dtype=torch.float64)
    )


OU = dict(theta=1.0, sigma=0.5, m0=2.0, s0=0.3)


def ou_marginals(t):
    th, sg, m0, s0 = OU["theta"], OU["sigma"], OU["m0"], OU["s0"]
    mean = m0 * np.exp(-th * t)
    var = s0**2 * np.exp(-2 * th * t) + sg**2 / (2 * th) * (1 - np.exp(-2 * th * t))
    return mean, var


@pytest.fixture(scope="module")
def ou_snapshots():
    x0 = np.random.default_rng(0).normal(OU["m0"], OU["s0"], 2000)
    data = ornstein_uhlenbeck(
        n_samples=2000, n_steps=10, dt=0.2, x0=x0, theta=OU["theta"], sigma=OU["sigma"], seed=0
    )
    return SnapshotDataset.from_xarray(data)  # pairing across times ignored


@pytest.mark.parametrize(
    "sigma, epochs, batch, tol_mean, tol_std",
    [(0.5, 60, 256, 0.15, 0.10), (0.0, 200, 1000, 0.15, 0.15)],
    ids=["diffusion-variant", "deterministic-flow"],
)
def test_ou_gaussian_marginals(ou_snapshots, sigma, epochs, batch, tol_mean, tol_std):
    """DICE on OU snapshots from a Gaussian reproduces the exact marginal mean and std.

    With the known diffusion (sigma=0.5) the generator is Euler-Maruyama; without it DICE
    learns the probability-flow velocity. Tolerances: mean within tol_mean marginal std,
    std within tol_std relative, at every time 0..2 (measured: 0.06 / 5% and 0.07 / 8%).
    """
    torch.manual_seed(0)
    dice = DICE(PotentialMLP(1, hidden=64, depth=3), (1,), sigma=sigma, dt=0.2, n_substeps=4)
    fit(dice, ou_snapshots, epochs=epochs, batch_size=batch, lr=2e-3, progress=False)
    x0 = torch.tensor(
        np.random.default_rng(1).normal(OU["m0"], OU["s0"], (4000, 1)), dtype=torch.float32
    )
    ens = rollout(dice, x0, 10, seed=3)
    mean, var = ou_marginals(ens["time"].values)
    got_mean = ens.mean("sample").values[:, 0]
    got_std = ens.std("sample").values[:, 0]
    assert np.all(np.abs(got_mean - mean) < tol_mean * np.sqrt(var)), got_mean - mean
    assert np.all(np.abs(got_std / np.sqrt(var) - 1) < tol_std), got_std / np.sqrt(var)


def unit_normalization(dice: DICE) -> None:
    """Physical units reach the potential unchanged: zero mean, unit std, time as is."""
    c = dice.n_channels
    dice.set_normalization(
        {
            "state_mean": torch.zeros(c),
            "state_std": torch.ones(c),
            "time_offset": torch.tensor(0.0),
            "time_scale": torch.tensor(1.0),
        }
    )


def test_substeps_and_one_gradient_evaluation_per_substep():
    dice = make_dice(dim=2).float()
    unit_normalization(dice)
    calls = []
    dice.potential.register_forward_hook(lambda m, i, o: calls.append(1))
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    dice.dt, dice.n_substeps = 0.4, 4
    four = rollout(dice, x0, 1).isel(time=1).values
    assert len(calls) == 4
    dice.dt, dice.n_substeps = 0.1, 1
    one_by_one = rollout(dice, x0, 4).isel(time=-1).values
    np.testing.assert_allclose(four, one_by_one, rtol=1e-5, atol=1e-6)


class DecayPotential(torch.nn.Module):
    """``s(x, t) = -(a + b t) |x|^2 / 2``: the velocity ``-(a + b t) x`` has a closed-form
    flow, ``x(t) = x(0) exp(-(a t + b t^2 / 2))``."""

    n_cond = 0

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x, t, cond=None):
        return -0.5 * (self.a + self.b * t) * x.pow(2).sum(1)


def decay_dice(n_substeps: int, scheme: str, sigma: float = 0.0) -> DICE:
    potential = DecayPotential(1.5, 2.0)
    dice = DICE(potential, (2,), sigma=sigma, dt=0.4, n_substeps=n_substeps, scheme=scheme)
    unit_normalization(dice)
    return dice.double()


def test_heun_substeps_converge_at_second_order_to_the_closed_form_flow():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    t0, dt, (a, b) = 0.3, 0.4, (1.5, 2.0)
    exact = x0 * math.exp(-(a * dt + b * ((t0 + dt) ** 2 - t0**2) / 2))
    errors = {
        scheme: [
            (decay_dice(n, scheme).step(x0, t=t0) - exact).abs().max().item() for n in (4, 8, 16)
        ]
        for scheme in ("euler", "heun")
    }
    euler, heun = (np.log2(np.divide(e[:-1], e[1:])) for e in errors.values())
    assert np.all(np.abs(euler - 1) < 0.15) and np.all(np.abs(heun - 2) < 0.15), errors
    # 4 Heun sub-steps (8 evaluations) beat 16 Euler ones
    assert errors["heun"][0] < errors["euler"][-1]


def test_stochastic_heun_uses_one_noise_increment_in_predictor_and_corrector():
    dice = decay_dice(1, "heun", sigma=0.7)
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    noise = torch.tensor([[[0.3, -1.1]]], dtype=torch.float64)
    h, t0 = 0.4, 0.5
    w = 0.7 * math.sqrt(h) * noise[:, 0]
    predicted = x0 - h * (1.5 + 2.0 * t0) * x0 + w
    by_hand = x0 + h / 2 * (-(1.5 + 2.0 * t0) * x0 - (1.5 + 2.0 * (t0 + h)) * predicted) + w
    torch.testing.assert_close(dice.step(x0, noise, t=t0), by_hand)


def test_heun_takes_two_gradient_evaluations_per_substep_and_unknown_schemes_are_refused():
    dice = make_dice(dim=2).float()
    dice.scheme = "heun"
    unit_normalization(dice)
    calls = []
    dice.potential.register_forward_hook(lambda m, i, o: calls.append(1))
    dice.dt, dice.n_substeps = 0.4, 3
    rollout(dice, torch.zeros(4, 2), 1)
    assert len(calls) == dice.evals_per_step == 6
    with pytest.raises(ValueError, match=r"scheme must be one of \('euler', 'heun'\), got 'rk4'"):
        DICE(PotentialMLP(2, hidden=8, depth=1), (2,), scheme="rk4")


def test_snapshot_data_from_xarray_layouts_and_parameter_holdout():
    g = np.random.default_rng(0)
    ens = xr.DataArray(
        g.normal(size=(6, 3, 1)),
        dims=("sample", "time", "channel"),
        coords={"time": [0.0, 0.5, 1.0], "mu_v0": ("sample", [1.0] * 3 + [2.0] * 3)},
    )
    ds = SnapshotDataset.from_xarray(ens)
    assert [float(m) for m in ds.params] == [1.0, 2.0] and ds.n_params == 1
    torch.testing.assert_close(
        ds.groups[1][1][2], torch.tensor(ens.values[3:, 2], dtype=torch.float32)
    )
    held = SnapshotDataset.from_xarray(ens, exclude_params=[[2.0]])
    assert [float(m) for m in held.params] == [1.0]
    pops = [
        xr.DataArray(g.normal(size=(n, 2, 8)), dims=("sample", "channel", "x"), coords={"time": t})
        for n, t in ((5, 0.0), (9, 0.7), (2, 1.5))
    ]
    ds2 = SnapshotDataset.from_xarray(pops, n_times=2)
    assert [p.shape[0] for p in ds2.groups[0][1]] == [5, 9, 2]
    batch = next(ds2.iter_batches(4, torch.Generator().manual_seed(0)))
    assert batch["x"].shape == (2, 4, 2, 8)
    torch.testing.assert_close(batch["t"], torch.tensor([0.0, 1.5]))  # endpoints kept


def _groups_by_python_loop(pops, exclude=()):
    """The grouping rule spelled out per sample: value rounded to 6 decimals, order of
    first appearance, a group keeps the times at which it has samples."""
    excluded = {tuple(round(float(v), 6) for v in p) for p in exclude}
    order, rows = [], {}
    for k, pop in enumerate(pops):
        mu = np.stack([pop[c].values for c in sorted(pop.coords) if c.startswith("mu_")], 1)
        for i in range(pop.sizes["sample"]):
            key = tuple(round(float(v), 6) for v in mu[i].astype(np.float32))
            if key in excluded:
                continue
            if key not in rows:
                order.append(key)
                rows[key] = {}
            rows[key].setdefault(k, []).append(pop.values[i])
    return [(key, {k: np.stack(v) for k, v in rows[key].items()}) for key in order]


def test_snapshot_grouping_matches_the_per_sample_rule():
    # interleaved values, two that differ below the 6th decimal (one group), a value only
    # present at some times, two parameters, an excluded value
    g = np.random.default_rng(3)
    values = np.array([[2.0, 0.5], [1.0, 0.5], [1.0000001, 0.5], [3.0, 0.25], [1.0, 0.75]])
    pops = []
    for k, t in enumerate((0.0, 0.3, 0.9, 1.4)):
        n = 40 + 7 * k
        pick = g.integers(0, 4 if k % 2 else 5, size=n)
        pops.append(
            xr.DataArray(
                g.normal(size=(n, 2)),
                dims=("sample", "channel"),
                coords={
                    "time": t,
                    "mu_a": ("sample", values[pick, 0]),
                    "mu_b": ("sample", values[pick, 1]),
                },
            )
        )
    expected = _groups_by_python_loop(pops, exclude=[[3.0, 0.25]])
    ds = SnapshotDataset.from_xarray(pops, exclude_params=[[3.0, 0.25]])
    assert [tuple(round(float(v), 6) for v in m) for m in ds.params] == [k for k, _ in expected]
    for (times, populations, _), (_, per_time) in zip(ds.groups, expected, strict=True):
        assert times.tolist() == pytest.approx([pops[k]["time"].item() for k in per_time])
        for pop, ref in zip(populations, per_time.values(), strict=True):
            torch.testing.assert_close(pop, torch.tensor(ref, dtype=torch.float32))


def test_snapshot_grouping_of_a_large_ensemble():
    # 4 values x 5,000 samples x 101 times: grouped per distinct value, not per sample
    # (per sample this took minutes at the authors' sizes)
    n, n_times = 5000, 101
    v0 = np.repeat([0.8, 0.9, 1.1, 1.2], n)
    states = np.arange(4 * n, dtype=np.float64)[:, None, None] + np.zeros((1, n_times, 2))
    ens = xr.DataArray(
        states,
        dims=("sample", "time", "channel"),
        coords={"time": np.linspace(0, 40, n_times), "mu_v0": ("sample", v0)},
    )
    ds = SnapshotDataset.from_xarray(ens, exclude_params=[[1.1]])
    assert [float(m) for m in ds.params] == pytest.approx([0.8, 0.9, 1.2])
    for j, (times, populations, _) in enumerate(ds.groups):
        assert len(times) == n_times
        first = [0, 1, 3][j] * n
        torch.testing.assert_close(populations[-1][:, 0], torch.arange(first, first + n).float())


def _trajectory_ensemble(n=64, n_times=6, seed=0, sigma=0.5):
    """OU trajectories from a spread of starts: row i of every population is one
    trajectory."""
    x0 = np.random.default_rng(seed).normal(2.0, 1.0, size=(n, 1))
    return ornstein_uhlenbeck(
        n_samples=n, n_steps=n_times - 1, dt=0.1, x0=x0, sigma=sigma, seed=seed
    )


def test_paired_batches_take_one_trajectory_per_row_at_every_time():
    ens = _trajectory_ensemble()
    ds = SnapshotDataset.from_xarray(ens, n_times=4, paired_batches=True)
    values = torch.as_tensor(ens.transpose("sample", "time", "channel").values).float()
    for batch in ds.iter_batches(16, torch.Generator().manual_seed(1)):
        steps = torch.round(batch["t"] / 0.1).long()
        # the sample each row came from, found at the last time, is the sample of that
        # row at every other chosen time
        rows = [int(torch.argmin((values[:, -1] - x).abs().sum(-1))) for x in batch["x"][-1]]
        torch.testing.assert_close(batch["x"], values[rows][:, steps].transpose(0, 1))
    unpaired = SnapshotDataset.from_xarray(ens, n_times=4)
    batch = next(unpaired.iter_batches(16, torch.Generator().manual_seed(1)))
    rows = [int(torch.argmin((values[:, -1] - x).abs().sum(-1))) for x in batch["x"][-1]]
    steps = torch.round(batch["t"] / 0.1).long()
    assert not torch.allclose(batch["x"], values[rows][:, steps].transpose(0, 1))


@pytest.mark.parametrize("potential_scale", [1.0, 1e-3])
def test_paired_batches_keep_the_expected_loss(potential_scale):
    """Each time's minibatch stays a uniform draw of its population, so the mean loss
    over many batches converges to the loss on every sample at every time (computed in
    one batch), paired or not. With a small potential_scale the loss is its boundary
    terms (the kinetic one is quadratic in the scale): on nearly deterministic
    trajectories, differences along them when paired, which scatter far less than
    differences of independent draws. (The kinetic terms of paired times are correlated
    instead, so the whole loss need not scatter less.)"""
    ens = _trajectory_ensemble(sigma=0.05)
    dice = make_dice(dim=1)
    dice.potential_scale = potential_scale
    dice.set_normalization(SnapshotDataset.from_xarray(ens).statistics())
    full = SnapshotDataset.from_xarray(ens)
    times, pops, _ = full.groups[0]
    with torch.no_grad():
        exact = float(dice.loss({"x": torch.stack(pops).double(), "t": times.double()}))
        losses = {}
        for paired in (False, True):
            ds = SnapshotDataset.from_xarray(ens, paired_batches=paired)
            g = torch.Generator().manual_seed(2)
            losses[paired] = np.array(
                [float(dice.loss(b)) for _ in range(60) for b in ds.iter_batches(8, g)]
            )
    for paired, values in losses.items():
        error = abs(values.mean() - exact)
        assert error < 4 * values.std() / math.sqrt(len(values)), (paired, error)
    if potential_scale < 1:
        assert losses[True].std() < 0.4 * losses[False].std()  # 0.2 measured


def test_paired_batches_need_equal_population_sizes():
    pops = [
        xr.DataArray(np.zeros((n, 1)), dims=("sample", "channel"), coords={"time": t})
        for n, t in ((5, 0.0), (6, 1.0))
    ]
    with pytest.raises(ValueError, match=r"paired_batches .* group 0 has sizes \[5, 6\]"):
        SnapshotDataset.from_xarray(pops, paired_batches=True)


@pytest.mark.parametrize(
    "groups, match",
    [
        ([(torch.tensor([0.0, 2.0, 1.0]), [torch.zeros(3, 2)] * 3, None)], "strictly increasing"),
        ([(torch.tensor([0.0]), [torch.zeros(3, 2)], None)], "two or more times"),
        (
            [(torch.tensor([0.0, 1.0]), [torch.zeros(3, 2), torch.full((3, 2), math.nan)], None)],
            "NaN",
        ),
        (
            [(torch.tensor([0.0, 1.0]), [torch.zeros(3, 2), torch.zeros(3, 4)], None)],
            "does not match",
        ),
        ([(torch.tensor([0.0, 1.0]), [torch.zeros(0, 2), torch.zeros(3, 2)], None)], "n_samples"),
    ],
    ids=["unsorted", "single-time", "nan", "mismatched-dims", "empty"],
)
def test_bad_snapshot_data(groups, match):
    with pytest.raises(ValueError, match=match):
        SnapshotDataset(groups)


def test_bad_batches_and_settings():
    dice = make_dice(dim=3)
    with pytest.raises(ValueError, match="n_times = len"):
        dice.loss(
            {
                "x": torch.zeros(3, 4, 3, dtype=torch.float64),
                "t": torch.tensor([0.0, 1.0], dtype=torch.float64),
            }
        )
    with pytest.raises(ValueError, match="x must have shape"):
        dice.loss(
            {
                "x": torch.zeros(2, 4, 5, dtype=torch.float64),
                "t": torch.tensor([0.0, 1.0], dtype=torch.float64),
            }
        )
    with pytest.raises(ValueError, match="strictly increasing"):
        dice.loss(
            {
                "x": torch.zeros(2, 4, 3, dtype=torch.float64),
                "t": torch.tensor([1.0, 0.0], dtype=torch.float64),
            }
        )
    with pytest.raises(ValueError, match="laplacian"):
        DICE(PotentialMLP(2), (2,), laplacian="trace")
    with pytest.raises(ValueError, match="n_cond=1"):
        DICE(PotentialMLP(2, n_params=1), (2,))
    for scale in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="potential_scale must be finite and > 0"):
            DICE(PotentialMLP(2), (2,), potential_scale=scale)


def test_marginal_speed_against_numpy():
    """Two groups of fields (2 channels, 5 points): one translating at a known rate per
    channel, one stretching; the estimate recomputed independently in numpy, and the
    translating group alone against its exact value ``sqrt(mean_c (v_c std_c)^2)``."""
    g = np.random.default_rng(0)
    base = g.normal(size=(40, 2, 5))
    velocity = np.array([3.0, -0.5])
    t_a = np.array([0.0, 0.1, 0.3, 0.6])
    moving = [base + velocity[None, :, None] * t for t in t_a]
    t_b = np.array([0.0, 0.5, 1.0])
    stretching = [g.normal(size=(30, 2, 5)) * (1 + 2 * t) + t**2 for t in t_b]

    def expected(groups):
        pooled = np.concatenate([p for _, pops in groups for p in pops])
        std = pooled.transpose(1, 0, 2).reshape(2, -1).std(1, ddof=1)
        squares = []
        for times, pops in groups:
            m = [p.transpose(1, 0, 2).reshape(2, -1).mean(1) for p in pops]
            sd = [p.transpose(1, 0, 2).reshape(2, -1).std(1, ddof=1) for p in pops]
            for k in range(len(times) - 1):
                gap = times[k + 1] - times[k]
                rates = ((m[k + 1] - m[k]) / gap) ** 2 + ((sd[k + 1] - sd[k]) / gap) ** 2
                squares.append((rates * std**2).mean())
        return np.sqrt(np.mean(squares)), std

    def dataset(groups):
        return SnapshotDataset(
            [(torch.tensor(t), [torch.tensor(p) for p in pops], None) for t, pops in groups],
            dtype=torch.float64,
        )

    both = [(t_a, moving), (t_b, stretching)]
    assert dataset(both).marginal_speed() == pytest.approx(expected(both)[0], rel=1e-6)
    _, std = expected([(t_a, moving)])
    exact = np.sqrt(np.mean((velocity * std) ** 2))
    assert dataset([(t_a, moving)]).marginal_speed() == pytest.approx(exact, rel=1e-6)
    assert dataset([(t_b, [stretching[0]] * 3)]).marginal_speed() == 0.0


def test_potential_scale_multiplies_the_velocity():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = make_dice(dim=3)
    scaled = make_dice(dim=3)
    scaled.potential_scale = 7.0
    for dice in (plain, scaled):
        dice.set_normalization(
            {
                "state_mean": torch.zeros(3),
                "state_std": torch.full((3,), 2.0),
                "time_offset": torch.tensor(0.0),
                "time_scale": torch.tensor(1.0),
            }
        )
    v_plain, s_plain = plain.velocity(x, 0.3)
    v_scaled, s_scaled = scaled.velocity(x, 0.3)
    torch.testing.assert_close(v_scaled, 7.0 * v_plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(s_scaled, 7.0 * s_plain, rtol=1e-12, atol=0)


def smooth_field(n, phase=0.3):
    x = (torch.arange(n) + 0.5) / n
    return (torch.sin(2 * math.pi * x + phase) + 0.5 * torch.cos(4 * math.pi * x))[None, None]


def test_fno_potential_velocity_is_resolution_consistent_and_trains():
    """The same FNO potential on 64 and 128 points gives the same velocity field.

    The unscaled gradient would differ by the factor 2 in cell volume; the functional
    derivative (gradient / cell volume) agrees up to discretisation error. Training needs
    the gradient of |grad s|^2: double backward through the FNO.
    """
    from slift_plugin.adapters.neuralop import operator_potential

    torch.manual_seed(0)
    net = operator_potential(
        "fno", state_channels=1, n_params=1, n_modes=(8,), hidden_channels=16, n_layers=2
    )
    dice = DICE(net, (1, None), n_params=1, dt=0.1)
    mu = torch.tensor([[0.5]])
    v64, _ = dice.velocity(smooth_field(64), 0.2, mu)
    v128, _ = dice.velocity(smooth_field(128), 0.2, mu)
    coarse = 0.5 * (v128[..., 0::2] + v128[..., 1::2])  # cell averages onto the 64 grid
    rel = float((coarse - v64).norm() / v64.norm())
    assert rel < 0.05, rel
    unscaled = float((coarse / 128 - v64 / 64).norm() / (v64 / 64).norm())
    assert unscaled > 0.4  # the raw gradients do differ by the cell volume

    # double backward: the DICE loss of an FNO potential has parameter gradients
    pops = [
        smooth_field(32, p).repeat(6, 1, 1)
        + 0.1 * k * torch.randn(6, 1, 32, generator=torch.Generator().manual_seed(k))
        for k, p in enumerate((0.0, 0.2, 0.4))
    ]
    data = SnapshotDataset([(torch.tensor([0.0, 0.5, 1.0]), pops, torch.tensor([0.5]))])
    dice.prepare(data)
    batch = next(data.iter_batches(6, torch.Generator().manual_seed(0)))
    dice.loss(batch).backward()
    grads = [p.grad for p in dice.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    res = fit(dice, data, epochs=5, batch_size=6, lr=1e-3, progress=False)
    assert all(math.isfinite(v) for v in res.losses)
    # and a field population is transported with the same rollout (diffusion variant too)
    dice.sigma = 0.05
    ens = rollout(dice, pops[0], n_steps=2, mu=torch.tensor([0.5]), seed=0, chunk_size=4)
    assert ens.dims == ("sample", "time", "channel", "x") and ens.shape == (6, 3, 1, 32)
    assert np.isfinite(ens.values).all() and not np.allclose(ens.values[:, 1], ens.values[:, 0])


def test_periodic_coordinates_give_a_periodic_velocity_and_stay_unnormalised():
    dice = DICE(PotentialMLP(2, periods=[2.0, None], hidden=16), (2,))
    dice.set_normalization(
        {
            "state_mean": torch.tensor([1.0, 2.0]),
            "state_std": torch.tensor([3.0, 4.0]),
            "time_offset": torch.tensor(0.0),
            "time_scale": torch.tensor(1.0),
        }
    )
    torch.testing.assert_close(dice.state_mean, torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(dice.state_std, torch.tensor([1.0, 4.0]))
    x = torch.tensor([[0.3, 1.0], [-0.7, 0.5]])
    v, s = dice.velocity(x, 0.4)
    v_shifted, s_shifted = dice.velocity(x + torch.tensor([2.0, 0.0]), 0.4)
    torch.testing.assert_close(v_shifted, v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_shifted, s, atol=1e-5, rtol=1e-5)
