"""rollout(): determinism, chunking, one backbone call per step, layout, bad input; the
engine (in-place noise, history views, per-step op budget, CUDA-graph plumbing, autocast)."""

import collections
import importlib
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils._python_dispatch import TorchDispatchMode

from slift_plugin import MLP, MeanRegression, Stepper, StochasticLifting, rollout
from slift_plugin._rollout import engine
from slift_plugin._rollout.sinks import HostDrain
from slift_plugin._rollout.steps import GraphedStep, check_fast_paths
from slift_plugin.labels import hash_seed
from slift_plugin.rollout import SEED_BLOCK

# the module (the package attribute `rollout` is the function), where rollout() looks up
# the step engine and the fast-path check: what a test patches to reach them
rollout_module = importlib.import_module("slift_plugin.rollout")


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


# -- the engine: noise, windows, host work, fast paths -------------------------------------
class Echo(Stepper):
    """``x_next = mean of the window's states + noise``: elementwise, no BLAS, so the
    result is a pure function of x0 and the noise, and bit-exact comparisons hold."""

    def __init__(self, history=1, d=2):
        super().__init__((d,), history=history, dt=1.0)
        self.register_buffer("scale", torch.ones(()))
        self.noises = []  # every noise tensor the step received, cloned

    def noise_shape(self, grid_shape):
        return (self.n_channels,)

    def step(self, window, noise=None, *, mu=None, t=None):
        self.noises.append(noise.clone())
        states = window.reshape(window.shape[0], self.history, self.n_channels)
        return states.mean(1) + self.scale * noise

    def loss(self, batch):
        raise TypeError("a fixed test stepper: nothing to train")


@pytest.mark.parametrize("chunk_size", [1, 100, SEED_BLOCK, SEED_BLOCK + 1, 3 * SEED_BLOCK])
def test_noise_is_bit_identical_for_any_chunk_size(chunk_size):
    n = 2 * SEED_BLOCK + 50
    ref = rollout(Echo(), torch.zeros(2), n_steps=3, n_samples=n, seed=2, chunk_size=n)
    got = rollout(Echo(), torch.zeros(2), n_steps=3, n_samples=n, seed=2, chunk_size=chunk_size)
    assert np.array_equal(got.values, ref.values)


def test_every_seed_block_draws_its_own_stream():
    """Block b's noise is the stream of a generator seeded with hash_seed(seed, b)."""
    seed, n_blocks = 3, 3
    stepper = Echo()
    ens = rollout(stepper, torch.zeros(2), n_steps=2, n_samples=n_blocks * SEED_BLOCK, seed=seed)
    noises = torch.stack(stepper.noises, 1)  # one chunk: (sample, step, 2)
    for b in range(n_blocks):
        g = torch.Generator().manual_seed(hash_seed(seed, b))
        rows = slice(b * SEED_BLOCK, (b + 1) * SEED_BLOCK)
        for k in range(2):  # step k is the block's (k + 1)-th draw
            expected = torch.randn((SEED_BLOCK, 2), generator=g)
            assert torch.equal(noises[rows, k], expected), (b, k)
    # so the same x0 gives other samples in another block (Echo from 0: x_1 = noise)
    first = ens.isel(time=1).values
    assert not np.allclose(first[:SEED_BLOCK], first[SEED_BLOCK : 2 * SEED_BLOCK])
    assert np.array_equal(first, noises[:, 0].numpy())


def test_history_windows_match_a_concatenating_reference():
    h, n, steps = 3, 5, 6
    x0 = torch.randn(n, h, 2, generator=torch.Generator().manual_seed(0))
    stepper = Echo(history=h)
    ens = rollout(stepper, x0, n_steps=steps, seed=1, chunk_size=n)
    window, expected = x0.reshape(n, h * 2), []
    for noise in stepper.noises:  # the old way: shift the window with torch.cat
        x_next = window.reshape(n, h, 2).mean(1) + noise
        expected.append(x_next)
        window = torch.cat([window[:, 2:], x_next], dim=1)
    np.testing.assert_array_equal(ens.values[:, 1:], torch.stack(expected, 1).numpy())
    # chunks of 2 (a shorter last chunk reuses the sliced buffers) give the same
    chunked = rollout(Echo(history=h), x0, n_steps=steps, seed=1, chunk_size=2)
    np.testing.assert_array_equal(chunked.values, ens.values)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("history", [1, 3])
def test_the_step_loop_adds_almost_nothing_to_the_step(history):
    """Per step: the stepper's own ops, one in-place draw per seed block, one copy."""
    sl = make_stepper(history=history)
    x0 = torch.zeros(1, history, 2) if history > 1 else torch.zeros(2)
    counts = {}
    for steps in (2, 12):
        with OpCounter() as c:
            rollout(sl, x0, n_steps=steps, n_samples=2 * SEED_BLOCK, chunk_size=2 * SEED_BLOCK)
        counts[steps] = c.ops
    per_step = {k: (counts[12][k] - counts[2][k]) / 10 for k in counts[12]}
    window = torch.zeros(2 * SEED_BLOCK, history * 2)
    noise = torch.zeros(2 * SEED_BLOCK, 3)
    with torch.inference_mode(), OpCounter() as bare:
        sl.step(window, noise)
    extra = {k: v - bare.ops[k] for k, v in per_step.items() if v - bare.ops[k]}
    # two blocks -> two randn; one copy into the trajectory; history > 1 slices a view
    # of the trajectory buffer (no cat, no allocation)
    allowed = {"randn": 2, "copy_": 1, "select": 1, "slice": 1, "flatten": 1}
    assert all(v <= allowed.get(k, 0) for k, v in extra.items()), sorted(extra.items())
    # and no host synchronisation per step (item(), float(tensor), bool(tensor))
    assert counts[12]["_local_scalar_dense"] == counts[2]["_local_scalar_dense"]


class FakeGraph(GraphedStep):
    """The CUDA-graph path with its static buffers but an eager 'replay' (runs on CPU)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, capture=False, **kwargs)


def test_cuda_graph_buffer_logic_matches_eager_on_cpu(monkeypatch):
    sl = make_stepper(history=2, n_params=1)
    x0 = torch.randn(300, 2, 2, generator=torch.Generator().manual_seed(3))
    kw = dict(n_steps=4, mu=torch.tensor([0.2]), seed=7, chunk_size=128)  # 3 chunks, 2 sizes
    eager = rollout(sl, x0, **kw)
    monkeypatch.setattr(rollout_module, "GraphedStep", FakeGraph)
    monkeypatch.setattr(rollout_module, "check_fast_paths", lambda *args: None)
    graphed = rollout(sl, x0, cuda_graph=True, **kw)
    xr.testing.assert_identical(graphed, eager)


def test_cuda_graph_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        rollout(make_stepper(), torch.zeros(2), 2, n_samples=2, cuda_graph=True)
    with pytest.raises(ValueError, match="Echo declares cuda_graph_safe = False"):
        check_fast_paths(Echo(), torch.device("cuda"), True, None)
    with pytest.raises(ValueError, match="autocast_dtype must be one of"):
        rollout(make_stepper(), torch.zeros(2), 2, n_samples=2, autocast_dtype=torch.float64)


def test_bfloat16_autocast_runs_and_stays_close_to_float32():
    sl = make_stepper()
    kw = dict(n_steps=5, n_samples=256, seed=0)
    ref = rollout(sl, torch.zeros(2), **kw).values
    got = rollout(sl, torch.zeros(2), autocast_dtype=torch.bfloat16, **kw).values
    assert got.dtype == np.float32 and got.shape == ref.shape
    # bf16 keeps 8 mantissa bits: each step's increment is off by a few 2**-8 of its size
    # (rounded inputs, weights and outputs of each Linear), and the errors of 5 steps add
    # up. Allow 4 * 2**-8 of the largest increment per step; a wrong noise draw would be
    # off by the sample spread, which is larger.
    step_size = np.abs(np.diff(ref, axis=1)).max()
    tol = kw["n_steps"] * 4 * 2**-8 * step_size
    err = np.abs(got - ref).max()
    assert 0 < err < tol < ref[:, -1].std(0).min(), (err, tol)


@pytest.mark.parametrize("device", ["cpu", "mps", "xpu"])
def test_only_cuda_stages_chunks_through_pinned_buffers(device):
    """Without a CUDA event there is no telling when a non_blocking copy is done."""
    received = []

    class Sink:
        def write(self, lo, hi, values):
            received.append((lo, hi, values.clone()))

    drain = HostDrain(Sink(), torch.device(device), (4, 3), torch.float32)
    assert not drain.staged and not drain._buffers
    drain.push(0, 4, torch.ones(4, 3))  # a CPU tensor stands in for the device chunk
    assert len(received) == 1 and received[0][2].eq(1).all()  # written at once


def test_staged_drain_hands_chunks_over_one_behind_and_intact():
    received = {}

    class Sink:
        def write(self, lo, hi, values):
            received[(lo, hi)] = values.clone()

    drain = HostDrain(Sink(), torch.device("cpu"), (4, 3), torch.float32, staged=True)
    source = torch.empty(4, 3)  # reused for every chunk, like the device buffer
    for i, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 10)]):
        source[: hi - lo] = float(i)
        drain.push(lo, hi, source[: hi - lo])
        assert len(received) == i  # one chunk behind
    drain.flush()
    assert sorted(received) == [(0, 4), (4, 8), (8, 10)]
    for i, key in enumerate(sorted(received)):
        assert (received[key] == float(i)).all() and received[key].shape[0] == key[1] - key[0]


# -- blow-ups: on_nonfinite -------------------------------------------------------------------
class BlowUp(Stepper):
    """State ``(count, when)``: ``count`` goes up by one per step and turns into ``value``
    at step ``when`` (each sample carries its own ``when`` in ``x0``); no noise, no BLAS."""

    def __init__(self, value=float("inf")):
        super().__init__((2,), dt=0.5)
        self.register_buffer("value", torch.tensor(value))

    def noise_shape(self, grid_shape):
        return None

    def step(self, window, noise=None, *, mu=None, t=None):
        count, when = window[:, 0] + 1, window[:, 1]
        count = torch.where(count == when, self.value, count)
        return torch.stack([count, when], 1)

    def loss(self, batch):
        raise TypeError("a fixed test stepper: nothing to train")


def blow_up_x0(n, when):
    """``x0`` of :class:`BlowUp`: sample ``i`` blows up at step ``when.get(i)`` (or never)."""
    return torch.tensor([[0.0, float(when.get(i, 10**6))] for i in range(n)])


# sample 6 is the first to blow up (step 3, with sample 7; sample 5 only at step 4)
EARLY = {5: 4, 6: 3, 7: 3}
BLOW = dict(n_steps=6, chunk_size=4, t0=1.0)  # chunks [0, 4), [4, 8), [8, 10)


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan")])
def test_a_blow_up_raises_naming_the_first_step_and_global_sample(value):
    with pytest.raises(FloatingPointError) as err:
        rollout(BlowUp(value), blow_up_x0(10, EARLY), **BLOW)
    message = str(err.value)
    assert "first at step 3 (time 2.5) of sample 6" in message, message
    assert "(the earliest in samples [4, 8), 3 of which hold NaN/Inf)" in message, message
    assert "Samples [4, 8) were not kept" in message, message


def test_large_finite_values_are_not_a_blow_up():
    big = torch.finfo(torch.float32).max  # a sum or a difference of these would overflow
    ens = rollout(BlowUp(big), blow_up_x0(10, EARLY), **BLOW)
    assert np.isfinite(ens.values).all() and ens.values.max() == big


def test_warn_warns_once_and_keeps_the_values():
    when = {**EARLY, 9: 2}  # the last chunk blows up too: not reported again
    with pytest.warns(RuntimeWarning) as record:
        ens = rollout(BlowUp(), blow_up_x0(10, when), on_nonfinite="warn", **BLOW)
    assert len(record) == 1, [str(w.message) for w in record]
    assert "first at step 3 (time 2.5) of sample 6" in str(record[0].message)
    # the values are those of the stepper, blown up exactly where it blew up
    bad = ~np.isfinite(ens.values[:, :, 0])
    expected = np.zeros_like(bad)
    for sample, step in when.items():
        expected[sample, step:] = True
    assert np.array_equal(bad, expected)


def test_ignore_is_silent_and_returns_the_same_values():
    x0 = blow_up_x0(10, EARLY)
    with pytest.warns(RuntimeWarning):
        warned = rollout(BlowUp(), x0, on_nonfinite="warn", **BLOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ignored = rollout(BlowUp(), x0, on_nonfinite="ignore", **BLOW)
    xr.testing.assert_identical(ignored, warned)


class StagedDrain(HostDrain):
    """The CUDA hand-over (a chunk reaches the sink one chunk late), here on the CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "staged": True})


@pytest.mark.parametrize(
    "staged, done",
    # staged: chunk [8, 10) is in flight when chunk [4, 8) is refused, and is written
    [(False, [True, False, False]), (True, [True, False, True])],
)
def test_a_blow_up_leaves_a_zarr_store_resumable(tmp_path, monkeypatch, staged, done):
    import zarr

    from slift_plugin.store import DONE

    if staged:
        monkeypatch.setattr(engine, "HostDrain", StagedDrain)  # where execute() looks it up
    path, x0 = tmp_path / "ens.zarr", blow_up_x0(10, EARLY)
    with pytest.raises(FloatingPointError, match="step 3 .* of sample 6"):
        rollout(BlowUp(), x0, out=path, **BLOW)
    assert zarr.open_array(path / DONE)[:].tolist() == done
    assert np.isnan(zarr.open_array(path / "state")[4:8]).all()  # never written
    # the same generation resumes (on_nonfinite is no part of it) and keeps the values
    with pytest.warns(RuntimeWarning, match="sample 6"):
        resumed = rollout(BlowUp(), x0, out=path, on_nonfinite="warn", **BLOW)
    with pytest.warns(RuntimeWarning):
        xr.testing.assert_identical(
            resumed.load(), rollout(BlowUp(), x0, on_nonfinite="warn", **BLOW)
        )


@pytest.mark.parametrize("action, per_chunk", [("raise", 1), ("warn", 1), ("ignore", 0)])
def test_the_check_is_one_device_reduction_per_chunk(action, per_chunk):
    """Not per step: the count is the same for 2 and 12 steps (and none for 'ignore')."""
    for steps in (2, 12):
        with OpCounter() as c:
            rollout(Echo(), torch.zeros(2), steps, n_samples=30, chunk_size=10, on_nonfinite=action)
        assert c.ops["aminmax"] == 3 * per_chunk, (steps, c.ops["aminmax"])


def test_sdeint_inherits_the_default_raise():
    from slift_plugin.adapters.torchsde import sdeint

    y0 = blow_up_x0(3, {1: 2})
    with pytest.raises(FloatingPointError, match="first at step 2 .* of sample 1"):
        sdeint(BlowUp(), y0, torch.arange(5) * 0.5)
    # torchsde's own behaviour (NaN paths returned silently) on request
    ys = sdeint(BlowUp(), y0, torch.arange(5) * 0.5, on_nonfinite="ignore")
    assert not torch.isfinite(ys[2:, 1]).all() and torch.isfinite(ys[:, [0, 2]]).all()
