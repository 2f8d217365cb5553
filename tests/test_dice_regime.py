"""DICE in its authors' regime (issue 12): many times per batch, float64, regularisers.

* snapshot batches of ``n_times`` x ``B`` keep both endpoints, so the trapezoid weights
  of every draw are a quadrature of the whole span;
* float64 end to end (dataset, loss, fit, rollout), checked against a float64 closed
  form of every term of the loss, regularisers included;
* the regularisers: ``kinetic_on_neighbours`` keeps the exact ``c(t)`` invariance (the
  property test in ``test_dice.py`` runs with it), ``alpha`` breaks it by the amount it
  must; on shifting Gaussians at lr 1e-3 the plain loss runs away below -1e3, ``alpha``
  holds it above its Cauchy-Schwarz bound, ``kinetic_on_neighbours`` above the infimum of
  the continuous problem where the populations overlap;
* the entropic variant (sigma in the loss and at sampling) on exact OU marginals
  reproduces the mean and variance at a held-out time.
"""

import math

import numpy as np
import pytest
import torch
import xarray as xr

from slift_plugin import DICE, PotentialMLP, SnapshotDataset, fit, rollout, trapezoid_weights
from slift_plugin.systems import ou_transition_moments

IDENTITY = {
    "state_mean": torch.zeros(2),
    "state_std": torch.ones(2),
    "time_offset": torch.tensor(0.0),
    "time_scale": torch.tensor(1.0),
}


# -- many snapshot times per batch -----------------------------------------------------------
def tagged_snapshots(times, n_times, n=5):
    """Population k holds the value k in channel 0: a batch shows which times it drew."""
    g = torch.Generator().manual_seed(0)
    pops = [
        torch.stack([torch.full((n,), float(k)), torch.randn(n, generator=g)], 1)
        for k in range(len(times))
    ]
    return SnapshotDataset([(times, pops, None)], n_times=n_times)


def test_batches_of_many_times_keep_both_endpoints_and_a_consistent_quadrature():
    times = torch.sort(torch.rand(41, generator=torch.Generator().manual_seed(1)) * 3).values
    data = tagged_snapshots(times, n_times=8)
    span, f = float(times[-1]) - float(times[0]), lambda t: torch.sin(3 * t)
    exact = (math.cos(3 * float(times[0])) - math.cos(3 * float(times[-1]))) / 3
    counts = torch.zeros(41)
    batches = [
        b for s in range(400) for b in data.iter_batches(16, torch.Generator().manual_seed(s))
    ]
    for batch in batches:
        assert batch["x"].shape == (8, 16, 2) and batch["t"].shape == (8,)
        index = batch["x"][:, :, 0]  # every sample of row k comes from the time t[k]
        assert (index == index[:, :1]).all()
        index = index[:, 0].long()
        torch.testing.assert_close(batch["t"], times[index])
        assert index[0] == 0 and index[-1] == 40 and (index[1:] > index[:-1]).all()
        counts[index] += 1
        t = batch["t"].double()
        w = trapezoid_weights(t)
        assert float(w.sum()) == pytest.approx(span, rel=1e-12)
        # trapezoid error bound on the drawn grid: span * max gap^2 * max|f''| / 12
        bound = span * float((t[1:] - t[:-1]).max()) ** 2 * 9 / 12
        assert abs(float((w * f(t)).sum()) - exact) <= bound
    # interior times are drawn uniformly: each in 6 of 39 places, binomial spread
    n = len(batches)
    p = 6 / 39
    assert (counts[[0, 40]] == n).all()
    assert (abs(counts[1:40] - n * p) < 5 * math.sqrt(n * p * (1 - p))).all(), counts


def test_snapshot_batches_are_reproducible_from_the_generator():
    data = tagged_snapshots(torch.linspace(0, 1, 30), n_times=6)

    def draw(seed):
        return list(data.iter_batches(4, torch.Generator().manual_seed(seed)))

    first, again, other = draw(3), draw(3), draw(4)
    assert all(
        torch.equal(a["x"], b["x"]) and torch.equal(a["t"], b["t"])
        for a, b in zip(first, again, strict=True)
    )
    assert not all(torch.equal(a["t"], b["t"]) for a, b in zip(first, other, strict=True))


def test_float64_snapshots_keep_their_digits():
    values = 1.0 + 1e-10 * np.arange(12.0).reshape(4, 3, 1)  # lost in float32
    ens = xr.DataArray(values, dims=("sample", "time", "channel"), coords={"time": [0.0, 0.1, 0.3]})
    data = SnapshotDataset.from_xarray(ens, dtype=torch.float64)
    assert data.dtype == torch.float64
    np.testing.assert_array_equal(data.groups[0][1][2].numpy(), values[:, 2])
    np.testing.assert_array_equal(data.groups[0][0].numpy(), [0.0, 0.1, 0.3])
    batch = next(data.iter_batches(5, torch.Generator().manual_seed(0)))
    assert batch["x"].dtype == batch["t"].dtype == torch.float64
    assert SnapshotDataset.from_xarray(ens).groups[0][1][2].dtype == torch.float32  # default
    with pytest.raises(ValueError, match="floating torch.dtype"):
        SnapshotDataset.from_xarray(ens, dtype=torch.int64)


# -- float64 and the loss against a closed form ----------------------------------------------
class TimeQuadratic(torch.nn.Module):
    """``s = -(1 + t) |x|^2 / 2`` (no parameters): every term of the loss in closed form."""

    n_cond = 0

    def forward(self, x, t, cond=None):
        return -0.5 * (1 + t) * (x**2).sum(1)


def closed_form_loss(x, t, sigma, lam, alpha, scale=1.0):
    """The DICE loss of ``scale`` times :class:`TimeQuadratic`, written out independently
    in numpy."""
    x, t = np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64)
    a, d = scale * (1 + t), np.diff(t)
    m2 = (x**2).sum(-1).mean(1)  # E_k |x|^2
    m4 = ((x**2).sum(-1) ** 2).mean(1)
    w = np.zeros_like(t)
    w[:-1] += d / 2
    w[1:] += d / 2
    plain = (w * 0.5 * a**2 * m2).sum()  # |v|^2/2 = a^2 |x|^2 / 2
    mixed = (d / 2 * 0.5 * (a[1:] ** 2 * m2[:-1] + a[:-1] ** 2 * m2[1:])).sum()
    kinetic = (1 - lam) * plain + lam * mixed
    boundary = 0.5 * (-0.5 * (a[:-1] + a[1:]) * (m2[1:] - m2[:-1])).sum()
    diffusion = 0.5 * sigma**2 * (w * -a * x.shape[-1]).sum()  # laplacian s = -a d
    squares = (d / 4 * (m4[:-1] + m4[1:]) * (a[:-1] ** 2 + a[1:] ** 2) / 4).sum()
    return kinetic - boundary + diffusion + alpha * squares


@pytest.mark.parametrize(
    "sigma, lam, alpha, scale",
    [(0.0, 0.0, 0.0, 1.0), (0.7, 0.5, 0.3, 1.0), (0.0, 0.2, 0.0, 1.0), (0.7, 0.5, 0.3, 37.0)],
)
def test_float64_loss_matches_the_closed_form_and_float32_does_not(sigma, lam, alpha, scale):
    t = torch.tensor([0.0, 0.1, 0.35, 1.0])
    x = torch.randn(4, 9, 2, generator=torch.Generator().manual_seed(0))  # a float32 batch
    expected = closed_form_loss(x, t, sigma, lam, alpha, scale)
    dice = DICE(
        TimeQuadratic(),
        (2,),
        sigma=sigma,
        kinetic_on_neighbours=lam,
        alpha=alpha,
        potential_scale=scale,
    )
    dice.set_normalization(IDENTITY)
    single = dice.loss({"x": x, "t": t}).item()
    dice.double()  # the float32 batch is cast to float64 by the loss
    double = dice.loss({"x": x, "t": t}).item()
    assert double == pytest.approx(expected, rel=1e-13, abs=1e-13)
    assert abs(single - expected) > 1e-10  # float32 really is less precise
    assert single == pytest.approx(expected, rel=1e-5)


def test_float64_dice_trains_and_samples_end_to_end():
    g = torch.Generator().manual_seed(0)
    times = torch.linspace(0, 1, 12, dtype=torch.float64)
    pops = [torch.randn(64, 2, generator=g, dtype=torch.float64) + float(s) for s in times]
    data = SnapshotDataset([(times, pops, None)], n_times=5, dtype=torch.float64)
    torch.manual_seed(0)
    dice = DICE(
        PotentialMLP(2, hidden=8, depth=2), (2,), sigma=0.1, dt=0.1, kinetic_on_neighbours=0.5
    )
    dice.double()
    res = fit(dice, data, epochs=2, batch_size=16, progress=False)
    assert all(math.isfinite(v) for v in res.losses)
    assert dice.param_device_dtype()[1] == torch.float64
    ens = rollout(dice, pops[0][:8], 3, seed=0)
    assert ens.dtype == np.float64 and np.isfinite(ens.values).all()
    # float32 data train a float64 stepper too: the loss casts the batch
    data32 = SnapshotDataset([(times, pops, None)], n_times=5)
    assert math.isfinite(fit(dice, data32, epochs=1, batch_size=16, progress=False).losses[0])


# -- the regularisers and the c(t) invariance -------------------------------------------------
def test_alpha_breaks_the_invariance_by_alpha_c_squared_per_unit_time():
    """With ``s + c``: every squared value gains ``2 c s + c^2``; the quadrature weights sum
    to ``t_K - t_0`` per function, two functions per gap: ``Delta = alpha c^2 span + O(c)``."""
    torch.manual_seed(0)
    t = torch.tensor([0.0, 0.2, 0.5, 1.3], dtype=torch.float64)
    x = torch.randn(4, 6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for alpha in (0.0, 0.3):
        dice = DICE(PotentialMLP(2, hidden=8, depth=2), (2,), alpha=alpha).double()
        base = dice.loss({"x": x, "t": t}).item()
        for c in (1e3, 1e4):
            dice.potential.net[-1].bias.data += c
            delta = dice.loss({"x": x, "t": t}).item() - base
            dice.potential.net[-1].bias.data -= c
            if alpha:
                assert delta / c**2 == pytest.approx(alpha * 1.3, rel=10 / c)
            else:
                assert abs(delta) < 1e-12 * c  # rounding only


def shifting_gaussians(shift, n=20_000, width=0.3):
    """``X_0 ~ N(0, width^2)``, ``X_1 ~ N(shift, width^2)``: ``X_1`` has mass where
    ``X_0`` has none."""
    g = torch.Generator().manual_seed(0)
    pops = [width * torch.randn(n, 1, generator=g) + shift * k for k in (0, 1)]
    return SnapshotDataset([(torch.tensor([0.0, 1.0]), pops, None)])


def adam_losses(data, steps, *, hidden, stop_below=-math.inf, **dice_kwargs):
    """Per-step minibatch losses of Adam at lr 1e-3 (batches of 256 particles per time)."""
    torch.manual_seed(0)
    dice = DICE(PotentialMLP(1, hidden=hidden, depth=2), (1,), **dice_kwargs)
    dice.prepare(data)
    opt = torch.optim.Adam(dice.parameters(), lr=1e-3)
    gen, losses = torch.Generator().manual_seed(1), []
    while len(losses) < steps:
        for batch in data.iter_batches(256, gen):
            loss = dice.loss(batch)
            losses.append(loss.item())
            if not loss.isfinite() or loss.item() < stop_below or len(losses) == steps:
                return losses
            opt.zero_grad()
            loss.backward()
            opt.step()
    return losses


def test_the_plain_loss_runs_away_and_alpha_bounds_it():
    """Two times, well separated populations, lr 1e-3 on 20k particles per time.

    Plain DICE lowers its loss without end (measured: -1e3 after about 600 steps, and on
    down); the exact flow has loss -shift^2/2 = -4.5. With ``alpha`` the loss can never
    fall below ``-1/(alpha d)`` = -10 (Cauchy-Schwarz, see DICE), and it does not.
    """
    data = shifting_gaussians(3.0)
    plain = adam_losses(data, 900, hidden=64, stop_below=-1e3)
    assert plain[-1] < -1e3 or not math.isfinite(plain[-1]), (len(plain), plain[-1])
    held = adam_losses(data, len(plain), hidden=64, alpha=0.1)
    assert all(math.isfinite(v) and v >= -10.0 - 1e-9 for v in held), min(held)
    assert min(held) < -9.0  # the bound is active: the runaway is held at it, not removed


def continuum_infimum(shift, width=0.3):
    """Infimum of the two-time loss with ``kinetic_on_neighbours=0.5`` for continuous
    populations: per potential ``min 1/4 int s'^2 m - 1/2 int s (rho_1 - rho_0)`` over the
    mixture ``m`` is ``-1/4 int F^2 / m`` with ``F`` the difference of the CDFs."""
    x = torch.linspace(-3, shift + 3, 200_001, dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), width)
    big_f = normal.cdf(x - shift) - normal.cdf(x)
    m = 0.5 * (normal.log_prob(x).exp() + normal.log_prob(x - shift).exp())
    return -2 * 0.25 * float((big_f**2 / m).sum() * (x[1] - x[0]))


def test_kinetic_on_neighbours_bounds_the_loss_where_the_populations_overlap():
    """Overlapping populations (shift 1.5 = 5 widths): plain DICE runs far below the
    infimum of the neighbour-kinetic loss of continuous populations (-3.80); with
    ``kinetic_on_neighbours=0.5`` the minibatch loss settles at it (measured over the
    last 100 of 400 steps: plain -29, mixed -3.2)."""
    data, floor = shifting_gaussians(1.5), continuum_infimum(1.5)
    assert floor == pytest.approx(-3.80, abs=0.01)
    plain = adam_losses(data, 400, hidden=32)
    mixed = adam_losses(data, 400, hidden=32, kinetic_on_neighbours=0.5)
    assert np.mean(plain[-100:]) < 3 * floor, np.mean(plain[-100:])
    assert np.mean(mixed[-100:]) > 1.3 * floor, np.mean(mixed[-100:])


# -- the entropic variant on exact Gaussian marginals -------------------------------------------
OU = dict(theta=1.0, sigma=0.5, m0=2.0, s0=0.3)


def ou_marginal(t):
    """Mean and variance of X_t for X_0 ~ N(m0, s0^2) under OU: closed form."""
    mean, var = ou_transition_moments(OU["m0"], t, OU["theta"], 0.0, OU["sigma"])
    return float(mean), float(var) + OU["s0"] ** 2 * math.exp(-2 * OU["theta"] * t)


def test_entropic_dice_reproduces_ou_marginals_at_a_held_out_time():
    """Snapshots every 0.2 on [0, 2], drawn independently from the exact marginals, with
    t = 1 left out; sigma = 0.5 in the loss and at sampling (Euler-Maruyama).

    Tolerance, from the sample sizes (N = 20000 per time in training, M = 10000 samples):
    four standard errors, ``4 sd sqrt(1/N + 1/M)`` = 0.049 sd for the mean and
    ``4 sqrt(2/N + 2/M)`` = 0.069 for the relative variance. Measured over six seeds:
    at most 0.025 sd and 5.9%. The control drops the noise at sampling.
    """
    n, m, g = 20_000, 10_000, torch.Generator().manual_seed(0)
    times = [round(0.2 * k, 6) for k in range(11) if k != 5]
    pops = []
    for t in times:
        mean, var = ou_marginal(t)
        pops.append(mean + math.sqrt(var) * torch.randn(n, 1, generator=g))
    data = SnapshotDataset([(torch.tensor(times), pops, None)])
    torch.manual_seed(0)
    dice = DICE(PotentialMLP(1, hidden=32, depth=2), (1,), sigma=OU["sigma"], dt=0.1, n_substeps=5)
    fit(dice, data, epochs=4, batch_size=256, lr=2e-3, progress=False)
    x0 = OU["m0"] + OU["s0"] * torch.randn(m, 1, generator=torch.Generator().manual_seed(1))
    mean, var = ou_marginal(1.0)
    tol_mean = 4 * math.sqrt(var) * math.sqrt(1 / n + 1 / m)
    tol_var = 4 * math.sqrt(2 / n + 2 / m)
    got = rollout(dice, x0, 10, seed=3).isel(time=-1).values[:, 0].astype(np.float64)
    assert abs(got.mean() - mean) < tol_mean, (got.mean() - mean) / math.sqrt(var)
    assert abs(got.var() / var - 1) < tol_var, got.var() / var - 1
    dice.sigma = 0.0  # control: the same velocity without the noise it was trained for
    flow = rollout(dice, x0, 10).isel(time=-1).values[:, 0].astype(np.float64)
    assert flow.var() / var - 1 < -5 * tol_var, flow.var() / var - 1
