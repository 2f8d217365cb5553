"""Selection on held-out data in fit(): the score, the chosen epoch, early stopping, resume.

The truth is a run whose held-out score has a known minimum: a stepper
``x_next = x + a * z`` whose loss ``-a`` makes Adam raise ``a`` by exactly ``lr`` per step
(constant learning rate, one step per epoch), scored against held-out data with
``y = x + z'``, ``z'`` standard normal. The fair energy score is a proper scoring rule, so
its expectation is smallest at ``a = 1``: epoch 4 when ``lr = 0.25``.
"""

import math

import pytest
import scoringrules as sr
import torch
from conftest import interrupt_fit

from slift_plugin import MLP, Stepper, StochasticLifting, TransitionDataset, fit
from slift_plugin.selection import HeldOut, held_out_score

N_HELD_OUT = 4000


class Scale(Stepper):
    """``x_next = x + a * noise`` with a trainable ``a`` and the loss ``-a``."""

    def __init__(self):
        super().__init__((1,), dt=1.0)
        self.a = torch.nn.Parameter(torch.zeros(()))

    def noise_shape(self, grid_shape):
        return (1,)

    def step(self, window, noise=None, *, mu=None, t=None):
        return window + self.a * noise

    def loss(self, batch):
        return -self.a + 0.0 * batch["x"].sum()


def walk_data(n, seed):
    """Transitions ``x -> x + z`` (unit-variance steps), ``(n, 2 times, 1)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    return TransitionDataset(torch.stack([x, x + torch.randn(n, 1, generator=g)], 1))


FIT = dict(batch_size=8, lr=0.25, weight_decay=0.0, min_lr_ratio=1.0, grad_clip=None)


def test_held_out_score_equals_scoringrules_fair_energy_score():
    stepper, held_out = Scale(), HeldOut(walk_data(50, 1), n_members=5, seed=3)
    with torch.no_grad():
        stepper.a.fill_(0.7)
    batch = held_out.data.get_batch(torch.arange(50))
    noise = torch.randn(250, 1, generator=torch.Generator().manual_seed(3))
    members = (batch["x"].repeat_interleave(5, 0) + 0.7 * noise).reshape(50, 5, 1)
    truth = sr.es_ensemble(
        batch["y"].numpy(), members.numpy(), m_axis=-2, v_axis=-1, estimator="fair"
    ).mean()
    assert held_out_score(stepper, held_out, torch.device("cpu")) == pytest.approx(truth, 1e-6)


def test_selection_keeps_the_epoch_with_the_lowest_held_out_score():
    stepper = Scale()
    held_out = HeldOut(walk_data(N_HELD_OUT, 1), n_members=4, max_examples=N_HELD_OUT)
    result = fit(stepper, walk_data(8, 0), epochs=8, held_out=held_out, progress=False, **FIT)
    scores = result.held_out_scores
    # the loss of epoch e is taken before its step: -a = -0.25 (e - 1)
    assert len(scores) == 8 and result.losses == pytest.approx([-0.25 * e for e in range(8)])
    # a = 0.25 e after epoch e: the score falls to a = 1 (epoch 4), then rises
    assert min(range(8), key=scores.__getitem__) == 3
    assert result.best_epoch == 4
    assert float(stepper.a.detach()) == pytest.approx(1.0)  # the best weights are handed back
    assert scores[0] > scores[3] < scores[7] and not result.stopped_early
    # without held-out data the last epoch's weights stay
    plain = Scale()
    assert fit(plain, walk_data(8, 0), epochs=8, progress=False, **FIT).best_epoch is None
    assert float(plain.a.detach()) == pytest.approx(2.0)


def test_patience_stops_early_and_keeps_the_best_epoch():
    stepper = Scale()
    held_out = HeldOut(walk_data(N_HELD_OUT, 1), n_members=4, max_examples=N_HELD_OUT, patience=2)
    result = fit(stepper, walk_data(8, 0), epochs=20, held_out=held_out, progress=False, **FIT)
    assert result.stopped_early and result.best_epoch == 4
    assert result.epochs == len(result.losses) == len(result.held_out_scores) == 6
    assert float(stepper.a.detach()) == pytest.approx(1.0)


def test_selection_resumes_bit_identically(tmp_path):
    def run(path, interrupt):
        torch.manual_seed(0)
        sl = StochasticLifting(MLP(1, 1, label_dim=4, hidden=16), (1,), dt=1.0)
        data = walk_data(64, 0)
        data.labels = sl.fixed_labels(0)
        kw = dict(
            epochs=6,
            batch_size=16,
            checkpoint_dir=path,
            checkpoint_every=1,
            progress=False,
            held_out=HeldOut(walk_data(200, 1), n_members=3),
        )
        if interrupt:
            interrupt_fit(sl, data, after_steps=13, **kw)  # dies in epoch 4
            sl = StochasticLifting(MLP(1, 1, label_dim=4, hidden=16), (1,), dt=1.0)
        return sl, fit(sl, data, **kw)

    full, full_result = run(tmp_path / "a", interrupt=False)
    resumed, resumed_result = run(tmp_path / "b", interrupt=True)
    assert resumed_result.resumed_from_epoch == 3
    assert resumed_result.held_out_scores == full_result.held_out_scores
    assert resumed_result.best_epoch == full_result.best_epoch
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # another held-out setting does not resume this run
    with pytest.raises(Exception, match="cannot resume"):
        fit(
            resumed,
            walk_data(64, 0),
            epochs=6,
            batch_size=16,
            checkpoint_dir=tmp_path / "b",
            progress=False,
            held_out=HeldOut(walk_data(200, 1), n_members=5),
        )


def test_bad_held_out_settings_are_refused():
    with pytest.raises(ValueError, match="n_members must be >= 2"):
        HeldOut(walk_data(4, 0), n_members=1)
    with pytest.raises(ValueError, match="patience"):
        HeldOut(walk_data(4, 0), patience=0)
    with pytest.raises(TypeError, match="IndexedBatches"):
        HeldOut([{"x": torch.zeros(1)}])

    class Blown(Scale):
        def step(self, window, noise=None, *, mu=None, t=None):
            return window * math.inf

    blown = Blown()
    with pytest.raises(FloatingPointError, match="held-out score"):
        fit(blown, walk_data(8, 0), epochs=1, held_out=HeldOut(walk_data(8, 1)), progress=False)
