"""rollout(out="x.zarr"): streamed ensembles equal in-memory ones; resume; bad stores;
fingerprints of bounded memory."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from slift_plugin import MLP, Stepper, StochasticLifting, rollout
from slift_plugin._rollout import engine
from slift_plugin._rollout.sinks import HostDrain
from slift_plugin.bench.memory import TensorMemoryTracker
from slift_plugin.store import DIGEST_PIECE_BYTES, DONE, EnsembleStore, tensor_digest

N, CHUNK, STEPS = 700, 128, 3  # 6 chunks, the last one short


def make_stepper(n_params=1):
    torch.manual_seed(0)  # weights only
    backbone = MLP(2, 2, label_dim=3, n_cond=n_params, hidden=16, depth=2)
    return StochasticLifting(backbone, (2,), n_params=n_params, dt=0.1)


class Field(Stepper):
    """A field stepper ``(C=1, grid=8)``: smoothing plus noise."""

    def __init__(self):
        super().__init__((1, 8), dt=0.5)
        self.register_buffer("weight", torch.tensor(0.3))

    def noise_shape(self, grid_shape):
        return (1, *grid_shape)

    def step(self, window, noise=None, *, mu=None, t=None):
        return window + self.weight * (window.roll(1, -1) - window) + 0.1 * noise

    def loss(self, batch):
        raise TypeError("a fixed test stepper: nothing to train")


def generate(path=None, stepper=None, x0=None, **overrides):
    kw = dict(n_steps=STEPS, n_samples=N, mu=[0.5], param_names=["a"], seed=4, chunk_size=CHUNK)
    kw.update(overrides)
    return rollout(stepper or make_stepper(), torch.zeros(2) if x0 is None else x0, out=path, **kw)


def test_streamed_ensemble_equals_the_in_memory_one_bit_for_bit(tmp_path):
    path = tmp_path / "ens.zarr"
    streamed = generate(path)
    assert not streamed.variable._in_memory  # opened lazily
    xr.testing.assert_identical(streamed.load(), generate())
    # whole trajectories per zarr chunk, chunked by chunk_size along sample
    assert zarr.open_array(path / "state").chunks == (CHUNK, STEPS + 1, 2)
    # nothing but the store in the directory: the skeleton was built aside and renamed
    assert [p.name for p in tmp_path.iterdir()] == ["ens.zarr"]


def test_fields_keep_grid_coords_in_the_store(tmp_path):
    grid = {"x": np.linspace(0, 1, 8, endpoint=False)}
    kw = dict(n_steps=2, n_samples=40, seed=1, chunk_size=16, coords=grid)
    x0 = torch.zeros(1, 8)
    streamed = rollout(Field(), x0, out=tmp_path / "f.zarr", **kw)
    xr.testing.assert_identical(streamed.load(), rollout(Field(), x0, **kw))
    assert streamed.dims == ("sample", "time", "channel", "x")


class Interrupt(Exception):
    pass


def interrupt_after(stepper, n_calls):
    """Make the backbone raise on its ``n_calls + 1``-th call (weights unchanged)."""
    calls = []

    def hook(module, args):
        if len(calls) == n_calls:
            raise Interrupt
        calls.append(args[0].shape[0])

    return stepper.backbone.register_forward_pre_hook(hook), calls


class StagedDrain(HostDrain):
    """The CUDA hand-over (a chunk reaches the sink one chunk late), here on the CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "staged": True})


@pytest.mark.parametrize("staged", [False, True])
def test_interrupted_generation_resumes_without_duplicates_or_gaps(tmp_path, monkeypatch, staged):
    if staged:  # chunk 1 is still in flight when chunk 2 dies: it is written all the same
        monkeypatch.setattr(engine, "HostDrain", StagedDrain)  # where execute() looks it up
    path = tmp_path / "ens.zarr"
    stepper = make_stepper()
    handle, calls = interrupt_after(stepper, 2 * STEPS + 1)  # dies in chunk 2's 2nd step
    with pytest.raises(Interrupt):
        generate(path, stepper)
    handle.remove()
    done = zarr.open_array(path / DONE)[:]
    assert done.tolist() == [True, True, False, False, False, False]
    partial = zarr.open_array(path / "state")
    assert np.isnan(partial[2 * CHUNK :]).all()  # the chunk in progress was never written

    counted = []
    stepper.backbone.register_forward_pre_hook(lambda m, a: counted.append(a[0].shape[0]))
    resumed = generate(path, stepper)
    # only the 4 missing chunks ran: 3 full, one of 700 - 5 * 128 = 60 samples
    assert counted == [CHUNK] * 3 * STEPS + [N - 5 * CHUNK] * STEPS
    xr.testing.assert_identical(resumed.load(), generate())
    assert zarr.open_array(path / DONE)[:].all()


def test_a_chunk_cut_short_while_writing_is_not_marked_done(tmp_path, monkeypatch):
    path = tmp_path / "ens.zarr"
    original = EnsembleStore.write

    def dies_halfway_through_chunk_3(self, lo, hi, values):
        if lo == 3 * CHUNK:
            self._state[lo : lo + 10] = values[:10].numpy()  # part of the data, then death
            raise Interrupt
        original(self, lo, hi, values)

    monkeypatch.setattr(EnsembleStore, "write", dies_halfway_through_chunk_3)
    with pytest.raises(Interrupt):
        generate(path)
    monkeypatch.undo()
    assert zarr.open_array(path / DONE)[:].tolist() == [True] * 3 + [False] * 3
    xr.testing.assert_identical(generate(path).load(), generate())


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(seed=5), "seed"),
        (dict(n_samples=N + 1), "n_samples"),
        (dict(chunk_size=CHUNK * 2), "chunk_size"),
        (dict(n_steps=STEPS + 1), "n_steps"),
        (dict(mu=[0.6]), "mu_sha256"),
        (dict(x0=torch.tensor([0.0, 1e-6])), "x0_sha256"),
        (dict(x0=torch.zeros(N, 2).index_fill_(0, torch.tensor([N - 1]), 1.0)), "x0_sha256"),
        (dict(autocast_dtype=torch.bfloat16), "autocast_dtype"),
        (dict(param_names=["b"]), "param_names"),
        (dict(param_names=None), "param_names"),
    ],
)
def test_a_store_of_another_generation_is_refused(tmp_path, change, key):
    path = tmp_path / "ens.zarr"
    generate(path)
    with pytest.raises(ValueError, match=f"cannot be resumed by this one.*{key}: store has"):
        generate(path, **change)


def test_other_coords_are_refused(tmp_path):
    path, x0 = tmp_path / "f.zarr", torch.zeros(1, 8)
    kw = dict(n_steps=2, n_samples=40, seed=1, chunk_size=16, out=path)
    rollout(Field(), x0, coords={"x": np.arange(8.0)}, **kw)
    rollout(Field(), x0, coords={"x": np.arange(8.0)}, **kw)  # the same: resumed
    with pytest.raises(ValueError, match="coords_sha256: store has"):
        rollout(Field(), x0, coords={"x": np.arange(8.0) / 8}, **kw)
    with pytest.raises(ValueError, match="coords_sha256: store has"):
        rollout(Field(), x0, coords={"y": np.arange(8.0)}, **kw)  # another grid name


def test_the_x0_digest_hashes_an_expanded_window_piece_by_piece():
    row = torch.arange(1000.0)
    shared = row.expand(4 * DIGEST_PIECE_BYTES // row.nbytes, -1)  # 64 MiB if materialised
    with TensorMemoryTracker() as tracker:
        digest = tensor_digest(shared)
    # one piece copied at a time (plus the shared row, viewed by the pieces)
    assert tracker.peak <= DIGEST_PIECE_BYTES + row.nbytes < shared.numel() * 4
    assert digest == tensor_digest(shared.clone())  # the bytes of the materialised tensor
    assert digest != tensor_digest(shared.clone().index_fill_(0, torch.tensor([7]), 0.0))
    assert tensor_digest(torch.tensor(1.0)) != tensor_digest(torch.tensor(2.0))  # 0-d


def test_another_stepper_or_other_weights_are_refused(tmp_path):
    path = tmp_path / "ens.zarr"
    generate(path)
    retrained = make_stepper()
    with torch.no_grad():
        retrained.backbone.net[0].bias.add_(1.0)
    with pytest.raises(ValueError, match="weights_sha256"):
        generate(path, retrained)
    other = StochasticLifting(MLP(2, 2, label_dim=3, n_cond=1, hidden=8, depth=1), (2,), n_params=1)
    with pytest.raises(ValueError, match="weights_sha256"):
        generate(path, other)
    with pytest.raises(ValueError, match="stepper: store has '.*StochasticLifting', this call"):
        rollout(Field(), torch.zeros(1, 8), STEPS, N, seed=4, chunk_size=CHUNK, out=path)


def test_a_failed_creation_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zarr.Group, "create_array", broken)
    with pytest.raises(OSError, match="disk full"):
        generate(tmp_path / "ens.zarr")
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_are_refused(tmp_path):
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a store")
    with pytest.raises(ValueError, match="exists and is a file, not a zarr store"):
        generate(a_file)
    with pytest.raises(ValueError, match="ending in '.zarr'"):
        generate(tmp_path / "ens.nc")
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w").attrs["something"] = 1
    with pytest.raises(ValueError, match="without a rollout fingerprint"):
        generate(foreign)
    plain_dir = tmp_path / "dir.zarr"
    plain_dir.mkdir()
    with pytest.raises(ValueError, match="not a zarr store written by rollout"):
        generate(plain_dir)
    assert a_file.read_text() == "not a store"  # nothing was touched


def killed_in_child(path, kill_where):
    """Run ``generate(path)`` in a child process that SIGKILLs itself at ``kill_where``."""
    code = f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import zarr
        from test_rollout_store import generate

        def die(*args, **kwargs):
            os.kill(os.getpid(), 9)
        {textwrap.indent(textwrap.dedent(kill_where), " " * 8).strip()}
        generate({str(path)!r})
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, env=env, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_store_killed_while_being_created_is_created_by_the_next_run(tmp_path):
    path = tmp_path / "ens.zarr"
    killed_in_child(path, "zarr.Group.create_array = die  # the skeleton is half built")
    (orphan,) = tmp_path.iterdir()  # the temporary store, never renamed into place
    assert orphan.name.startswith(".ens.zarr.") and orphan.name.endswith(".tmp")
    assert orphan.is_dir() and files_under(orphan)  # the coords were written
    other_target = tmp_path / ".ens2.zarr.host_1_0123456789abcdef.tmp"  # not ours to remove
    other_target.mkdir()

    xr.testing.assert_identical(generate(path).load(), generate())
    assert sorted(p.name for p in tmp_path.iterdir()) == [other_target.name, "ens.zarr"]


def test_a_store_killed_while_writing_a_chunk_resumes_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ens.zarr"
    # zarr writes each chunk file through a temporary "<key>.<uuid>.partial": die in chunk
    # 3's, after half of its bytes
    killed_in_child(
        path,
        """
        import zarr.storage._local as local
        put = local._put
        def put_or_die(file, value, exclusive=False):
            if file.parts[-5:] == ("state", "c", "3", "0", "0"):
                file.parent.mkdir(parents=True, exist_ok=True)
                with local._atomic_write(file, "wb") as f:
                    f.write(value.as_buffer_like()[: len(value) // 2])
                    f.flush()
                    die()
            return put(file, value, exclusive)
        local._put = put_or_die
        """,
    )
    partial = [f for f in files_under(path) if f.endswith(".partial")]
    assert len(partial) == 1 and partial[0].startswith("state/c/3/0/0.")
    assert zarr.open_array(path / DONE)[:].tolist() == [True] * 3 + [False] * 3

    counted = []
    stepper = make_stepper()
    stepper.backbone.register_forward_pre_hook(lambda m, a: counted.append(a[0].shape[0]))
    xr.testing.assert_identical(generate(path, stepper).load(), generate())
    assert counted == [CHUNK] * 2 * STEPS + [N - 5 * CHUNK] * STEPS  # chunks 3, 4 and 5
    assert [p.name for p in tmp_path.iterdir()] == ["ens.zarr"]
    assert not [f for f in files_under(path) if f.endswith((".partial", ".tmp"))]


def test_settings_that_change_values_but_not_weights_are_refused(tmp_path):
    # Flow matching's Euler steps change the ensemble without changing a weight: a store
    # of 20 steps must not be completed by a run with 1 step (mixed chunks, false attrs).
    from slift_plugin import FlowMatching

    torch.manual_seed(0)
    fm = FlowMatching(MLP(2, 1, label_dim=0, n_cond=1, hidden=8), (1,), n_euler=20, dt=0.1)
    fm.set_normalization({"state_mean": [0.0], "state_std": [1.0], "delta_std": [1.0]})
    out = tmp_path / "e.zarr"
    rollout(fm, torch.zeros(1), 2, 8, chunk_size=4, seed=0, out=out)
    fm.n_euler = 1
    with pytest.raises(ValueError, match="stepper_config: store has"):
        rollout(fm, torch.zeros(1), 2, 8, chunk_size=4, seed=0, out=out)
