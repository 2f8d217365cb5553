"""fit(): convergence, atomic checkpoints, exact resume, corrupt checkpoints, bad data."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import interrupt_fit

from slift_plugin import (
    MLP,
    CheckpointError,
    IndexedGaussianLabels,
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

    # interrupted after epoch 4 (its checkpoint), at the first step of epoch 5
    interrupt_fit(make(), ds, 4 * math.ceil(len(ds) / 16), checkpoint_dir=tmp_path / "b", **kw)
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


def test_statistics_match_an_independent_computation_for_both_dataset_kinds():
    """history=2 with mu: increments are y - last state of the window, never 2-step jumps."""
    from slift_plugin import WithFixedLabels

    g = torch.Generator().manual_seed(3)
    states = torch.randn(5, 6, 2, 4, generator=g).cumsum(dim=1)  # (traj, time, C, grid)
    mu = torch.randn(5, 2, generator=g)
    ds = TransitionDataset(states, history=2, mu=mu)
    x = states.numpy()
    y = x[:, 2:]  # next states of the transitions (k = 1 .. T-2)
    inc = x[:, 2:] - x[:, 1:-1]
    ref_mean = y.transpose(2, 0, 1, 3).reshape(2, -1).mean(1)
    ref_std = y.transpose(2, 0, 1, 3).reshape(2, -1).std(1, ddof=1)
    ref_dstd = inc.transpose(2, 0, 1, 3).reshape(2, -1).std(1, ddof=1)
    ref_mu = np.repeat(mu.numpy(), 4, axis=0)  # 4 transitions per trajectory
    labelled = WithFixedLabels(ds, IndexedGaussianLabels((3,), seed=0))
    for stats in (ds.statistics(), labelled.statistics()):
        np.testing.assert_allclose(stats["state_mean"], ref_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["state_std"], ref_std, rtol=1e-5)
        np.testing.assert_allclose(stats["delta_std"], ref_dstd, rtol=1e-5)
        np.testing.assert_allclose(stats["param_mean"], ref_mu.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["param_std"], ref_mu.std(0, ddof=1), rtol=1e-5)


def test_fit_on_a_generic_dict_dataset_leaves_global_rng_alone():
    """The DataLoader path (neuraloperator-style datasets) is seeded like the fast path."""
    from slift_plugin import WithFixedLabels

    sl = make(label_dim=2)
    data = WithFixedLabels(TransitionDataset(linear_data(n=16)), sl.fixed_labels(seed=0))
    before = torch.get_rng_state()
    res = fit(sl, data, epochs=2, batch_size=8, progress=False)
    assert torch.equal(before, torch.get_rng_state())
    again = make(label_dim=2)
    res2 = fit(again, data, epochs=2, batch_size=8, progress=False)
    assert res.losses == res2.losses


def test_shape_and_normalisation_errors_are_clear_and_leave_state_alone():
    sl = make()
    with pytest.raises(ValueError, match="y must have the shape"):
        sl.loss({"x": torch.zeros(8, 2), "y": torch.zeros(8)})
    with pytest.raises(ValueError, match="delta_std must be positive"):
        sl.set_normalization(
            {
                "state_mean": torch.full((2,), 5.0),
                "state_std": torch.ones(2),
                "delta_std": -torch.ones(2),
            }
        )
    assert torch.equal(sl.state_mean, torch.zeros(2)) and not bool(sl.normalized)
    with pytest.raises(ValueError, match="n_cond=2"):
        StochasticLifting(MLP(2, 2, label_dim=1, n_cond=2), (2,))
    with pytest.raises(ValueError, match="history=2"):
        StochasticLifting(MLP(2, 2, label_dim=1), (2,), history=2)
    cond = StochasticLifting(MLP(2, 2, label_dim=1, n_cond=1), (2,), n_params=1)
    with pytest.raises(ValueError, match="dataset must carry mu"):
        cond.prepare(TransitionDataset(linear_data()))  # data without mu


def test_dataloader_path_sees_the_same_batches_as_the_get_batch_path():
    """Generic datasets are batched by index lists cut from the same seeded permutation."""
    from slift_plugin import WithFixedLabels

    labels = make(label_dim=2).fixed_labels(seed=0)
    fast = TransitionDataset(linear_data(n=20), labels=labels)  # get_batch
    generic = WithFixedLabels(TransitionDataset(linear_data(n=20)), labels)  # DataLoader
    kw = dict(epochs=3, batch_size=16, progress=False)  # 60 transitions: last batch of 12
    a, b = make(label_dim=2), make(label_dim=2)
    res_a, res_b = fit(a, fast, **kw), fit(b, generic, **kw)
    assert res_a.world_size == res_b.world_size == 1
    assert res_a.losses == pytest.approx(res_b.losses, rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_a_dataset_with_half_the_drawn_batches_protocol_is_refused():
    """iter_batches without steps_per_epoch would silently be batched by index instead."""

    class HalfDrawn(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.zeros(2), "y": torch.zeros(2)}

        def iter_batches(self, batch_size, generator):
            yield {"x": torch.zeros(batch_size, 2), "y": torch.zeros(batch_size, 2)}

    stepper = MeanRegression(MLP(2, 2, label_dim=0, hidden=8), (2,))
    with pytest.raises(TypeError, match="HalfDrawn has iter_batches but is not a .*DrawnBatches"):
        fit(stepper, HalfDrawn(), epochs=1, progress=False)


def test_epoch_loss_weights_batches_by_the_steppers_example_count():
    """The epoch mean weights each batch by ``stepper.examples_in(batch)``, not by a shape
    guess: a stepper that counts every example twice as heavy in the odd batch moves it."""
    data = TransitionDataset(linear_data(n=5, t=2))  # batches of 2, 2 and 1 example(s)

    class Counted(MeanRegression):
        def examples_in(self, batch):
            return 10 if batch["x"].shape[0] == 1 else batch["x"].shape[0]

    def run(cls):
        torch.manual_seed(0)
        stepper = cls(MLP(2, 2, label_dim=0, hidden=8), (2,))
        losses = []
        original = stepper.loss

        def recording(batch):
            loss = original(batch)
            losses.append((float(loss.detach()), stepper.examples_in(batch)))
            return loss

        stepper.loss = recording
        result = fit(stepper, data, epochs=1, batch_size=2, lr=0.0, progress=False)
        return result.losses[0], losses

    plain, plain_steps = run(MeanRegression)
    counted, counted_steps = run(Counted)
    assert [n for _, n in plain_steps] == [2, 2, 1]
    assert plain == pytest.approx(sum(v * n for v, n in plain_steps) / 5, rel=1e-6)
    assert counted == pytest.approx(sum(v * n for v, n in counted_steps) / 14, rel=1e-6)
    assert counted != pytest.approx(plain, rel=1e-3)


# -- resume belongs to the same run: seeds, data, stepper; one run per folder -------------------
def labelled(seed=0, data_seed=0):
    """A labelled SL stepper and its data; the data differ in values, not in length."""
    sl = make(label_dim=2)
    states = linear_data()
    if data_seed:
        states = states + 0.01 * torch.randn(
            states.shape, generator=torch.Generator().manual_seed(1)
        )
    return sl, TransitionDataset(states, labels=sl.fixed_labels(seed))


RESUME = dict(epochs=2, batch_size=16, progress=False, checkpoint_every=1)


def one_epoch_checkpoint(folder, sl, data):
    """A checkpoint after epoch 1 of 2: the run died at the first step of epoch 2."""
    interrupt_fit(sl, data, math.ceil(len(data) / 16), checkpoint_dir=folder, **RESUME)
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("finished", [False, True], ids=["interrupted", "finished"])
@pytest.mark.parametrize(
    "other, differs",
    [
        (dict(seed=1), "label seed: 0 in the checkpoint, 1 now"),
        (dict(data_seed=1), "sampled examples digest"),
    ],
    ids=["label_seed", "same_length_data"],
)
def test_resume_refuses_other_labels_or_data(tmp_path, finished, other, differs):
    sl, data = labelled()
    if finished:
        fit(sl, data, checkpoint_dir=tmp_path, **RESUME)
    else:
        one_epoch_checkpoint(tmp_path, sl, data)
    new_sl, new_data = labelled(**other)
    assert len(new_data) == len(data)
    before = [p.detach().clone() for p in new_sl.parameters()]
    with pytest.raises(CheckpointError, match="trained on other data or labels") as info:
        fit(new_sl, new_data, checkpoint_dir=tmp_path, **RESUME)
    assert differs in str(info.value) and "resume=False" in str(info.value)
    for p, q in zip(before, new_sl.parameters(), strict=True):
        assert torch.equal(p, q)  # neither loaded nor trained
    # the data of the checkpoint itself still resumes
    again, same = labelled()
    assert fit(again, same, checkpoint_dir=tmp_path, **RESUME).resumed_from_epoch >= 1


def test_resume_refuses_another_flow_matching_noise_seed(tmp_path):
    from slift_plugin import FlowMatching

    def flow(seed):
        torch.manual_seed(0)
        net = MLP(4, 2, label_dim=0, n_cond=1, hidden=16, depth=2)
        return FlowMatching(net, (2,), n_euler=2, seed=seed)

    data = TransitionDataset(linear_data())
    one_epoch_checkpoint(tmp_path, flow(0), data)
    with pytest.raises(
        CheckpointError, match=r"another stepper \(seed: 0 in the checkpoint, 7 now"
    ):
        fit(flow(7), data, checkpoint_dir=tmp_path, **RESUME)
    assert fit(flow(0), data, checkpoint_dir=tmp_path, **RESUME).resumed_from_epoch == 1


def test_resume_refuses_other_stored_labels_and_a_checkpoint_without_fingerprint(tmp_path):
    """Coupled labels live in a table: the digest covers them as it covers seeded ones."""
    from slift_plugin import StoredLabels

    g = torch.Generator().manual_seed(0)
    table = StoredLabels(torch.randn(192, 2, generator=g))
    other = StoredLabels(table.values + 0.5)
    fit(
        make(label_dim=2),
        TransitionDataset(linear_data(), labels=table),
        checkpoint_dir=tmp_path,
        **RESUME,
    )
    with pytest.raises(CheckpointError, match="other data or labels"):
        fit(
            make(label_dim=2),
            TransitionDataset(linear_data(), labels=other),
            checkpoint_dir=tmp_path,
            **RESUME,
        )
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["fingerprint"]  # as an older version wrote it
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="does not record the data and stepper"):
        fit(
            make(label_dim=2),
            TransitionDataset(linear_data(), labels=table),
            checkpoint_dir=tmp_path,
            **RESUME,
        )


def test_a_second_fit_into_a_held_folder_fails_and_the_first_finishes(tmp_path):
    """The second run starts while the first one trains (from inside its loss): refused."""
    data = TransitionDataset(linear_data())
    first, errors = make(), []
    loss = first.loss

    def loss_and_a_rival(batch):
        if not errors:
            rival = make()
            before = [p.detach().clone() for p in rival.parameters()]
            with pytest.raises(CheckpointError, match="is in use by another fit") as info:
                fit(rival, data, checkpoint_dir=tmp_path, **RESUME)
            errors.append(str(info.value))
            assert all(torch.equal(p, q) for p, q in zip(before, rival.parameters(), strict=True))
        return loss(batch)

    first.loss = loss_and_a_rival
    result = fit(first, data, checkpoint_dir=tmp_path, **RESUME)
    assert f"process {os.getpid()}" in errors[0] and ".fit.lock" in errors[0]
    assert result.epochs == 2 and (tmp_path / "last.pt").is_file()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.pt"]  # the lock is gone


HOLD_LOCK = """
import sys, time
from slift_plugin.checkpoint import lock_checkpoint_dir
with lock_checkpoint_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_lock_of_another_live_process_is_respected_until_it_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        sl = make()
        before = [p.detach().clone() for p in sl.parameters()]
        with pytest.raises(CheckpointError, match=f"process {holder.pid} on host"):
            fit(sl, TransitionDataset(linear_data()), checkpoint_dir=tmp_path, **RESUME)
        assert all(torch.equal(p, q) for p, q in zip(before, sl.parameters(), strict=True))
        assert (tmp_path / ".fit.lock").is_file() and not (tmp_path / "last.pt").exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays with its record
        holder.wait()
    assert json.loads((tmp_path / ".fit.lock").read_text())["pid"] == holder.pid
    result = fit(make(), TransitionDataset(linear_data()), checkpoint_dir=tmp_path, **RESUME)
    assert result.epochs == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    "content",
    [
        "",  # a holder killed between creating the file and writing its record
        '{"pid": 1, "host": "another-host.example"}',  # a run requeued onto another node
        '{"pid": 2',  # a half-written record
    ],
)
def test_a_lock_file_that_nobody_holds_is_taken_over(tmp_path, content):
    (tmp_path / ".fit.lock").write_text(content)
    result = fit(make(), TransitionDataset(linear_data()), checkpoint_dir=tmp_path, **RESUME)
    assert result.epochs == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.pt"]


def test_an_interrupted_fit_releases_its_lock(tmp_path):
    one_epoch_checkpoint(tmp_path, *labelled())
    assert sorted(f.name for f in tmp_path.iterdir()) == ["last.pt"]


def test_the_data_digest_sees_the_tensors_of_tuple_items():
    # A TensorDataset yields tuples: their tensors must enter the resume fingerprint, or
    # different data of the same length would resume silently.
    from torch.utils.data import TensorDataset

    from slift_plugin.train import _digest, _sample_of

    x = torch.arange(12.0).reshape(6, 2)
    same = [_digest(_sample_of(TensorDataset(x.clone(), x + 1), 4)) for _ in range(2)]
    other = _digest(_sample_of(TensorDataset(x, x + 2), 4))
    assert same[0] == same[1] != other
