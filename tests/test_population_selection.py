"""Selection by rollouts on held-out populations (HeldOutPopulations), for DICE and kin.

The truth is an Ornstein-Uhlenbeck population ``dx = -theta x dt + dW`` from a start far
from equilibrium, and a stepper that takes the exact OU transition with a trainable
``theta``: at the true ``theta`` its rollouts have the held-out populations' law, so the
score sits at the floor (1); elsewhere the means drift apart and the score grows. Its loss
``-theta`` makes Adam raise ``theta`` by ``lr`` per step, so the epoch with the true value
is known beforehand.
"""

import math

import dcor
import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from slift_plugin import (
    DICE,
    HeldOut,
    HeldOutPopulations,
    PotentialMLP,
    SnapshotDataset,
    Stepper,
    TransitionDataset,
    fit,
)
from slift_plugin.metrics import energy_distance, same_law_energy_distance
from slift_plugin.selection import Selection

TRUE_THETA, DT, N_TIMES = 1.0, 0.1, 11


class ExactOU(Stepper):
    """The exact OU transition over ``dt`` with rate ``theta`` (trainable), unit noise."""

    def __init__(self, theta=TRUE_THETA, history=1):
        super().__init__((1,), history=history, dt=DT)
        self.theta = torch.nn.Parameter(torch.tensor(float(theta)))

    def noise_shape(self, grid_shape):
        return (1,)

    def step(self, window, noise=None, *, mu=None, t=None):
        decay = torch.exp(-self.theta * self.dt)
        spread = torch.sqrt((1 - decay**2) / (2 * self.theta))
        return decay * window + spread * noise

    def loss(self, batch):
        return -self.theta + 0.0 * batch["x"].sum()


class Doubling(Stepper):
    """``x -> 2 x``: deterministic, so a score can be computed by hand."""

    def __init__(self):
        super().__init__((2,), dt=DT)
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def noise_shape(self, grid_shape):
        return None

    def step(self, window, noise=None, *, mu=None, t=None):
        return 2 * window

    def loss(self, batch):
        return self.unused


def ou_populations(n, seed, start=3.0):
    """Independent draws of the OU law at ``t_k = k DT`` from ``N(start, 0.3^2)``."""
    g = torch.Generator().manual_seed(seed)
    times = torch.arange(N_TIMES, dtype=torch.float64) * DT
    mean = start * torch.exp(-TRUE_THETA * times)
    var = 0.09 * torch.exp(-2 * TRUE_THETA * times) + (1 - torch.exp(-2 * TRUE_THETA * times)) / (
        2 * TRUE_THETA
    )
    pops = [
        (m + v.sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)).float()
        for m, v in zip(mean, var, strict=True)
    ]
    return SnapshotDataset([(times.float(), pops, None)])


def test_same_law_energy_distance_is_the_expected_distance_of_two_gaussian_samples():
    # E|X - X'| of two standard normals in 2-D is sqrt(pi) (a Rayleigh law of scale sqrt 2)
    g = torch.Generator().manual_seed(0)
    n, m, draws = 20, 30, 1500
    distances, floors = [], []
    for _ in range(draws):
        y = torch.randn(m, 2, generator=g, dtype=torch.float64)
        distances.append(float(energy_distance(torch.randn(n, 2, generator=g), y)))
        floors.append(same_law_energy_distance(y, n))
    truth = math.sqrt(math.pi) * (1 / n + 1 / m)
    for values in (distances, floors):  # within four standard errors of the truth
        assert abs(np.mean(values) - truth) < 4 * np.std(values) / math.sqrt(draws)
    assert np.std(floors) < np.std(distances) / 5  # no split: a steadier floor
    y = torch.randn(m, 3, generator=g)
    assert same_law_energy_distance(y, n) == pytest.approx(
        pdist(y.double().numpy()).mean() * (1 / n + 1 / m), rel=1e-6
    )
    with pytest.raises(ValueError, match="two samples"):
        same_law_energy_distance(y[:1], n)
    with pytest.raises(ValueError, match="n_other"):
        same_law_energy_distance(y, 0)


def test_selection_protocol_covers_both_criteria():
    populations = HeldOutPopulations(ou_populations(64, 0))
    transitions = HeldOut(TransitionDataset(torch.randn(8, 2, 1)))
    assert isinstance(populations, Selection) and isinstance(transitions, Selection)


def test_score_equals_a_hand_computation_with_dcor():
    g = torch.Generator().manual_seed(5)
    times = torch.tensor([0.0, 0.1, 0.3])
    pops = [torch.randn(n, 2, generator=g) * s for n, s in ((40, 1.0), (50, 2.0), (60, 8.0))]
    data = SnapshotDataset([(times, pops, None)])
    criterion = HeldOutPopulations(data, n_samples=30, seed=9)
    x0 = pops[0][torch.randperm(40, generator=torch.Generator().manual_seed(9))[:30]]
    x0 = x0.double().numpy()

    expected = []
    for k, steps in ((1, 1), (2, 3)):
        ref = pops[k].double().numpy()
        perfect = pdist(ref).mean() * (1 / 30 + 1 / ref.shape[0])
        expected.append(dcor.energy_distance(2.0**steps * x0, ref) / perfect)
    score = criterion.score(Doubling(), torch.device("cpu"))
    assert score == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_the_true_law_scores_at_the_floor_and_a_wrong_one_far_above():
    cpu = torch.device("cpu")
    at_truth = []
    for seed in range(6):  # one rollout's score scatters (0.5-1.6 at 4000 particles)
        criterion = HeldOutPopulations(ou_populations(2000, seed), n_samples=2000, seed=seed)
        at_truth.append(criterion.score(ExactOU(TRUE_THETA), cpu))
        assert at_truth[-1] < 2.5
    assert 0.7 < np.mean(at_truth) < 1.3
    assert criterion.score(ExactOU(0.75), cpu) > 30 * np.mean(at_truth)
    assert criterion.score(ExactOU(1.25), cpu) > 30 * np.mean(at_truth)


def test_fit_keeps_the_epoch_whose_rollouts_match_the_held_out_populations():
    stepper = ExactOU(theta=0.25)
    criterion = HeldOutPopulations(ou_populations(2000, 3), n_samples=2000, seed=4)
    result = fit(
        stepper,
        TransitionDataset(torch.randn(8, 2, 1)),
        epochs=6,
        batch_size=8,
        lr=0.25,
        weight_decay=0.0,
        min_lr_ratio=1.0,
        grad_clip=None,
        progress=False,
        held_out=criterion,
    )
    # Adam raises theta by lr per step: 0.5, 0.75, 1.0 (the truth), 1.25, ...
    assert result.best_epoch == 3
    assert stepper.theta.item() == pytest.approx(TRUE_THETA, abs=1e-4)
    assert criterion.score(stepper, torch.device("cpu")) == min(result.held_out_scores)


def test_an_epoch_that_blows_up_is_passed_over_and_training_goes_on():
    class FragileOU(ExactOU):  # diverges below theta = 0.6
        def step(self, window, noise=None, *, mu=None, t=None):
            return super().step(window, noise) * (math.inf if self.theta < 0.6 else 1.0)

    stepper = FragileOU(theta=0.25)
    criterion = HeldOutPopulations(ou_populations(2000, 3), n_samples=2000, seed=4)
    kw = dict(batch_size=8, lr=0.25, weight_decay=0.0, min_lr_ratio=1.0, grad_clip=None)
    data = TransitionDataset(torch.randn(8, 2, 1))
    result = fit(stepper, data, epochs=4, progress=False, held_out=criterion, **kw)
    assert result.held_out_scores[0] == math.inf and math.isfinite(result.held_out_scores[1])
    assert result.best_epoch == 3
    with pytest.raises(FloatingPointError, match="not finite after any of the 1 epochs"):
        fit(FragileOU(theta=0.25), data, epochs=1, progress=False, held_out=criterion, **kw)


def test_fit_selects_a_dice_stepper_by_rollouts():
    torch.manual_seed(0)
    data = ou_populations(512, 6)
    dice = DICE(PotentialMLP(1, hidden=16, depth=2), (1,), dt=DT, n_substeps=2)
    criterion = HeldOutPopulations(ou_populations(512, 7), times=[5, 10], patience=50)
    result = fit(dice, data, epochs=4, batch_size=64, progress=False, held_out=criterion)
    assert len(result.held_out_scores) == 4
    assert result.best_epoch == 1 + int(np.argmin(result.held_out_scores))
    assert criterion.score(dice, torch.device("cpu")) == pytest.approx(
        min(result.held_out_scores), rel=1e-6
    )


def test_a_blown_up_rollout_scores_infinite():
    class Exploding(Doubling):
        def step(self, window, noise=None, *, mu=None, t=None):
            return window * math.inf

    pops = [torch.randn(8, 2, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    criterion = HeldOutPopulations(SnapshotDataset([(torch.tensor([0.0, 0.1]), pops, None)]))
    assert criterion.score(Exploding(), torch.device("cpu")) == math.inf


def test_bad_populations_and_steppers_are_refused():
    cpu = torch.device("cpu")
    with pytest.raises(TypeError, match="SnapshotDataset"):
        HeldOutPopulations(TransitionDataset(torch.randn(8, 2, 1)))
    with pytest.raises(ValueError, match=r"outside \[1, 10\]"):
        HeldOutPopulations(ou_populations(16, 0), times=[0, 5])
    with pytest.raises(ValueError, match="n_samples"):
        HeldOutPopulations(ou_populations(16, 0), n_samples=1)
    with pytest.raises(ValueError, match="patience"):
        HeldOutPopulations(ou_populations(16, 0), patience=0)
    criterion = HeldOutPopulations(ou_populations(16, 0))
    with pytest.raises(ValueError, match="history == 1"):
        criterion.score(ExactOU(history=2), cpu)
    off_grid = ExactOU()
    off_grid.dt = 0.03
    with pytest.raises(ValueError, match="whole number"):
        criterion.score(off_grid, cpu)
    with pytest.raises(TypeError, match="Selection"):
        fit(ExactOU(), TransitionDataset(torch.randn(8, 2, 1)), epochs=1, held_out=object())
