"""rollout() refuses bad values up front with the exception type and a message that names
what was expected (issue 13, item 7), and hands the stepper back untouched."""

import re

import numpy as np
import pytest
import torch

from slift_plugin import MLP, StochasticLifting, rollout
from slift_plugin._rollout.engine import Job, execute
from slift_plugin._rollout.sinks import MemorySink
from slift_plugin.rollout import SEED_MAX


def make_stepper(n_params=0, dt=0.1):
    torch.manual_seed(0)  # weights only; the library itself never seeds globally
    backbone = MLP(2, 2, label_dim=3, n_cond=n_params, hidden=8, depth=2)
    return StochasticLifting(backbone, (2,), n_params=n_params, dt=dt)


def call(stepper=None, x0=None, **overrides):
    kw = dict(n_steps=2, n_samples=3, seed=1)
    kw.update(overrides)
    return rollout(stepper or make_stepper(), torch.zeros(2) if x0 is None else x0, **kw)


def snapshot(stepper):
    """Every parameter and buffer by name: the tensor object and a copy of its values."""
    return {k: (t, t.detach().clone()) for k, t in stepper.state_dict(keep_vars=True).items()}


def assert_untouched(stepper, before):
    after = stepper.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for name, (tensor, values) in before.items():
        assert after[name] is tensor, f"{name} was replaced"
        assert tensor.device == values.device, f"{name} is on {tensor.device}"
        assert torch.equal(tensor.detach(), values), f"{name} changed"


# -- the time axis ---------------------------------------------------------------------------
def test_zero_dt_is_refused():
    with pytest.raises(ValueError, match=r"dt must be a finite step > 0, got 0\.0"):
        call(dt=0)


def test_negative_dt_is_refused():
    with pytest.raises(ValueError, match=r"dt must be a finite step > 0, got -0\.1"):
        call(dt=-0.1)


def test_infinite_dt_is_refused():
    with pytest.raises(ValueError, match=r"dt must be a finite step > 0, got inf"):
        call(dt=float("inf"))


def test_explicit_nan_dt_is_refused():
    with pytest.raises(ValueError, match=r"dt must be a finite step > 0, got nan"):
        call(dt=float("nan"))


def test_string_dt_is_refused():
    with pytest.raises(TypeError, match=r"dt must be a real number, got '0\.1' \(str\)"):
        call(dt="0.1")


def test_zero_dt_of_the_stepper_is_refused():
    stepper = make_stepper()
    stepper.dt = 0.0  # a plain attribute: set after construction
    with pytest.raises(ValueError, match=r"the stepper's dt \(StochasticLifting\.dt\) must be"):
        call(stepper)


def test_a_stepper_cannot_be_built_with_a_negative_dt():
    with pytest.raises(ValueError, match=r"dt must be a finite step > 0, or nan .* got -1"):
        make_stepper(dt=-1)


def test_a_stepper_without_a_step_counts_time_in_steps():
    ens = call(make_stepper(dt=float("nan")), t0=2.0)
    assert ens["time"].values.tolist() == [2.0, 3.0, 4.0]


def test_non_finite_t0_is_refused():
    with pytest.raises(ValueError, match=r"t0 must be finite, got nan"):
        call(t0=float("nan"))


def test_string_t0_is_refused():
    with pytest.raises(TypeError, match=r"t0 must be a real number, got '0' \(str\)"):
        call(t0="0")


# -- counts ---------------------------------------------------------------------------------
def test_float_n_steps_is_refused():
    with pytest.raises(TypeError, match=r"n_steps must be an integer, got 2\.5 \(float\)"):
        call(n_steps=2.5)


def test_string_n_steps_is_refused():
    with pytest.raises(TypeError, match=r"n_steps must be an integer, got '2' \(str\)"):
        call(n_steps="2")


def test_bool_n_steps_is_refused():
    with pytest.raises(TypeError, match=r"n_steps must be an integer, got True \(bool\)"):
        call(n_steps=True)


def test_integral_float_n_samples_is_refused():
    with pytest.raises(TypeError, match=r"n_samples must be an integer, got 3\.0 \(float\)"):
        call(n_samples=3.0)


def test_float_chunk_size_is_refused():
    with pytest.raises(TypeError, match=r"chunk_size must be an integer, got 2\.0 \(float\)"):
        call(chunk_size=2.0)


def test_negative_n_samples_is_refused():
    with pytest.raises(ValueError, match=r"n_samples must be >= 1, got -3"):
        call(n_samples=-3)


def test_numpy_integers_are_counts():
    ens = call(n_steps=np.int64(2), n_samples=np.int32(3), chunk_size=np.uint8(2))
    assert ens.shape == (3, 3, 2)


# -- seeds ------------------------------------------------------------------------------------
SEEDS = re.escape("seed must be an integer in [0, 2**63 - 1]")


def test_string_seed_is_refused():
    with pytest.raises(TypeError, match=SEEDS + r", got '1' \(str\)"):
        call(seed="1")


def test_float_seed_is_refused():
    with pytest.raises(TypeError, match=SEEDS + r", got 1\.0 \(float\)"):
        call(seed=1.0)


def test_bool_seed_is_refused():
    with pytest.raises(TypeError, match=SEEDS + r", got True \(bool\)"):
        call(seed=True)


def test_negative_seed_is_refused():
    # it used to alias 2**64 - 1 (seeds were taken modulo 2**64)
    with pytest.raises(ValueError, match=SEEDS + r", got -1"):
        call(seed=-1)


def test_seed_of_2_to_the_64_minus_1_is_refused():
    with pytest.raises(ValueError, match=SEEDS + rf", got {2**64 - 1}"):
        call(seed=2**64 - 1)


def test_seed_just_past_the_largest_is_refused():
    with pytest.raises(ValueError, match=SEEDS + rf", got {2**63}"):
        call(seed=SEED_MAX + 1)


def test_the_largest_seed_and_numpy_seeds_are_accepted():
    largest, zero = call(seed=SEED_MAX), call(seed=0)
    assert not np.array_equal(largest.values, zero.values)
    assert largest.attrs["seed"] == SEED_MAX
    np.testing.assert_array_equal(call(seed=np.uint64(1)).values, call(seed=1).values)


# -- values ----------------------------------------------------------------------------------
def test_complex_x0_is_refused():
    with pytest.raises(TypeError, match=r"x0 must be real, got the complex dtype torch\.complex64"):
        call(x0=torch.tensor([1 + 2j, 0j], dtype=torch.complex64))


def test_complex_numpy_x0_is_refused():
    with pytest.raises(TypeError, match=r"x0 must be real, got the complex dtype"):
        call(x0=np.array([1 + 2j, 0j]))


def test_complex_mu_is_refused():
    with pytest.raises(TypeError, match=r"mu must be real, got the complex dtype"):
        call(make_stepper(n_params=1), mu=np.array([0.5 + 1j]))


def test_string_x0_is_refused():
    with pytest.raises(TypeError, match=r"x0 must hold real numbers, got an array of dtype <U1"):
        call(x0=np.array(["a", "b"]))


def test_unknown_on_nonfinite_is_refused():
    expected = re.escape("on_nonfinite must be one of ('raise', 'warn', 'ignore'), got 'panic'")
    with pytest.raises(ValueError, match=expected):
        call(on_nonfinite="panic")


def test_on_nonfinite_none_is_refused():
    with pytest.raises(ValueError, match=r"on_nonfinite must be one of .*, got None"):
        call(on_nonfinite=None)


# -- devices ---------------------------------------------------------------------------------
def test_meta_device_is_refused_and_the_weights_stay():
    stepper = make_stepper()
    stepper.train()
    before = snapshot(stepper)
    with pytest.raises(ValueError, match=r"cannot run on the meta device \(device='meta'\)"):
        call(stepper, device="meta")
    assert_untouched(stepper, before)
    assert stepper.training


def test_a_stepper_on_the_meta_device_is_refused():
    with torch.device("meta"):
        stepper = make_stepper()
    with pytest.raises(ValueError, match=r"meta device \(the stepper's device\)"):
        call(stepper)


def test_a_name_that_is_no_device_is_refused():
    with pytest.raises(ValueError, match=r"device='gpu' is not a torch device"):
        call(device="gpu")


def test_a_device_that_is_not_here_is_refused_and_the_weights_stay():
    stepper = make_stepper()
    before = snapshot(stepper)
    # no machine has 99 CUDA devices, and a CPU-only build has none
    with pytest.raises(ValueError, match=r"rollout cannot run on cuda:99 \(device='cuda:99'\)"):
        call(stepper, device="cuda:99")
    assert_untouched(stepper, before)


def test_a_device_index_torch_cannot_hold_is_refused():
    # torch.device keeps the index in 8 bits: "cuda:999" would silently be cuda:-25
    with pytest.raises(ValueError, match=r"device='cuda:999'"):
        call(device="cuda:999")


class RunFailed(Exception):
    pass


def failing_step(window, noise, mu, t):
    raise RunFailed


def test_the_weights_come_back_when_moving_back_fails():
    """Past the up-front checks (here: forced onto meta), a run that fails and a move
    back that fails (meta holds no data) still leave the stepper its own weights."""
    stepper = make_stepper()
    stepper.train()
    weight = stepper.backbone.net[0].weight
    weight.grad = torch.ones_like(weight)
    before, grad = snapshot(stepper), weight.grad
    job = Job(
        stepper=stepper,
        windows=torch.zeros(3, 2),
        mu=None,
        times=[0.0, 0.1],
        seed=0,
        chunk_size=3,
        device=torch.device("meta"),
        dtype=torch.float32,
        noise_shape=None,
    )
    sink = MemorySink((3, 2, 2), torch.float32, 0)
    with pytest.raises(RunFailed):  # the run's own error, not the failed move back
        execute(job, [(0, 3)], sink, failing_step, progress=False)
    assert_untouched(stepper, before)
    assert weight.grad is grad and grad.device.type == "cpu" and grad.eq(1).all()
    assert stepper.training
    assert np.isfinite(call(stepper).values).all()  # and it still works
