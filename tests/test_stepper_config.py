"""Self-describing checkpoints: ``load_stepper(path)`` rebuilds the stepper it holds.

The contract suite (``test_checkpoint_rebuilds_its_stepper`` in tests/test_contract.py)
covers every stepper of ``ALL_STEPPERS``; this file adds what a case list cannot:

* an FNO checkpoint loads in a fresh process that never imported the adapter (the
  entry points of pyproject.toml find it; core never imports it);
* every operator (FNO, TFNO, UNO) with every label injection, operator potentials and
  SLFNO with a UNO inside;
* ``fit()``'s ``last.pt``; a float64 stepper; every recorded activation;
* what is not describable (an SDE wrapped by ``SDEStepper``, a user's backbone or
  subclass, an unrecorded activation, a module swapped in after construction) still
  saves, and ``load_stepper(path)`` says why and to pass the stepper;
* a custom training criterion is recorded by name and replaced by the default on load;
* saving and loading leave the caller's random stream alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from slift_plugin import (
    DICE,
    MLP,
    CheckpointError,
    FlowMatching,
    PotentialMLP,
    StochasticLifting,
    TransitionDataset,
    fit,
    load_stepper,
    save_stepper,
)
from slift_plugin.adapters.torchsde import SDEStepper
from slift_plugin.checkpoint import CONFIG_KEY, load_checkpoint, save_checkpoint, tensor_state
from slift_plugin.config import (
    ACTIVATIONS,
    ConfigError,
    NotDescribableError,
    build_stepper,
    describe_stepper,
)

ROOT = Path(__file__).resolve().parents[1]
GRID = 16
UNO = dict(
    hidden_channels=8,
    n_layers=2,
    uno_out_channels=[8, 8],
    uno_n_modes=[[4], [4]],
    uno_scalings=[[1.0], [1.0]],
    lifting_channels=8,
    projection_channels=8,
    horizontal_skips_map={},
)
FNO = dict(n_modes=(4,), hidden_channels=8, n_layers=2)


def normalised(stepper, seed=0):
    """``stepper`` with non-trivial statistics, so that the buffers are checked too."""
    g = torch.Generator().manual_seed(seed)
    stats = {
        name: torch.rand(shape, generator=g) + 0.5
        for name, shape in stepper.normalization_shapes().items()
    }
    stepper.set_normalization(stats)
    return stepper


def inputs(stepper, batch=3, seed=1):
    """A window, its noise and mu for one step on a 16-point grid (or a vector)."""
    g = torch.Generator().manual_seed(seed)
    grid = tuple(GRID for _ in stepper.grid_shape)
    window = torch.randn(batch, stepper.window_channels, *grid, generator=g)
    shape = stepper.noise_shape(grid)
    noise = None if shape is None else torch.randn(batch, *shape, generator=g)
    mu = torch.randn(batch, stepper.n_params, generator=g) if stepper.n_params else None
    return window, noise, mu


def one_step(stepper, window, noise, mu):
    stepper.eval()
    context = torch.no_grad() if stepper.requires_grad_in_step else torch.inference_mode()
    with context:
        return stepper.step(window, noise, mu=mu, t=0.0).clone()


def assert_rebuilt(stepper, path):
    """``load_stepper(path)`` gives the same class, state and bit-identical steps."""
    rebuilt = load_stepper(path)
    assert type(rebuilt) is type(stepper)
    assert stepper.state_dict().keys() == rebuilt.state_dict().keys()
    ours, theirs = tensor_state(stepper), tensor_state(rebuilt)  # SLFNO adds _metadata
    for key, value in ours.items():
        assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key
    window, noise, mu = inputs(stepper)
    assert torch.equal(one_step(rebuilt, window, noise, mu), one_step(stepper, window, noise, mu))
    return rebuilt


# -- neuraloperator backbones -----------------------------------------------------------------
def lifted_sl(kind, injection):
    from slift_plugin.adapters.neuralop import lifted_operator

    kw = UNO if kind == "uno" else FNO
    torch.manual_seed(0)
    net = lifted_operator(
        kind, state_channels=1, history=2, label_dim=3, injection=injection, n_cond=1,
        embedding_hidden=6, **kw,
    )  # fmt: skip
    return normalised(StochasticLifting(net, (1, None), history=2, n_params=1, dt=0.4))


@pytest.mark.parametrize("injection", ["channels", "noise_field", "embedding"])
@pytest.mark.parametrize("kind", ["fno", "tfno", "uno"])
def test_every_operator_and_injection_is_rebuilt(kind, injection, tmp_path):
    stepper = lifted_sl(kind, injection)
    rebuilt = assert_rebuilt(stepper, save_stepper(tmp_path / "sl.pt", stepper))
    assert rebuilt.backbone.injection == injection
    assert rebuilt.noise_shape((GRID,)) == stepper.noise_shape((GRID,))


@pytest.mark.parametrize("kind", ["fno", "tfno", "uno"])
def test_operator_potentials_and_flow_matching_fields_are_rebuilt(kind, tmp_path):
    from slift_plugin.adapters.neuralop import lifted_operator, operator_potential

    kw = UNO if kind == "uno" else FNO
    torch.manual_seed(0)
    dice = DICE(
        operator_potential(kind, state_channels=1, n_params=1, **kw),
        (1, None),
        n_params=1,
        sigma=0.1,
        laplacian="hutchinson",
        n_probes=2,
        dt=0.4,
        n_substeps=3,
        scheme="heun",
        kinetic_on_neighbours=0.25,
        alpha=0.01,
        potential_scale=12.5,
    )
    assert_rebuilt(normalised(dice), save_stepper(tmp_path / "dice.pt", dice))
    velocity = lifted_operator(kind, state_channels=1, history=2, label_dim=0, n_cond=1, **kw)
    flow = normalised(FlowMatching(velocity, (1, None), n_euler=2, dt=0.4, seed=12345))
    flow.n_euler = 3  # changed after construction: the current value is recorded
    rebuilt = assert_rebuilt(flow, save_stepper(tmp_path / "fm.pt", flow))
    assert (rebuilt.n_euler, rebuilt.seed) == (3, 12345)


def test_slfno_with_a_uno_inside_is_rebuilt(tmp_path):
    from slift_plugin.adapters.neuralop import SLFNO

    torch.manual_seed(0)
    operator_kwargs = {k: v for k, v in UNO.items() if k not in ("hidden_channels", "n_layers")}
    model = SLFNO(
        2, hidden_channels=8, n_layers=2, label_dim=3, label_injection="embedding",
        n_params=1, history=2, residual=False, operator="uno", operator_kwargs=operator_kwargs,
    )  # fmt: skip
    rebuilt = assert_rebuilt(normalised(model), save_stepper(tmp_path / "slfno.pt", model))
    assert rebuilt.residual is False and rebuilt.history == 2


FRESH_PROCESS = """
import sys
import torch
import slift_plugin
loaded = [m for m in sys.modules if m.startswith(("neuralop", "slift_plugin.adapters"))]
assert not loaded, loaded  # importing the core imports no adapter
inputs = torch.load(sys.argv[1], weights_only=True)
outputs = {}
for path, (window, noise, mu) in inputs.items():
    stepper = slift_plugin.load_stepper(path)
    stepper.eval()
    with torch.no_grad():
        outputs[path] = (type(stepper).__name__, stepper.step(window, noise, mu=mu))
torch.save(outputs, sys.argv[2])
"""


def test_an_fno_checkpoint_loads_in_a_fresh_process(tmp_path):
    """The new process imports only ``slift_plugin``: the entry points of pyproject.toml
    lead it to the adapter, which core never imports."""
    from slift_plugin.adapters.neuralop import SLFNO, operator_potential

    torch.manual_seed(0)
    steppers = {
        "sl": lifted_sl("fno", "embedding"),
        "slfno": normalised(SLFNO(1, label_dim=2, dt=0.4, **FNO)),
        "dice": normalised(
            DICE(operator_potential("tfno", state_channels=1, **FNO), (1, None), dt=0.4)
        ),
    }
    paths = {name: str(save_stepper(tmp_path / f"{name}.pt", s)) for name, s in steppers.items()}
    given = {paths[name]: inputs(s) for name, s in steppers.items()}
    torch.save(given, tmp_path / "inputs.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, tmp_path / "inputs.pt", tmp_path / "out.pt"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout: the installed package, as a user has it
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = torch.load(tmp_path / "out.pt", weights_only=True)
    for name, stepper in steppers.items():
        cls, out = outputs[paths[name]]
        assert cls == type(stepper).__name__
        with torch.no_grad():
            window, noise, mu = given[paths[name]]
            assert torch.equal(out, stepper.eval().step(window, noise, mu=mu)), name


# -- fit(), dtypes, activations ---------------------------------------------------------------
def mlp_sl(label_dim=2, **kw):
    torch.manual_seed(0)
    return StochasticLifting(MLP(2, 2, label_dim=label_dim, hidden=16, depth=2, **kw), (2,))


def transitions(stepper):
    g = torch.Generator().manual_seed(0)
    states = torch.randn(16, 4, 2, generator=g).cumsum(1)
    return TransitionDataset(states, labels=stepper.fixed_labels(0), dt=0.1)


def test_fit_checkpoints_rebuild_the_stepper_they_trained(tmp_path):
    stepper = mlp_sl()
    stepper.dt = 0.1
    fit(stepper, transitions(stepper), epochs=2, progress=False, checkpoint_dir=tmp_path)
    assert json.loads(load_checkpoint(tmp_path / "last.pt")[CONFIG_KEY])["stepper"]
    rebuilt = assert_rebuilt(stepper, tmp_path / "last.pt")
    assert bool(rebuilt.normalized) and rebuilt.dt == 0.1


def test_a_float64_stepper_is_rebuilt_in_float64(tmp_path):
    torch.manual_seed(0)
    potential = PotentialMLP(2, hidden=8, depth=2, periods=[6.0, None])
    dice = normalised(DICE(potential, (2,), sigma=0.1, dt=0.5))
    dice = dice.double()
    rebuilt = assert_rebuilt(dice, save_stepper(tmp_path / "dice.pt", dice))
    assert rebuilt.potential.periods == [6.0, None]
    assert json.loads(describe_stepper(dice))["dtype"] == "float64"


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_recorded_activation_is_rebuilt(name, tmp_path):
    stepper = normalised(mlp_sl(activation=ACTIVATIONS[name]))
    rebuilt = assert_rebuilt(stepper, save_stepper(tmp_path / "m.pt", stepper))
    assert type(rebuilt.backbone.net[1]) is ACTIVATIONS[name]


def test_a_stepper_with_an_unknown_dt_is_rebuilt(tmp_path):
    stepper = normalised(mlp_sl())
    assert json.loads(describe_stepper(stepper))["stepper"]["args"]["dt"] is None  # nan
    assert_rebuilt(stepper, save_stepper(tmp_path / "m.pt", stepper))


# -- what cannot be described -------------------------------------------------------------------
class TinySDE(nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self):
        super().__init__()
        self.drift = nn.Linear(2, 2)

    def f(self, t, y):
        return self.drift(y)

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


class OwnBackbone(nn.Module):
    label_dim, n_cond, in_features = 2, 0, 2

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 2)

    def label_shape(self, grid_shape=()):
        return (2,)

    def forward(self, x, label=None, cond=None):
        return self.net(torch.cat([x, label], -1))


class OwnLifting(StochasticLifting):
    pass


def swapped_activation():
    stepper = mlp_sl()
    stepper.backbone.net[1] = nn.ReLU()  # the other activation stays SiLU
    return stepper


def reshaped_net():
    stepper = mlp_sl()
    stepper.backbone.net[0] = nn.Linear(4, 16, bias=False)  # same shapes, one tensor fewer
    return stepper


def fno_with_a_function():
    from slift_plugin.adapters.neuralop import lifted_operator

    torch.manual_seed(0)
    net = lifted_operator(
        "fno", state_channels=1, label_dim=2, non_linearity=nn.functional.relu, **FNO
    )
    return StochasticLifting(net, (1, None))


def uno_with_an_unkept_argument():
    from slift_plugin.adapters.neuralop import lifted_operator

    torch.manual_seed(0)
    net = lifted_operator("uno", state_channels=1, label_dim=2, channel_mlp_expansion=1.0, **UNO)
    return StochasticLifting(net, (1, None))


NOT_DESCRIBABLE = {
    "fno_non_linearity": (fno_with_a_function, r"arguments \['non_linearity'\] are not plain"),
    # UNO keeps no record of channel_mlp_expansion: the rebuilt UNO's shapes differ
    "uno_expansion": (uno_with_an_unkept_argument, "differs from it .*channel_mlp"),
    "sde_stepper": (
        lambda: SDEStepper(TinySDE(), 2, dt=0.1, dt_internal=0.05),
        "SDEStepper, not a class",
    ),
    "own_backbone": (lambda: StochasticLifting(OwnBackbone(), (2,)), "OwnBackbone, not a class"),
    "subclass": (lambda: OwnLifting(MLP(2, 2, label_dim=2), (2,)), "OwnLifting, not a class"),
    "leaky_relu_slope": (
        lambda: mlp_sl(activation=lambda: nn.LeakyReLU(0.2)),
        r"activation LeakyReLU\(negative_slope=0.2\) is not one",
    ),
    "hardswish": (lambda: mlp_sl(activation=nn.Hardswish), "activation Hardswish"),
    "mixed_activations": (swapped_activation, "different activations"),
    "swapped_layer": (reshaped_net, "differs from it .*backbone.net.0.bias"),
}


@pytest.mark.parametrize("name", sorted(NOT_DESCRIBABLE))
def test_what_cannot_be_described_saves_and_says_to_pass_the_stepper(name, tmp_path):
    build, why = NOT_DESCRIBABLE[name]
    stepper = build()
    with pytest.raises(NotDescribableError, match=why):
        describe_stepper(stepper)
    path = save_stepper(tmp_path / "m.pt", stepper)
    with pytest.raises(CheckpointError, match=why) as caught:
        load_stepper(path)
    assert "load_stepper(path, stepper)" in str(caught.value)
    again = build()
    assert load_stepper(path, again) is again  # in place, returned
    for key, value in stepper.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_an_old_checkpoint_without_a_configuration_says_to_pass_the_stepper(tmp_path):
    stepper = mlp_sl()
    save_checkpoint(tmp_path / "old.pt", {"model": stepper.state_dict()})
    with pytest.raises(CheckpointError, match=r"does not record .*load_stepper\(path, stepper\)"):
        load_stepper(tmp_path / "old.pt")
    assert load_stepper(tmp_path / "old.pt", mlp_sl()) is not None


def test_a_dice_description_from_before_its_later_arguments_builds_what_it_meant():
    """Descriptions of 2026-12-02 lack ``potential_scale`` and ``scheme``: they meant 1 and
    Euler. Any other missing or unknown argument is still refused."""
    dice = DICE(PotentialMLP(2, hidden=8, depth=1), (2,), sigma=0.3, dt=0.1, n_substeps=2)
    record = json.loads(describe_stepper(dice))
    args = record["stepper"]["args"]
    del args["potential_scale"], args["scheme"]
    rebuilt = build_stepper(json.dumps(record))
    assert (rebuilt.potential_scale, rebuilt.scheme, rebuilt.n_substeps) == (1.0, "euler", 2)
    args["scheme"] = "heun"
    assert build_stepper(json.dumps(record)).scheme == "heun"
    del args["sigma"]
    with pytest.raises(ConfigError, match=r"missing \['sigma'\]"):
        build_stepper(json.dumps(record))
    args["sigma"], args["rk_order"] = 0.3, 4
    with pytest.raises(ConfigError, match=r"unknown \['rk_order'\]"):
        build_stepper(json.dumps(record))


def test_a_custom_criterion_is_recorded_and_replaced_by_the_default(tmp_path):
    def huber(prediction, target):
        return nn.functional.huber_loss(prediction, target)

    stepper = normalised(mlp_sl())
    stepper.criterion = huber
    record = json.loads(describe_stepper(stepper))
    assert record["criterion"].endswith("huber")
    path = save_stepper(tmp_path / "m.pt", stepper)
    with pytest.warns(UserWarning, match="criterion .*huber.* default criterion"):
        rebuilt = load_stepper(path)
    batch = transitions(rebuilt).get_batch(torch.arange(4))
    from slift_plugin.methods.lifting import mean_squared_error

    assert rebuilt.criterion is mean_squared_error
    assert torch.isfinite(rebuilt.loss(batch))


def test_extra_entries_may_not_overwrite_the_stepper(tmp_path):
    stepper = mlp_sl()
    save_stepper(tmp_path / "m.pt", stepper, config={"demo": 1})  # as the demo does
    assert load_checkpoint(tmp_path / "m.pt")["config"] == {"demo": 1}
    load_stepper(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="stepper_config"):
        save_stepper(tmp_path / "n.pt", stepper, stepper_config="{}")


def test_saving_and_loading_leave_the_random_stream_alone(tmp_path):
    stepper = mlp_sl()
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    path = save_stepper(tmp_path / "m.pt", stepper)
    load_stepper(path)
    build_stepper(describe_stepper(stepper))
    assert torch.equal(torch.rand(4), expected)


def test_load_stepper_moves_a_rebuilt_stepper_to_map_location(tmp_path):
    stepper = mlp_sl()
    path = save_stepper(tmp_path / "m.pt", stepper)
    rebuilt = load_stepper(path, map_location="cpu")
    assert rebuilt.param_device_dtype() == (torch.device("cpu"), torch.float32)
    if torch.cuda.is_available():
        on_gpu = load_stepper(path, map_location="cuda")
        assert on_gpu.param_device_dtype()[0].type == "cuda"
