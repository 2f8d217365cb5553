"""fit(): convergence, atomic checkpoints, exact resume, corrupt checkpoints, bad data."""

import math

import pytest
import torch

from slift_plugin import (
    MLP,
    CheckpointError,
    MeanRegression,
    StochasticLifting,
    TransitionDataset,
    fit,
    load_stepper,
    save_stepper,
)


def linear_data(n=64, t=4):
    g = torch.Generator().manual_seed(0)
    x = torch.empty(n, t, 2)
    x[:, 0] = torch.randn(n, 2, generator=g)
    for k in range(1, t):
        x[:, k] = 0.9 * x[:, k - 1] + 0.05
    return x


def make(label_dim=0):
    torch.manual_seed(0)
    net = MLP(2, 2, label_dim=label_dim, hidden=32, depth=2)
    return (StochasticLifting if label_dim else MeanRegression)(net, (2,))


def test_fit_learns_a_deterministic_map():
    sl = make()
    res = fit(
        sl, TransitionDataset(linear_data()), epochs=200, batch_size=32, lr=3e-3, progress=False
    )
    assert res.losses[-1] < 1e-3 * res.losses[0]
    x = torch.tensor([[1.0, -2.0]])
    with torch.no_grad():
        torch.testing.assert_close(sl.step(x), 0.9 * x + 0.05, atol=2e-2, rtol=0)


def test_resume_matches_uninterrupted_training(tmp_path):
    ds = TransitionDataset(linear_data())
    kw = dict(epochs=6, batch_size=16, lr=1e-2, progress=False, checkpoint_every=2)
    full = make()
    res_full = fit(full, ds, checkpoint_dir=tmp_path / "a", **kw)

    # interrupted after epoch 4: emulate by training a fresh model to epoch 4's checkpoint
    part = make()

    class Stop(Exception):
        pass

    calls = {"n": 0}
    original = part.loss

    def loss_then_stop(batch):
        calls["n"] += 1
        if calls["n"] > 4 * math.ceil(len(ds) / 16):  # 4 epochs worth of batches
            raise Stop
        return original(batch)

    part.loss = loss_then_stop
    with pytest.raises(Stop):
        fit(part, ds, checkpoint_dir=tmp_path / "b", **kw)
    resumed = make()
    res = fit(resumed, ds, checkpoint_dir=tmp_path / "b", **kw)
    assert res.resumed_from_epoch == 4
    assert res.losses == pytest.approx(res_full.losses, rel=1e-5)
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert not [f for f in (tmp_path / "b").iterdir() if f.name != "last.pt"]


def test_resume_with_other_settings_is_refused(tmp_path):
    ds = TransitionDataset(linear_data())
    fit(make(), ds, epochs=2, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="cannot resume"):
        fit(make(), ds, epochs=3, progress=False, checkpoint_dir=tmp_path)


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    sl = make()
    save_stepper(path, sl)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        load_stepper(path, make())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_stepper(tmp_path / "missing.pt", make())
    bad = tmp_path / "other.pt"
    save_stepper(bad, make(label_dim=4))  # different architecture
    with pytest.raises(CheckpointError, match="does not fit"):
        load_stepper(bad, make())


def test_checkpoint_roundtrip_keeps_normalisation(tmp_path):
    sl = make(label_dim=2)
    ds = TransitionDataset(linear_data(), labels=sl.fixed_labels(0))
    fit(sl, ds, epochs=2, progress=False)
    save_stepper(tmp_path / "m.pt", sl)
    other = make(label_dim=2)
    load_stepper(tmp_path / "m.pt", other)
    torch.testing.assert_close(other.delta_std, sl.delta_std)
    assert bool(other.normalized)
    x, lab = torch.randn(3, 2), torch.randn(3, 2)
    with torch.no_grad():
        torch.testing.assert_close(other(x, lab), sl(x, lab))


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_stepper(tmp_path / "m.pt", make())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "states, match",
    [
        (torch.zeros(0, 4, 2), "empty"),
        (torch.zeros(3, 1, 2), "at least history"),
        (torch.zeros(4, 2), "n_trajectories, n_times"),
        (torch.tensor([[[0.0], [float("nan")]]]), "NaN"),
    ],
)
def test_bad_datasets(states, match):
    with pytest.raises(ValueError, match=match):
        TransitionDataset(states)


def test_wrong_state_shape_in_training_batch():
    sl = make()
    with pytest.raises(ValueError, match="window must have shape"):
        sl.loss({"x": torch.zeros(4, 3), "y": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="label must have shape"):
        make(label_dim=3).loss({"x": torch.zeros(4, 2), "y": torch.zeros(4, 2)})
