"""The benchmark's competitors: conditional flow matching and energy-score training.

Checked against independent truth: the energy score against ``scoringrules``; the CFM
Euler sampler against the closed-form Gaussian-to-Gaussian velocity field; both trained
steppers against the exact Ornstein-Uhlenbeck transition law.
"""

import math

import numpy as np
import pytest
import scoringrules as sr
import torch
from conftest import interrupt_fit
from scipy import stats
from torch import Tensor, nn

from slift_plugin import (
    MLP,
    EnergyScoreLifting,
    FlowMatching,
    IndexedGaussianLabels,
    TransitionDataset,
    WithFixedLabels,
    fit,
    rollout,
)
from slift_plugin.labels import hash_seed
from slift_plugin.methods.energy_score import energy_score
from slift_plugin.systems import ornstein_uhlenbeck, ou_transition_moments

N_SAMPLE = 20_000
DT, THETA, SIGMA = 0.25, 1.0, 0.5


# -- the energy score -------------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 3, 7])
def test_energy_score_matches_scoringrules(m):
    """Equal to scoringrules' fair estimator to round-off; wrong formulas are far off."""
    g = torch.Generator().manual_seed(m)
    obs = torch.randn(50, 6, generator=g, dtype=torch.float64)
    ens = 1.3 * torch.randn(50, m, 6, generator=g, dtype=torch.float64) + 0.2
    ours = energy_score(obs, ens).numpy()
    truth = sr.es_ensemble(
        obs.numpy(), ens.numpy(), m_axis=-2, v_axis=-1, estimator="fair", backend="numpy"
    )
    np.testing.assert_allclose(ours, truth, rtol=1e-12, atol=1e-12)

    # controls: the check resolves the factors of the spread term
    skill = torch.linalg.vector_norm(ens - obs[:, None], dim=-1).mean(1)
    pairs = torch.cdist(ens, ens).sum((1, 2))  # sum over j != l (the diagonal is 0)
    no_half = skill - pairs / (m * (m - 1))
    biased = skill - pairs / (2 * m * m)  # scoringrules' "nrg" estimator
    for wrong in (no_half, biased):
        assert np.abs(wrong.numpy() - truth).max() > 1e-2


def test_energy_score_rejects_bad_shapes():
    with pytest.raises(ValueError, match="m >= 2"):
        energy_score(torch.zeros(3, 2), torch.zeros(3, 1, 2))
    with pytest.raises(ValueError, match=r"observation must have shape \(3, 2\)"):
        energy_score(torch.zeros(3, 4), torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match=r"ensemble \(B, m, D\)"):
        energy_score(torch.zeros(3, 2), torch.zeros(3, 2))


def test_energy_score_loss_scores_the_members_it_draws():
    """The loss equals scoringrules' score of the members rebuilt from the same draw.

    Member j of example b uses the backbone on x_b with label j of the (m, label_dim)
    normals that (seed, step 0, stream 0) gives index b; norms run over the whole
    standardised state (C=2 channels here). In eval mode the step counter stays at 0.
    """
    torch.manual_seed(0)
    es = EnergyScoreLifting(MLP(2, 2, label_dim=3, hidden=16), (2,), n_members=3, seed=4)
    es.set_normalization(
        {"state_mean": [0.1, -0.2], "state_std": [1.5, 0.5], "delta_std": [0.3, 0.7]}
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    index = torch.tensor([7, 0, 3, 12, 5])
    es.eval()
    with torch.no_grad():
        loss = es.loss({"x": x, "y": y, "index": index})
    labels = IndexedGaussianLabels((3, 3), hash_seed(4, 0, 0))(index)
    with torch.no_grad():
        members = torch.stack(
            [
                torch.stack(
                    [es.standardized_output(x[b : b + 1], labels[b, [j]])[0] for j in range(3)]
                )
                for b in range(5)
            ]
        )
    target = ((y - x) / es.delta_std).numpy()
    truth = sr.es_ensemble(
        target, members.numpy(), m_axis=-2, v_axis=-1, estimator="fair", backend="numpy"
    )
    assert loss.item() == pytest.approx(truth.mean(), rel=1e-5)

    # a backbone that ignores its label collapses the ensemble: ES = mean ||target||
    for p in es.backbone.parameters():
        nn.init.zeros_(p)
    expected = np.linalg.norm(target, axis=1).mean()
    assert es.loss({"x": x, "y": y, "index": index}).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "stepper",
    [
        EnergyScoreLifting(MLP(1, 1, label_dim=4, hidden=8), (1,), seed=0),
        FlowMatching(MLP(2, 1, label_dim=0, n_cond=1, hidden=8), (1,), seed=0),
    ],
    ids=["energy_score", "flow_matching"],
)
def test_fresh_noise_every_training_step_and_repeatable_eval(stepper):
    stepper.set_normalization({"state_mean": [0.0], "state_std": [1.0], "delta_std": [1.0]})
    batch = {
        "x": torch.linspace(-1, 1, 8)[:, None],
        "y": torch.zeros(8, 1),
        "index": torch.arange(8),
    }
    stepper.train()
    with torch.no_grad():
        first, second = stepper.loss(batch).item(), stepper.loss(batch).item()
        assert int(stepper.training_step) == 2 and first != second
        stepper.eval()
        assert stepper.loss(batch).item() == stepper.loss(batch).item()
    assert int(stepper.training_step) == 2
    assert "training_step" in stepper.state_dict()


# -- flow matching: the sampler against a closed-form velocity field --------------------
def gaussian_path(m: float, s: float, t: np.ndarray | Tensor, z):
    """Marginal velocity of straight paths between independent N(0, 1) and N(m, s^2).

    With z_t = (1-t) z_0 + t z_1: z_t ~ N(t m, (1-t)^2 + t^2 s^2) and
    Cov(z_1 - z_0, z_t) = t s^2 - (1-t), so E[z_1 - z_0 | z_t = z] is
    m + (t s^2 - (1-t)) / var_t (z - t m). Its exact flow maps z_0 to m + s z_0.
    """
    var = (1 - t) ** 2 + t**2 * s**2
    return m + (t * s**2 - (1 - t)) / var * (z - t * m)


def euler_affine(m: float, s: float, k: int) -> tuple[float, float]:
    """K explicit Euler steps of that field are affine in z_0: (a_K, b_K), float64."""
    a, b, h = 0.0, 1.0, 1.0 / k
    for i in range(k):
        t = i * h
        c = (t * s**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * s**2)
        a, b = a + h * (m + c * (a - t * m)), b + h * c * b
    return a, b


class ExactVelocity(nn.Module):
    """Hand-set velocity network: the target mean is m = 0.5 * standardised x_k."""

    label_dim, n_cond, in_features, out_features = 0, 1, 2, 1

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: Tensor, label: None, cond: Tensor) -> Tensor:
        m = 0.5 * x[:, :1].double()
        return gaussian_path(m, self.s, cond[:, -1:].double(), x[:, 1:].double()).float()


def test_euler_sampler_against_closed_form_gaussian_flow():
    s = 0.6
    fm = FlowMatching(ExactVelocity(s), (1,), n_euler=1)
    fm.set_normalization({"state_mean": [0.2], "state_std": [2.0], "delta_std": [0.3]})
    x = torch.tensor([[-1.0], [0.2], [1.4]]).repeat(400, 1)
    z0 = torch.randn(len(x), 1, generator=torch.Generator().manual_seed(0))
    m = 0.5 * (x - 0.2) / 2.0
    # one Euler step from s=0 lands on the mean for every z_0: v(z, 0) = m - z
    with torch.inference_mode():
        torch.testing.assert_close(fm.step(x, z0), x + 0.3 * m, atol=1e-6, rtol=0)
        for k in (2, 5, 20):
            fm.n_euler = k
            a, b = np.array([euler_affine(float(mi), s, k) for mi in m[:, 0]]).T
            expected = x[:, 0] + 0.3 * (torch.tensor(a) + torch.tensor(b) * z0[:, 0].double())
            torch.testing.assert_close(fm.step(x, z0)[:, 0].double(), expected, atol=1e-5, rtol=0)
            assert b[0] < s  # Euler shrinks the spread: K=5 gives 0.77 s, K=20 0.94 s
        # the exact flow z_0 -> m + s z_0; Euler's spread error is ~1.3/K relative
        # (b_2000 = 0.99935 s), i.e. <= 0.3 * 0.6 * 7e-4 * |z_0| < 5e-4 here
        fm.n_euler = 2000
        torch.testing.assert_close(fm.step(x, z0), x + 0.3 * (m + s * z0), atol=1e-3, rtol=0)
    assert fm.evals_per_step == 2000


def euler_reference(fm: FlowMatching, window: Tensor, z0: Tensor, mu: Tensor | None) -> Tensor:
    """The Euler loop written out plainly: new inputs ``[window | z]`` and ``[mu | s]``
    at every step."""
    inputs, cond = fm.standardized_inputs(window, mu)
    z, h = z0, 1.0 / fm.n_euler
    for i in range(fm.n_euler):
        s = torch.full((len(z), 1), i * h)
        c = s if cond is None else torch.cat([cond, s], 1)
        z = z + h * fm.velocity(torch.cat([inputs, z], 1), None, c)
    return fm.next_state(window, z)


def test_euler_steps_reuse_one_input_buffer_and_match_the_plain_loop_bit_for_bit():
    """step() fills ``[window | z]`` and ``[mu | s]`` in place instead of allocating them
    at every Euler step; the result is bit-identical to the plain loop."""
    torch.manual_seed(0)
    fm = FlowMatching(MLP(6, 3, label_dim=0, n_cond=2, hidden=16), (3,), n_params=1, n_euler=7)
    fm.set_normalization(
        {
            "state_mean": torch.randn(3),
            "state_std": torch.rand(3) + 0.5,
            "delta_std": torch.rand(3) + 0.1,
            "param_mean": torch.zeros(1),
            "param_std": torch.full((1,), 2.0),
        }
    )
    g = torch.Generator().manual_seed(1)
    x, z0, mu = (torch.randn(5, n, generator=g) for n in (3, 3, 1))
    seen = []
    forward = fm.velocity.forward

    def spy(inputs, label, cond):
        seen.append((inputs.data_ptr(), cond.data_ptr(), cond[0, -1].item()))
        return forward(inputs, label, cond)

    fm.velocity.forward = spy
    with torch.inference_mode():
        out = fm.step(x, z0.clone(), mu=mu)
        fm.velocity.forward = forward
        assert torch.equal(out, euler_reference(fm, x, z0, mu))
    assert len(seen) == 7 and len({(a, b) for a, b, _ in seen}) == 1, seen
    assert [s for *_, s in seen] == pytest.approx([i / 7 for i in range(7)])


# -- both methods learn the Ornstein-Uhlenbeck transition --------------------------------
@pytest.fixture(scope="module")
def ou_data():
    x0 = np.random.default_rng(0).uniform(-1.5, 1.5, 500)  # cover the state space
    return ornstein_uhlenbeck(
        n_samples=500, n_steps=4, dt=DT, x0=x0, theta=THETA, sigma=SIGMA, seed=0
    )


def one_step(stepper, x: float) -> np.ndarray:
    ens = rollout(stepper, torch.tensor([x]), n_steps=1, n_samples=N_SAMPLE, seed=123)
    return ens.isel(time=1, channel=0).values


def ks_to_normal(y: np.ndarray) -> float:
    """KS distance of the standardised sample to N(0, 1): the shape, not the moments."""
    return stats.kstest((y - y.mean()) / y.std(), "norm").statistic


def test_ks_shape_check_separates_non_gaussian_laws():
    """Control for the threshold 0.03: a Gaussian sample passes, uniform/bimodal fail."""
    rng = np.random.default_rng(0)
    assert ks_to_normal(rng.standard_normal(N_SAMPLE)) < 0.01
    assert ks_to_normal(rng.uniform(size=N_SAMPLE)) > 0.05
    assert (
        ks_to_normal(rng.choice([-1.0, 1.0], N_SAMPLE) + 0.5 * rng.standard_normal(N_SAMPLE)) > 0.03
    )


STARTS = (-0.8, 0.0, 0.6)


def test_flow_matching_learns_ou_transition(ou_data):
    """CFM with K=5 and K=20 Euler steps against the Euler-discretised exact flow.

    Given x_k the standardised increment is N(m, s^2) with s = sqrt(var)/delta_std, so a
    perfectly learned velocity sampled with K Euler steps has mean exactly m (Euler
    preserves the mean of this affine flow) and std b_K * delta_std (see euler_affine):
    std / sqrt(var) is predicted 0.77 for K=5 and 0.94 for K=20; measured over 3 seeds
    0.75-0.81 and 0.93-1.00. Tolerances: mean within 0.15 transition std (measured
    <= 0.06; ~100 training transitions per start region give ~0.1 std of estimation
    error), std within 10% of the K-step prediction (measured <= 7%; the two predictions
    are 22% apart) and, for K=20, within 12% of the truth. The training loss stays large:
    CFM regresses z_1 - z_0, whose conditional variance is irreducible.
    """
    torch.manual_seed(0)
    fm = FlowMatching(MLP(2, 1, label_dim=0, n_cond=1, hidden=64), (1,), dt=DT, seed=0)
    res = fit(
        fm,
        TransitionDataset.from_xarray(ou_data),
        epochs=60,
        batch_size=128,
        lr=3e-3,
        weight_decay=0.0,
        progress=False,
    )
    assert res.losses[-1] < 0.9 * res.losses[0]
    for k in (5, 20):
        fm.n_euler = k
        assert fm.evals_per_step == k
        for x in STARTS:
            mean, var = ou_transition_moments(x, DT, THETA, 0.0, SIGMA)
            s = math.sqrt(var) / float(fm.delta_std)
            predicted = euler_affine(0.0, s, k)[1] / s  # std ratio of the sampler itself
            y = one_step(fm, x)
            ratio = y.std() / math.sqrt(var)
            assert abs(y.mean() - mean) < 0.15 * math.sqrt(var), (k, x, y.mean(), mean)
            assert abs(ratio / predicted - 1) < 0.10, (k, x, ratio, predicted)
            if k == 20:
                assert abs(ratio - 1) < 0.12, (x, ratio)
            assert ks_to_normal(y) < 0.03, (k, x, ks_to_normal(y))


def test_energy_score_learns_ou_transition(ou_data):
    """Energy-score training with the minimum 2 members is calibrated on OU.

    Measured (2 members, 30 epochs, 3 seeds): mean error <= 0.09 transition std (largest
    at the edge of the data), std ratio 0.99-1.07 (4 members: 1.02-1.08), KS distance
    <= 0.016. Tolerances: mean within 0.2 std, std within 12%, KS < 0.03 (see
    test_ks_shape_check_separates_non_gaussian_laws).
    """
    torch.manual_seed(0)
    es = EnergyScoreLifting(MLP(1, 1, label_dim=8, hidden=64), (1,), dt=DT, n_members=2)
    assert es.evals_per_step == 1 and es.noise_shape(()) == (8,)
    res = fit(
        es,
        TransitionDataset.from_xarray(ou_data),
        epochs=30,
        batch_size=128,
        lr=3e-3,
        weight_decay=0.0,
        progress=False,
    )
    assert res.losses[-1] < 0.9 * res.losses[0]
    for x in STARTS:
        mean, var = ou_transition_moments(x, DT, THETA, 0.0, SIGMA)
        y = one_step(es, x)
        assert abs(y.mean() - mean) < 0.2 * math.sqrt(var), (x, y.mean(), mean)
        assert abs(y.std() / math.sqrt(var) - 1) < 0.12, (x, y.std(), math.sqrt(var))
        assert ks_to_normal(y) < 0.03, (x, ks_to_normal(y))


# -- reproducibility and resume ---------------------------------------------------------
def make_fm(seed=0):
    torch.manual_seed(0)
    return FlowMatching(MLP(4, 2, label_dim=0, n_cond=1, hidden=16, depth=2), (2,), seed=seed)


def make_es(seed=0):
    torch.manual_seed(0)
    return EnergyScoreLifting(
        MLP(2, 2, label_dim=4, hidden=16, depth=2), (2,), n_members=3, seed=seed
    )


def noisy_data():
    g = torch.Generator().manual_seed(0)
    return TransitionDataset(torch.randn(32, 4, 2, generator=g).cumsum(1))


@pytest.mark.parametrize("make", [make_fm, make_es])
def test_same_seed_same_losses_and_exact_resume(make, tmp_path):
    ds = noisy_data()
    kw = dict(epochs=6, batch_size=16, lr=1e-2, progress=False, checkpoint_every=2)
    full = make()
    res_full = fit(full, ds, checkpoint_dir=tmp_path / "a", **kw)
    per_epoch = math.ceil(len(ds) / 16)
    steps = 6 * per_epoch
    assert int(full.training_step) == steps
    assert fit(make(), ds, **kw).losses == res_full.losses
    assert fit(make(seed=1), ds, **kw).losses != res_full.losses  # the seed matters

    # interrupted during epoch 5; the epoch-4 checkpoint must carry the step counter
    interrupt_fit(make(), ds, 4 * per_epoch + 1, checkpoint_dir=tmp_path / "b", **kw)
    resumed = make()
    res = fit(resumed, ds, checkpoint_dir=tmp_path / "b", **kw)
    assert res.resumed_from_epoch == 4
    assert res.losses == pytest.approx(res_full.losses, rel=1e-6, abs=0)
    assert int(resumed.training_step) == steps
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("make", [make_fm, make_es])
def test_training_noise_follows_the_example_index_not_its_place_in_the_batch(make):
    """The loss of a batch is the size-weighted mean of the losses of any split of it, in
    any order: what makes a data-parallel step draw the noise of one process. (Noise
    drawn per position would give rank 1's first example rank 0's first noise.)"""
    stepper = make()
    stepper.set_normalization(
        {"state_mean": torch.zeros(2), "state_std": torch.ones(2), "delta_std": torch.ones(2)}
    )
    batch = noisy_data().get_batch(torch.arange(10, 22))
    stepper.eval()  # the step counter stays: every call draws step 0's noise
    with torch.no_grad():
        whole = stepper.loss(batch)
        order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
        halves = [{k: v[order[i : i + 6]] for k, v in batch.items()} for i in (0, 6)]
        split = sum(stepper.loss(half) for half in halves) / 2
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="no 'index' entry.*TransitionDataset.*WithFixedLabels"):
        stepper.loss({"x": batch["x"], "y": batch["y"]})
    with pytest.raises(ValueError, match=r"one integer per example, shape \(12,\)"):
        stepper.loss({**batch, "index": batch["index"][:3]})


def test_non_finite_data_is_refused_before_training():
    """The losses do not scan batches for NaN/Inf (a host sync per step): the datasets do,
    at construction (TransitionDataset) or in prepare()'s statistics (WithFixedLabels)."""
    states = torch.zeros(4, 3, 2)
    with pytest.raises(ValueError, match="mu contains 1 NaN"):
        TransitionDataset(states, mu=torch.tensor([[0.0], [math.nan], [0.0], [0.0]]))

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.zeros(2), "y": torch.full((2,), math.inf if i == 2 else 0.0)}

    def unreachable(batch):
        raise AssertionError("a non-finite batch reached the loss")

    for make in (make_fm, make_es):
        stepper = make()
        stepper.loss = unreachable
        with pytest.raises(ValueError, match="y contains 2 NaN/Inf"):
            fit(stepper, WithFixedLabels(Items()), epochs=1, progress=False)


# -- neural-operator backbones -----------------------------------------------------------
def test_field_states_with_lifted_fno():
    """The FNO spellings the benchmark uses: CFM with history 2, ES with a noise field."""
    from slift_plugin.adapters.neuralop import lifted_operator

    c, grid, b = 2, (16,), 3
    velocity = lifted_operator(
        "fno",
        state_channels=c,
        history=3,
        label_dim=0,
        n_cond=2,
        n_modes=(4,),
        hidden_channels=8,
        n_layers=2,
    )
    fm = FlowMatching(velocity, (c, None), history=2, n_params=1, n_euler=3)
    window, y = torch.randn(b, 2 * c, *grid), torch.randn(b, c, *grid)
    mu = torch.rand(b, 1)
    fm.set_normalization(
        {
            "state_mean": torch.zeros(c),
            "state_std": torch.ones(c),
            "delta_std": torch.ones(c),
            "param_mean": torch.zeros(1),
            "param_std": torch.ones(1),
        }
    )
    assert fm.noise_shape(grid) == (c, *grid)
    index = torch.arange(b)
    assert fm.loss({"x": window, "y": y, "mu": mu, "index": index}).ndim == 0
    z0 = torch.randn(b, c, *grid, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = fm.step(window, z0, mu=mu)
        # independent Euler integration on the raw FNO (identity normalisation): the input
        # is [window, z] on channels, the conditioning [mu, s], the result x_k + z_1
        z = z0.clone()
        for i in range(3):
            cond = torch.cat([mu, torch.full((b, 1), i / 3)], dim=1)
            z = z + velocity(torch.cat([window, z], dim=1), None, cond) / 3
    torch.testing.assert_close(got, window[:, c:] + z, rtol=1e-5, atol=1e-6)

    backbone = lifted_operator(
        "fno",
        state_channels=c,
        label_dim=4,
        injection="noise_field",
        n_modes=(4,),
        hidden_channels=8,
        n_layers=2,
    )
    es = EnergyScoreLifting(backbone, (c, None), n_members=2)
    es.set_normalization(
        {"state_mean": torch.zeros(c), "state_std": torch.ones(c), "delta_std": torch.ones(c)}
    )
    assert es.noise_shape(grid) == (4, *grid)
    es.eval()  # the training-step counter stays put: the noise depends on the index alone
    first = es.loss({"x": window[:, :c], "y": y, "index": index})
    again = es.loss({"x": window[:, :c], "y": y, "index": index})
    other = es.loss({"x": window[:, :c], "y": y, "index": index + 100})
    assert torch.isfinite(first) and first == again and first != other


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("velocity", "error", "match"),
    [
        (MLP(2, 1, label_dim=4, n_cond=1), ValueError, "label_dim=0"),
        (MLP(1, 1, label_dim=0, n_cond=1), ValueError, r"expected \(history \+ 1\) x C"),
        (MLP(2, 1, label_dim=0, n_cond=0), ValueError, r"n_params \+ 1 = 1"),
        (MLP(2, 2, label_dim=0, n_cond=1), ValueError, "returns 2 features"),
        (nn.Linear(2, 1), TypeError, "window_channels"),
    ],
)
def test_flow_matching_rejects_wrong_velocity_networks(velocity, error, match):
    with pytest.raises(error, match=match):
        FlowMatching(velocity, (1,))


def test_bad_settings_and_batches_give_clear_errors():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_euler must be an integer >= 1"):
            FlowMatching(MLP(2, 1, label_dim=0, n_cond=1), (1,), n_euler=bad)
    fm = FlowMatching(MLP(2, 1, label_dim=0, n_cond=1), (1,))
    with pytest.raises(ValueError, match="n_euler"):
        fm.n_euler = 0
    assert fm.n_euler == 20 and fm.evals_per_step == 20
    for bad in (1, 0, 2.5):
        with pytest.raises(ValueError, match="n_members must be an integer >= 2"):
            EnergyScoreLifting(MLP(1, 1, label_dim=4), (1,), n_members=bad)
    with pytest.raises(ValueError, match="label_dim > 0"):
        EnergyScoreLifting(MLP(1, 1, label_dim=0), (1,))

    es = EnergyScoreLifting(MLP(1, 1, label_dim=4), (1,))
    ok = {"x": torch.zeros(4, 1), "y": torch.zeros(4, 1), "index": torch.arange(4)}
    for stepper in (fm, es):
        with pytest.raises(ValueError, match="window must have shape"):
            stepper.loss({**ok, "x": torch.zeros(4, 2)})
        with pytest.raises(ValueError, match="y must have the shape of one state"):
            stepper.loss({**ok, "y": torch.zeros(4, 2)})
        with pytest.raises(ValueError, match="n_params=0"):
            stepper.loss({**ok, "mu": torch.zeros(4, 1)})
    with pytest.raises(ValueError, match=r"noise \(the flow's z_0\) must have shape \(4, 1\)"):
        fm.step(ok["x"], torch.zeros(4, 3))
    with pytest.raises(ValueError, match="got None"):
        fm.step(ok["x"])
