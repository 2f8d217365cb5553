"""The stepper contract, checked on every stepper of ``ALL_STEPPERS`` (tests/steppers.py).

Each test takes one :class:`~steppers.StepperCase` and knows nothing about the method:
what it needs comes from the :class:`slift_plugin.Stepper` contract (``noise_shape``,
``step``, ``loss``, ``evals_per_step``, ``requires_grad_in_step``) and from the case
(how to build the stepper, its data, its backbone modules). A stepper added to the list
is checked by all of them; ``test_every_stepper_class_has_a_case`` fails until it is.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import interrupt_fit
from steppers import ALL_STEPPERS, StepperCase, step_inputs, steps_per_epoch, training_batch
from torch import Tensor

import slift_plugin
from slift_plugin import (
    CheckpointError,
    SnapshotDataset,
    Stepper,
    fit,
    load_stepper,
    rollout,
    save_stepper,
)
from slift_plugin.checkpoint import tensor_state
from slift_plugin.selection import HeldOut, HeldOutPopulations, held_out_score

CASES = pytest.mark.parametrize("case", ALL_STEPPERS, ids=[c.name for c in ALL_STEPPERS])
FIT = dict(batch_size=8, lr=1e-3, weight_decay=0.0, seed=0, progress=False)
N = 10  # samples of the rollouts, windows of the steps

# Concrete steppers that need no case, and why.
NOT_METHODS = {
    "slift_plugin.adapters.torchsde.SDEStepper": (
        "integrates a given torchsde SDE: a fixed solver with no parameters to fit, whose "
        "loss() refuses (tests/test_torchsde_adapter.py covers it)"
    ),
    "slift_plugin.processing.ProcessedStepper": (
        "wraps a trained stepper in a data processor's maps for rollout only; its loss() "
        "refuses (tests/test_neuralop_dropin.py covers it)"
    ),
}


# -- helpers ---------------------------------------------------------------------------------
def known_gap(request: pytest.FixtureRequest, case: StepperCase, check: str) -> None:
    """Mark this test a strict xfail when ``case`` lists ``check`` as a known gap."""
    if check in case.known_gaps:
        request.applymarker(pytest.mark.xfail(reason=case.known_gaps[check], strict=True))


def prepared(case: StepperCase):
    """A fresh stepper, normalised on its data (no training), and the data."""
    stepper = case.build()
    data = case.dataset(stepper)
    stepper.prepare(data)
    return stepper, data


def trained(case: StepperCase, epochs: int = 1):
    stepper = case.build()
    data = case.dataset(stepper)
    fit(stepper, data, epochs=epochs, **FIT)
    return stepper, data


def grad_mode(stepper: Stepper):
    """What rollout steps under: no_grad for steppers that differentiate in a step."""
    return torch.no_grad() if stepper.requires_grad_in_step else torch.inference_mode()


def noise_for(stepper: Stepper, window: Tensor, seed: int = 0) -> Tensor | None:
    shape = stepper.noise_shape(tuple(window.shape[2:]))
    if shape is None:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(window.shape[0], *shape, generator=g, dtype=window.dtype)


def step(
    stepper: Stepper, window: Tensor, noise: Tensor | None, mu: Tensor | None, t: float = 0.0
) -> Tensor:
    with grad_mode(stepper):
        return stepper.step(window, noise, mu=mu, t=t).clone()


def as_x0(stepper: Stepper, window: Tensor) -> Tensor:
    """Windows ``(n, history*C, *grid)`` as rollout's ``x0`` ``(n, history, C, *grid)``."""
    return window.reshape(window.shape[0], stepper.history, stepper.n_channels, *window.shape[2:])


def snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in tensor_state(module).items()}


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k


# -- the contract ----------------------------------------------------------------------------
@CASES
def test_ensemble_does_not_depend_on_chunk_size(case, request):
    known_gap(request, case, "chunk_size")
    stepper, data = trained(case)
    window, mu = step_inputs(stepper, data, N)
    kw = dict(n_steps=3, mu=mu, seed=7)
    ensembles = {c: rollout(stepper, as_x0(stepper, window), chunk_size=c, **kw) for c in (N, 7, 1)}
    assert np.isfinite(ensembles[N].values).all()
    for c in (7, 1):
        # Same noise, same rows: equal up to float32 round-off, since BLAS and FFT kernels
        # change with the batch size (1 ulp seen); another noise draw differs by > 5e-3.
        np.testing.assert_allclose(ensembles[c].values, ensembles[N].values, rtol=1e-5, atol=1e-6)
        xr.testing.assert_identical(ensembles[c].copy(data=ensembles[N].values), ensembles[N])
    if stepper.noise_shape(tuple(window.shape[2:])) is not None:  # and the noise matters
        other = rollout(stepper, as_x0(stepper, window), chunk_size=N, **{**kw, "seed": 8})
        assert not np.array_equal(other.values, ensembles[N].values)


@CASES
def test_one_step_costs_the_declared_backbone_calls(case, request):
    known_gap(request, case, "evals_per_step")
    stepper, data = prepared(case)
    stepper.eval()
    window, mu = step_inputs(stepper, data, N)
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in case.backbones(stepper)]
    try:
        step(stepper, window, noise_for(stepper, window), mu)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == stepper.evals_per_step


@CASES
def test_checkpoint_round_trip(case, request, tmp_path):
    known_gap(request, case, "checkpoint")
    stepper, data = trained(case)
    path = save_stepper(tmp_path / "stepper.pt", stepper)
    fresh = case.build()
    before = snapshot(fresh)
    assert any(not torch.equal(v, before[k]) for k, v in snapshot(stepper).items())
    load_stepper(path, fresh)
    assert fresh.state_dict().keys() == stepper.state_dict().keys()
    assert_same_state(snapshot(fresh), snapshot(stepper))
    window, mu = step_inputs(stepper, data, N)
    noise = noise_for(stepper, window)
    stepper.eval()
    fresh.eval()
    assert torch.equal(step(fresh, window, noise, mu), step(stepper, window, noise, mu))


@CASES
def test_checkpoint_rebuilds_its_stepper(case, request, tmp_path):
    """``load_stepper(path)`` with no stepper: the recorded configuration builds the same
    class, the same state and bit-identical steps; a class of the user's own (the
    CONTRIBUTING template) cannot be recorded, and loading it says to pass the stepper."""
    known_gap(request, case, "rebuild")
    stepper, data = trained(case)
    path = save_stepper(tmp_path / "stepper.pt", stepper)
    if not type(stepper).__module__.startswith("slift_plugin."):
        with pytest.raises(CheckpointError, match=r"not a class .*load_stepper\(path, stepper\)"):
            load_stepper(path)
        assert load_stepper(path, case.build()) is not None  # the weights still load
        return
    rebuilt = load_stepper(path)
    assert type(rebuilt) is type(stepper)
    assert rebuilt.state_dict().keys() == stepper.state_dict().keys()
    assert_same_state(snapshot(rebuilt), snapshot(stepper))
    for name in ("state_shape", "history", "n_params", "evals_per_step"):
        assert getattr(rebuilt, name) == getattr(stepper, name), name
    assert rebuilt.dt == stepper.dt or (np.isnan(rebuilt.dt) and np.isnan(stepper.dt))
    window, mu = step_inputs(stepper, data, N)
    noise = noise_for(stepper, window)
    stepper.eval()
    rebuilt.eval()
    assert torch.equal(step(rebuilt, window, noise, mu), step(stepper, window, noise, mu))


@CASES
def test_interrupted_fit_resumes_bit_identically(case, request, tmp_path):
    known_gap(request, case, "resume")
    kw = dict(FIT, epochs=2, checkpoint_every=1)
    full = case.build()
    data = case.dataset(full)
    reference = fit(full, data, checkpoint_dir=tmp_path / "a", **kw)
    stopped = case.build()
    per_epoch = steps_per_epoch(data, kw["batch_size"])
    after = per_epoch + min(1, per_epoch - 1)  # dies in epoch 2, after a step if it has two
    interrupt_fit(stopped, case.dataset(stopped), after, checkpoint_dir=tmp_path / "b", **kw)
    again = case.build()
    resumed = fit(again, case.dataset(again), checkpoint_dir=tmp_path / "b", **kw)
    assert resumed.resumed_from_epoch == 1
    assert resumed.losses == reference.losses  # exactly
    assert_same_state(snapshot(again), snapshot(full))


@CASES
def test_held_out_selection_scores_every_epoch_and_keeps_the_best(case, request):
    """Selection in fit() needs only the contract: any stepper trained on transitions."""
    known_gap(request, case, "held_out")
    stepper = case.build()
    data = case.dataset(stepper)
    if not hasattr(data, "get_batch"):
        pytest.skip("trained on snapshots: there are no held-out transitions to score")
    held_out = HeldOut(data, n_members=3, max_examples=6)
    result = fit(stepper, data, epochs=3, held_out=held_out, **FIT)
    scores = result.held_out_scores
    assert len(scores) == 3 and all(np.isfinite(scores))
    assert result.best_epoch == 1 + int(np.argmin(scores))
    # the stepper holds the best epoch's weights: scoring it again gives the best score
    assert held_out_score(stepper, held_out, torch.device("cpu")) == pytest.approx(min(scores))


@CASES
def test_population_selection_needs_only_the_contract(case, request):
    """HeldOutPopulations scores any history-1 stepper: against populations of its own
    rollouts from other noise it sits near the floor, repeatably, in the stepper's mode."""
    stepper, data = prepared(case)
    if stepper.history != 1:
        pytest.skip("a rollout from a population needs history 1")
    x, mu = step_inputs(stepper, data)
    x0 = x.repeat(40, *([1] * (x.ndim - 1)))  # 240 particles
    mu_row = None if mu is None else mu[0]
    own = rollout(stepper, x0, 3, mu=None if mu_row is None else mu_row.tolist(), seed=1)
    own = own.transpose("time", "sample", ...)
    populations = [torch.as_tensor(own.values[k]) for k in range(own.sizes["time"])]
    times = torch.arange(len(populations), dtype=torch.float32) * stepper.dt
    held_out = HeldOutPopulations(SnapshotDataset([(times, populations, mu_row)]), seed=3)
    stepper.train()
    first = held_out.score(stepper, torch.device("cpu"))
    assert stepper.training
    assert first == held_out.score(stepper, torch.device("cpu"))
    assert 0 <= first < 3  # 0 for a deterministic stepper: the same states exactly


@CASES
def test_eval_loss_is_repeatable_and_train_loss_draws_as_declared(case, request):
    known_gap(request, case, "train_eval_noise")
    stepper, data = prepared(case)
    batch = training_batch(data)
    stepper.eval()
    before = snapshot(stepper)
    first, second = (stepper.loss(batch).detach() for _ in range(2))
    assert torch.isfinite(first) and torch.equal(first, second)
    assert_same_state(snapshot(stepper), before)  # no counter moved
    stepper.train()
    first, second = (stepper.loss(batch).detach() for _ in range(2))
    if case.draws_fresh_training_noise(stepper):
        assert not torch.equal(first, second)
    else:
        assert torch.equal(first, second)
        assert_same_state(snapshot(stepper), before)


@CASES
def test_step_is_a_function_of_window_and_noise(case, request):
    known_gap(request, case, "deterministic_step")
    stepper, data = trained(case)
    window, mu = step_inputs(stepper, data, N)
    noise = noise_for(stepper, window)
    inputs = [t.clone() for t in (window, noise, mu) if t is not None]
    state = snapshot(stepper)
    torch.manual_seed(1)  # the global RNG must not matter
    first = step(stepper, window, noise, mu)
    torch.manual_seed(2)
    assert torch.equal(step(stepper, window, noise, mu), first)
    assert first.shape == (N, stepper.n_channels, *window.shape[2:])
    assert all(torch.equal(a, b) for a, b in zip(inputs, (window, noise, mu), strict=False))
    assert_same_state(snapshot(stepper), state)
    if noise is not None:
        assert not torch.equal(step(stepper, window, noise_for(stepper, window, 1), mu), first)
    if stepper.cuda_graph_safe:  # a CUDA graph bakes in the t of its capture
        assert torch.equal(step(stepper, window, noise, mu, t=2.5), first)


@CASES
def test_rollout_keeps_dtype_device_and_mode(case, request):
    known_gap(request, case, "dtype_device")
    stepper, data = prepared(case)
    window, mu = step_inputs(stepper, data, N)
    for training in (True, False):
        stepper.train(training)
        ens = rollout(stepper, as_x0(stepper, window), n_steps=2, mu=mu)
        assert ens.dtype == np.float32 and np.isfinite(ens.values).all()
        assert stepper.training is training
        assert stepper.param_device_dtype() == (torch.device("cpu"), torch.float32)
    before = snapshot(stepper)
    if case.dtype_casts:
        stepper.double()
        assert all(v.dtype != torch.float32 for v in tensor_state(stepper).values())
        ens = rollout(stepper, as_x0(stepper, window), n_steps=2, mu=mu)  # float32 x0
        assert ens.dtype == np.float64 and np.isfinite(ens.values).all()
        out = step(stepper, window.double(), noise_for(stepper, window.double()), mu)
        assert out.dtype == torch.float64
    else:
        for cast in (stepper.double, lambda: stepper.to(torch.float64)):
            with pytest.raises(TypeError, match="refusing to cast.*float32"):
                cast()
            assert_same_state(snapshot(stepper), before)  # nothing half-cast


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@CASES
def test_rollout_keeps_dtype_device_and_mode_on_cuda(case, request):
    known_gap(request, case, "dtype_device")
    stepper, data = prepared(case)
    window, mu = step_inputs(stepper, data, N)
    x0 = as_x0(stepper, window)
    stepper.train()
    ens = rollout(stepper, x0, n_steps=2, mu=mu, device="cuda")  # and back to the CPU
    assert ens.dtype == np.float32 and np.isfinite(ens.values).all()
    assert stepper.training and stepper.param_device_dtype()[0] == torch.device("cpu")
    stepper.cuda().eval()
    chunks = [rollout(stepper, x0, n_steps=2, mu=mu, chunk_size=c) for c in (N, 3)]
    assert chunks[0].dtype == np.float32
    np.testing.assert_allclose(chunks[1].values, chunks[0].values, rtol=1e-5, atol=1e-6)
    assert not stepper.training and stepper.param_device_dtype()[0].type == "cuda"
    noise = noise_for(stepper, window)
    on_gpu = [None if t is None else t.cuda() for t in (window, noise, mu)]
    assert step(stepper, *on_gpu).device.type == "cuda"


# -- bad inputs: refused with a message that names what was expected --------------------------
@CASES
def test_window_of_wrong_width_is_refused(case, request):
    known_gap(request, case, "bad_window")
    stepper, data = prepared(case)
    window, mu = step_inputs(stepper, data, N)
    wide = torch.cat([window, window[:, :1]], dim=1)
    noise = noise_for(stepper, window)
    with pytest.raises(ValueError, match=rf"\(batch, {stepper.window_channels}\b"):
        step(stepper, wide, noise, mu)
    x0 = torch.cat([as_x0(stepper, window)] * 2, dim=2)  # twice the channels
    with pytest.raises(ValueError, match=rf"\(batch, {stepper.window_channels}\b"):
        rollout(stepper, x0, n_steps=1, mu=mu)


@CASES
def test_empty_batch_is_refused(case, request):
    known_gap(request, case, "bad_empty")
    stepper, data = prepared(case)
    window, mu = step_inputs(stepper, data, N)
    noise = noise_for(stepper, window)
    empty = [None if t is None else t[:0] for t in (window, noise, mu)]
    with pytest.raises(ValueError, match="empty batch"):
        step(stepper, *empty)
    with pytest.raises(ValueError, match="empty batch"):
        rollout(stepper, as_x0(stepper, window)[:0], n_steps=1, mu=empty[2])


@CASES
def test_noise_of_wrong_shape_is_refused(case, request):
    known_gap(request, case, "bad_noise")
    stepper, data = prepared(case)
    window, mu = step_inputs(stepper, data, N)
    shape = stepper.noise_shape(tuple(window.shape[2:]))
    if shape is None:
        pytest.skip("a step of this stepper draws no noise")
    expected = re.escape(str((N, *shape)))
    wrong = [
        torch.zeros(N, *shape[:-1], shape[-1] + 1),  # one more entry per sample
        torch.zeros(N + 1, *shape),  # another batch
        torch.zeros(*shape),  # no batch axis
        None,
    ]
    for noise in wrong:
        with pytest.raises((ValueError, TypeError), match=expected):
            step(stepper, window, noise, mu)


@CASES
def test_mu_that_does_not_fit_is_refused(case, request):
    known_gap(request, case, "bad_mu")
    stepper, data = prepared(case)
    window, mu = step_inputs(stepper, data, N)
    noise = noise_for(stepper, window)
    x0 = as_x0(stepper, window)
    if stepper.n_params == 0:
        for call in (
            lambda: step(stepper, window, noise, torch.zeros(N, 1)),
            lambda: rollout(stepper, x0, n_steps=1, mu=torch.zeros(1)),
        ):
            with pytest.raises(ValueError, match="without physics parameters"):
                call()
        return
    p = stepper.n_params
    for wrong in (None, torch.zeros(N, p + 1), torch.zeros(N - 1, p)):
        with pytest.raises(ValueError, match=rf"\((batch|{N}), {p}\)"):
            step(stepper, window, noise, wrong)
    with pytest.raises(ValueError, match=rf"\(batch, {p}\)"):
        rollout(stepper, x0, n_steps=1)
    nan_mu = mu.clone()
    nan_mu[0, 0] = float("nan")
    with pytest.raises(ValueError, match="mu contains 1 NaN"):
        rollout(stepper, x0, n_steps=1, mu=nan_mu)


@CASES
def test_nan_in_x0_is_refused(case, request):
    known_gap(request, case, "bad_x0")
    stepper, data = prepared(case)
    window, mu = step_inputs(stepper, data, N)
    x0 = as_x0(stepper, window).clone()
    x0.view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match="x0 contains 1 NaN"):
        rollout(stepper, x0, n_steps=1, mu=mu)


# -- the list and the contract themselves -----------------------------------------------------
def stepper_classes() -> dict[str, type]:
    """Every concrete Stepper class of the public modules, methods and adapters."""
    from slift_plugin.adapters import neuralop, torchsde

    modules = [slift_plugin, slift_plugin.methods, neuralop, torchsde]
    for info in pkgutil.iter_modules(slift_plugin.methods.__path__):
        modules.append(importlib.import_module(f"slift_plugin.methods.{info.name}"))
    found = {}
    for module in modules:
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Stepper) and not inspect.isabstract(obj):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_stepper_class_has_a_case():
    covered = {type(case.build()) for case in ALL_STEPPERS}
    classes = stepper_classes()
    missing = sorted(
        name for name, cls in classes.items() if cls not in covered and name not in NOT_METHODS
    )
    assert not missing, f"add a StepperCase to ALL_STEPPERS in tests/steppers.py for {missing}"
    assert set(NOT_METHODS) <= set(classes), "an exemption names a class that no longer exists"
    names = [case.name for case in ALL_STEPPERS]
    assert len(set(names)) == len(names), "case names are test ids: they must be unique"
    checks = set(re.findall(r'known_gap\(request, case, "(\w+)"\)', Path(__file__).read_text()))
    for case in ALL_STEPPERS:
        assert set(case.known_gaps) <= checks, f"{case.name}: known_gaps must name {checks}"


@pytest.mark.parametrize("left_out", ["noise_shape", "step", "loss"])
def test_a_stepper_without_the_whole_contract_cannot_be_built(left_out):
    methods = {
        "noise_shape": lambda self, grid_shape: None,
        "step": lambda self, window, noise=None, *, mu=None, t=None: window,
        "loss": lambda self, batch: batch["x"].sum(),
    }
    del methods[left_out]
    incomplete = type("Incomplete", (Stepper,), methods)
    with pytest.raises(TypeError, match=left_out):
        incomplete((1,))
    complete = type("Complete", (Stepper,), {left_out: lambda self, *a, **k: None, **methods})
    assert isinstance(complete((1,)), Stepper)
