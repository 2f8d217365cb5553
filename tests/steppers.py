"""Every stepper the contract suite (tests/test_contract.py) checks: ``ALL_STEPPERS``.

One :class:`StepperCase` per method and backbone: how to build a fresh, untrained stepper
with seeded weights, the small dataset it trains on, and the modules whose forward calls
are its backbone evaluations. A method added to this list is checked by every contract
test with no other test code; ``test_every_stepper_class_has_a_case`` fails until it is.

Models and data are tiny (widths 8-16, FNO with 4 modes on a 16-point grid, a few dozen
transitions) so that the whole suite runs in a minute or two on one CPU thread.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from torch import Tensor, nn

from slift_plugin import (
    DICE,
    MLP,
    EnergyScoreLifting,
    FlowMatching,
    MeanRegression,
    PotentialMLP,
    SnapshotDataset,
    Stepper,
    StochasticLifting,
    StoredLabels,
    TransitionDataset,
    fit,
    teacher_labels,
)
from slift_plugin.methods import FreshNoiseTraining
from slift_plugin.systems import (
    allen_cahn,
    allen_cahn_initial_conditions,
    double_well,
    ornstein_uhlenbeck,
)

__all__ = ["ALL_STEPPERS", "StepperCase", "step_inputs", "steps_per_epoch", "training_batch"]

GRID = 16  # grid of the field (FNO) cases
FNO = dict(n_modes=(4,), hidden_channels=8, n_layers=2)  # every neural operator of the list
CONTRIBUTING = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


@dataclass(frozen=True)
class StepperCase:
    """One stepper of the contract suite.

    Attributes
    ----------
    name : str
        The test id.
    build : callable
        ``() -> Stepper``: a fresh, untrained stepper; seeds its own weights, so two calls
        give identical steppers.
    dataset : callable
        ``stepper -> dataset`` that :func:`slift_plugin.fit` trains it on (a
        :class:`TransitionDataset` or a :class:`SnapshotDataset`); small.
    backbone : callable
        ``stepper -> module or modules`` whose forward calls are the backbone evaluations
        that ``stepper.evals_per_step`` counts.
    dtype_casts : bool
        False when the backbone refuses casts away from float32 (neuraloperator FNOs,
        whose complex spectral weights do not survive them): the suite then checks the
        refusal instead of a float64 rollout.
    fresh_training_noise : bool or None
        Whether train-mode losses draw new noise at every call; None: exactly when the
        stepper is a :class:`slift_plugin.methods.FreshNoiseTraining`.
    known_gaps : mapping of str to str
        Check name (what the contract test passes to ``known_gap``, e.g. ``"bad_noise"``)
        -> why this stepper does not pass it yet. The test is then a strict xfail: it
        fails as soon as the gap is closed, so that the entry gets removed.
    """

    name: str
    build: Callable[[], Stepper]
    dataset: Callable[[Stepper], Any]
    backbone: Callable[[Stepper], nn.Module | Sequence[nn.Module]]
    dtype_casts: bool = True
    fresh_training_noise: bool | None = None
    known_gaps: Mapping[str, str] = field(default_factory=dict)

    def backbones(self, stepper: Stepper) -> list[nn.Module]:
        found = self.backbone(stepper)
        return [found] if isinstance(found, nn.Module) else list(found)

    def draws_fresh_training_noise(self, stepper: Stepper) -> bool:
        if self.fresh_training_noise is not None:
            return self.fresh_training_noise
        return isinstance(stepper, FreshNoiseTraining)

    def __repr__(self) -> str:  # the pytest id
        return self.name


# -- data: a few dozen transitions or samples per time ---------------------------------------
@functools.cache
def _ou() -> xr.DataArray:
    return ornstein_uhlenbeck(n_samples=24, n_steps=3, dt=0.1, dt_internal=0.01, seed=0)


@functools.cache
def _double_well() -> xr.DataArray:
    return double_well(n_samples=24, n_steps=3, dt=0.5, dt_internal=0.05, seed=0)


@functools.cache
def _allen_cahn() -> xr.DataArray:
    u0 = allen_cahn_initial_conditions(8, GRID, seed=0)
    return allen_cahn(n_samples=8, n_steps=3, dt=0.4, n_grid=GRID, u0=u0, seed=0)


@functools.cache
def _ou_two_thetas() -> tuple[Tensor, Tensor]:
    """OU trajectories ``(24, 5, 1)`` at theta 0.5 (first 12) and 1.5, and ``mu`` ``(24, 1)``."""
    runs = [
        ornstein_uhlenbeck(n_samples=12, n_steps=4, dt=0.1, dt_internal=0.01, theta=th, seed=s)
        for s, th in enumerate((0.5, 1.5))
    ]
    states = torch.cat([torch.as_tensor(r.values, dtype=torch.float32) for r in runs])
    return states, torch.tensor([[0.5]] * 12 + [[1.5]] * 12)


def transitions(ensemble: Callable[[], xr.DataArray], *, labels: bool = False) -> Callable:
    """Dataset builder: the transitions of ``ensemble()``, with the stepper's fixed labels."""

    def build(stepper: StochasticLifting) -> TransitionDataset:
        ens = ensemble()
        grid = tuple(ens.shape[3:])
        fixed = stepper.fixed_labels(0, grid) if labels else None
        return TransitionDataset.from_xarray(ens, history=stepper.history, labels=fixed)

    return build


def ou_with_theta(stepper: StochasticLifting) -> TransitionDataset:
    states, mu = _ou_two_thetas()
    labels = stepper.fixed_labels(0)
    return TransitionDataset(states, history=stepper.history, mu=mu, labels=labels, dt=0.1)


@functools.cache
def _ou_teacher_labels() -> StoredLabels:
    """Coupled labels of the OU transitions from a briefly trained flow-matching teacher."""
    data = TransitionDataset.from_xarray(_ou())
    torch.manual_seed(1)
    teacher = FlowMatching(_mlp(2, 1, label_dim=0, n_cond=1), (1,), n_euler=4, dt=0.1)
    fit(teacher, data, epochs=2, batch_size=8, progress=False)
    return teacher_labels(teacher, data)


def ou_with_teacher_labels(stepper: StochasticLifting) -> TransitionDataset:
    """The OU transitions with coupled labels (state-shaped, from the teacher's flow)."""
    return TransitionDataset.from_xarray(_ou(), labels=_ou_teacher_labels())


def snapshots(ensemble: Callable[[], xr.DataArray]) -> Callable:
    """Dataset builder: the unpaired populations of ``ensemble()`` (DICE)."""
    return lambda stepper: SnapshotDataset.from_xarray(ensemble(), n_times=3)


# -- what the contract tests need from any dataset -------------------------------------------
def training_batch(data: Any, n: int = 8) -> dict[str, Tensor]:
    """One batch of ``n`` examples (transitions) or ``n`` samples per time (snapshots)."""
    if hasattr(data, "get_batch"):
        return data.get_batch(torch.arange(n) % len(data))
    return next(iter(data.iter_batches(n, torch.Generator().manual_seed(0))))


def step_inputs(stepper: Stepper, data: Any, n: int = 6) -> tuple[Tensor, Tensor | None]:
    """``n`` windows ``(n, history*C, *grid)`` of the data and their ``mu`` (or None)."""
    if hasattr(data, "get_batch"):
        batch = data.get_batch(torch.arange(n) % len(data))
        return batch["x"], batch.get("mu")
    times, populations, mu = data.groups[0]  # snapshots: the population at the first time
    x = populations[0][torch.arange(n) % populations[0].shape[0]]
    return x, None if mu is None else mu.reshape(1, -1).expand(n, -1)


def steps_per_epoch(data: Any, batch_size: int) -> int:
    if hasattr(data, "steps_per_epoch"):
        return data.steps_per_epoch(batch_size)
    return math.ceil(len(data) / batch_size)


# -- the template of CONTRIBUTING.md, exactly as documented -----------------------------------
@functools.cache
def gaussian_stepper_class() -> type[Stepper]:
    """``GaussianStepper`` from the python block of CONTRIBUTING.md that defines it."""
    blocks = re.findall(r"```python\n(.*?)```", CONTRIBUTING.read_text(), flags=re.DOTALL)
    source = [b for b in blocks if "class GaussianStepper" in b]
    if len(source) != 1:
        raise LookupError(f"expected one python block defining GaussianStepper in {CONTRIBUTING}")
    namespace: dict[str, Any] = {"__name__": "contributing_template"}
    exec(compile(source[0], str(CONTRIBUTING), "exec"), namespace)
    return namespace["GaussianStepper"]


# -- builders ---------------------------------------------------------------------------------
def _seeded(build: Callable[[], Stepper]) -> Callable[[], Stepper]:
    @functools.wraps(build)
    def seeded() -> Stepper:
        torch.manual_seed(0)
        return build()

    return seeded


def _lifted(**kw: Any) -> nn.Module:
    from slift_plugin.adapters.neuralop import lifted_operator

    return lifted_operator("fno", state_channels=1, **FNO, **kw)


def _fno_potential() -> nn.Module:
    from slift_plugin.adapters.neuralop import operator_potential

    return operator_potential("fno", state_channels=1, **FNO)


def _slfno() -> Stepper:
    from slift_plugin.adapters.neuralop import SLFNO

    return SLFNO(1, label_dim=4, label_injection="noise_field", dt=0.4, **FNO)


def _mlp(in_features: int, out_features: int, **kw: Any) -> MLP:
    return MLP(in_features, out_features, hidden=16, depth=2, **kw)


def _backbone(stepper: Stepper) -> nn.Module:
    return stepper.backbone


ALL_STEPPERS: list[StepperCase] = [
    # -- vector states, MLP backbones ---------------------------------------------------
    StepperCase(
        "sl_mlp",
        _seeded(lambda: StochasticLifting(_mlp(1, 1, label_dim=4), (1,), dt=0.1)),
        transitions(_ou, labels=True),
        _backbone,
    ),
    StepperCase(
        "sl_mlp_mu_history2",
        _seeded(
            lambda: StochasticLifting(
                _mlp(2, 1, label_dim=4, n_cond=1), (1,), history=2, n_params=1, dt=0.1
            )
        ),
        ou_with_theta,
        _backbone,
    ),
    StepperCase(
        "sl_mlp_coupled",
        _seeded(lambda: StochasticLifting(_mlp(1, 1, label_dim=1), (1,), dt=0.1)),
        ou_with_teacher_labels,
        _backbone,
    ),
    StepperCase(
        "mse_mlp",
        _seeded(lambda: MeanRegression(_mlp(1, 1, label_dim=0), (1,), dt=0.1)),
        transitions(_ou),
        _backbone,
    ),
    StepperCase(
        "fm_mlp",
        _seeded(lambda: FlowMatching(_mlp(2, 1, label_dim=0, n_cond=1), (1,), n_euler=3, dt=0.1)),
        transitions(_ou),
        lambda s: s.velocity,
    ),
    StepperCase(
        "es_mlp",
        _seeded(lambda: EnergyScoreLifting(_mlp(1, 1, label_dim=4), (1,), n_members=3, dt=0.1)),
        transitions(_ou),
        _backbone,
    ),
    StepperCase(
        "dice_mlp",
        _seeded(
            lambda: DICE(PotentialMLP(1, hidden=16, depth=2), (1,), sigma=0.5, dt=0.1, n_substeps=2)
        ),
        snapshots(_ou),
        lambda s: s.potential,
    ),
    StepperCase(
        "dice_mlp_heun",
        _seeded(
            lambda: DICE(
                PotentialMLP(1, hidden=16, depth=2), (1,), sigma=0.5, dt=0.1, scheme="heun"
            )
        ),
        snapshots(_ou),
        lambda s: s.potential,
    ),
    StepperCase(  # both regularisers of the authors' regime on (issue 12)
        "dice_mlp_regularised",
        _seeded(
            lambda: DICE(
                PotentialMLP(1, hidden=16, depth=2),
                (1,),
                sigma=0.5,
                dt=0.1,
                n_substeps=2,
                kinetic_on_neighbours=0.5,
                alpha=0.01,
            )
        ),
        snapshots(_ou),
        lambda s: s.potential,
    ),
    StepperCase(
        "gaussian_template",
        _seeded(lambda: gaussian_stepper_class()(_mlp(1, 2, label_dim=0), (1,), dt=0.5)),
        transitions(_double_well),
        _backbone,
    ),
    # -- fields on a periodic grid, neuraloperator FNO backbones ------------------------
    StepperCase(
        "sl_fno_channels",
        _seeded(lambda: StochasticLifting(_lifted(label_dim=4), (1, None), dt=0.4)),
        transitions(_allen_cahn, labels=True),
        _backbone,
        dtype_casts=False,
    ),
    StepperCase(
        "sl_fno_noise_field",
        _seeded(
            lambda: StochasticLifting(
                _lifted(label_dim=2, injection="noise_field"), (1, None), dt=0.4
            )
        ),
        transitions(_allen_cahn, labels=True),
        _backbone,
        dtype_casts=False,
    ),
    StepperCase(
        "sl_fno_embedding",
        _seeded(
            lambda: StochasticLifting(
                _lifted(label_dim=4, injection="embedding", embedding_hidden=8), (1, None), dt=0.4
            )
        ),
        transitions(_allen_cahn, labels=True),
        _backbone,
        dtype_casts=False,
    ),
    StepperCase(
        "mse_fno",
        _seeded(lambda: MeanRegression(_lifted(label_dim=0), (1, None), dt=0.4)),
        transitions(_allen_cahn),
        _backbone,
        dtype_casts=False,
    ),
    StepperCase(
        "fm_fno",
        _seeded(
            lambda: FlowMatching(
                _lifted(label_dim=0, history=2, n_cond=1), (1, None), n_euler=2, dt=0.4
            )
        ),
        transitions(_allen_cahn),
        lambda s: s.velocity,
        dtype_casts=False,
    ),
    StepperCase(
        "es_fno",
        _seeded(lambda: EnergyScoreLifting(_lifted(label_dim=4), (1, None), n_members=2, dt=0.4)),
        transitions(_allen_cahn),
        _backbone,
        dtype_casts=False,
    ),
    StepperCase(
        "dice_fno",
        _seeded(
            lambda: DICE(
                _fno_potential(),
                (1, None),
                sigma=0.05,
                laplacian="hutchinson",
                dt=0.4,
                n_substeps=2,
            )
        ),
        snapshots(_allen_cahn),
        lambda s: s.potential,
        dtype_casts=False,
    ),
    StepperCase(
        "slfno",
        _seeded(_slfno),
        transitions(_allen_cahn, labels=True),
        _backbone,
        dtype_casts=False,
    ),
]
