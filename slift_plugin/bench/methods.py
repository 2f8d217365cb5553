"""The methods compared, built on the same backbone architecture per problem.

A method name is parsed into a :class:`MethodSpec`:

``solver``
    the reference system at its fine internal step (no training);
``sl``, ``sl-<injection>``, ``sl-l<L>``, ``sl-<injection>-l<L>``
    Stochastic Lifting; fields take an injection (``channels``, ``noise_field``,
    ``embedding``), every backbone a label size ``L``;
``mse``
    the same backbone regressed without labels (collapse to the mean);
``cfm<K>``
    conditional flow matching sampled with ``K`` Euler steps; one training per seed
    serves every ``K``;
``es``
    the SL backbone with fresh noise at every training step and the energy score;
``dice``
    DICE on unpaired populations (diffusion variant with the system's known sigma);
``<method>-bf16``
    a transition method (SL, MSE, CFM, ES) sampled under bfloat16 autocast, with the
    float32 run's trained model: how much bf16 moves the accuracy.

Every learned method of a problem gets the same budget: the same epochs, batch size and
learning rate (:data:`BUDGETS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..backbones import MLP
from ..data import SnapshotDataset, TransitionDataset
from ..dice import DICE, PotentialMLP
from ..energy_score import EnergyScoreLifting
from ..flow_matching import FlowMatching
from ..lifting import MeanRegression, StochasticLifting
from ..stepper import Stepper
from .problems import ProblemData

DEFAULT_LABEL_DIM = 32
DEFAULT_INJECTION = "channels"
INJECTIONS = ("channels", "noise_field", "embedding")
ES_MEMBERS = 2
DICE_TIMES_PER_BATCH = 8


@dataclass(frozen=True)
class Budget:
    """Training budget shared by every learned method of one problem."""

    epochs: int
    batch_size: int
    lr: float
    hidden: int  # MLP width / FNO hidden channels


BUDGETS: dict[tuple[str, bool], Budget] = {
    # (problem, quick)
    ("double_well", False): Budget(epochs=100, batch_size=256, lr=2e-3, hidden=256),
    ("double_well", True): Budget(epochs=15, batch_size=128, lr=3e-3, hidden=64),
    ("lorenz63", False): Budget(epochs=40, batch_size=256, lr=2e-3, hidden=256),
    ("lorenz63", True): Budget(epochs=10, batch_size=128, lr=3e-3, hidden=64),
    ("allen_cahn", False): Budget(epochs=30, batch_size=64, lr=2e-3, hidden=32),
    ("allen_cahn", True): Budget(epochs=2, batch_size=32, lr=2e-3, hidden=8),
    ("vlasov", False): Budget(epochs=15, batch_size=256, lr=3e-4, hidden=128),
    ("vlasov", True): Budget(epochs=3, batch_size=256, lr=3e-4, hidden=64),
}

DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "double_well": ("solver", "sl", "sl-l8", "sl-l128", "mse", "cfm5", "cfm20", "es", "dice"),
    "lorenz63": ("solver", "sl", "sl-l8", "sl-l128", "mse", "cfm5", "cfm20", "es", "dice"),
    "allen_cahn": (
        "solver",
        "sl-channels",
        "sl-noise_field",
        "sl-embedding",
        "mse",
        "cfm5",
        "cfm20",
        "es",
    ),
    "vlasov": ("solver", "dice"),
}

# Which kinds of problem each family applies to. DICE on fields needs a double backward
# through an FNO per training step; it is left out of the field problem for cost.
APPLIES: dict[str, tuple[str, ...]] = {
    "solver": ("vector", "field", "particles"),
    "sl": ("vector", "field"),
    "mse": ("vector", "field"),
    "cfm": ("vector", "field"),
    "es": ("vector", "field"),
    "dice": ("vector", "particles"),
}

_NAME = re.compile(
    r"^(?:(?P<solver>solver)|(?P<dice>dice)|(?:(?P<mse>mse)|(?P<es>es)|cfm(?P<k>\d+)"
    r"|sl(?:-(?P<inj>channels|noise_field|embedding))?(?:-l(?P<label>\d+))?)(?P<bf16>-bf16)?)$"
)


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name."""

    name: str
    family: str  # solver, sl, mse, cfm, es, dice
    label_dim: int = DEFAULT_LABEL_DIM
    injection: str = DEFAULT_INJECTION
    n_euler: int = 0
    bf16: bool = False  # sample under torch.autocast(bfloat16)

    @property
    def training_key(self) -> str:
        """Methods with the same key share one trained model: CFM sampled with several K,
        and a ``-bf16`` variant with its float32 sampler."""
        if self.family == "cfm":
            return "cfm"
        return self.name.removesuffix("-bf16")


def parse_method(name: str) -> MethodSpec:
    m = _NAME.match(name)
    if m is None:
        raise ValueError(
            f"unknown method {name!r}; expected solver, sl, sl-<injection>, sl-l<L>, "
            f"sl-<injection>-l<L>, mse, cfm<K>, es or dice (injection in {INJECTIONS}), the "
            "transition methods optionally with a -bf16 suffix"
        )
    bf16 = m["bf16"] is not None
    if m["k"] is not None:
        if int(m["k"]) < 1:
            raise ValueError(f"{name}: CFM needs at least one Euler step")
        return MethodSpec(name, "cfm", n_euler=int(m["k"]), bf16=bf16)
    for family in ("solver", "mse", "es", "dice"):
        if m[family]:
            return MethodSpec(name, family, bf16=bf16)
    label = int(m["label"]) if m["label"] else DEFAULT_LABEL_DIM
    if label < 1:
        raise ValueError(f"{name}: the label size must be >= 1")
    injection = m["inj"] or DEFAULT_INJECTION
    return MethodSpec(name, "sl", label_dim=label, injection=injection, bf16=bf16)


def applies(spec: MethodSpec, problem: ProblemData) -> bool:
    return problem.kind in APPLIES[spec.family]


def budget(problem: ProblemData, quick: bool) -> Budget:
    return BUDGETS[(problem.name, quick)]


def _field_backbone(problem: ProblemData, quick: bool, **kwargs) -> nn.Module:
    from ..adapters.neuralop import lifted_operator

    n_grid = problem.state_shape[-1]
    return lifted_operator(
        "fno",
        state_channels=problem.state_shape[0],
        n_modes=(min(16, n_grid // 2),),
        hidden_channels=budget(problem, quick).hidden,
        n_layers=2 if quick else 4,
        **kwargs,
    )


def _backbone(problem: ProblemData, quick: bool, *, label_dim: int, **kwargs) -> nn.Module:
    """The problem's backbone with ``label_dim`` label inputs (0: none)."""
    if problem.kind == "field":
        return _field_backbone(problem, quick, label_dim=label_dim, **kwargs)
    d = problem.state_shape[0]
    extra = set(kwargs) - {"history", "n_cond"}
    if extra:
        raise ValueError(f"vector backbones take history and n_cond, not {sorted(extra)}")
    return MLP(
        kwargs.get("history", 1) * d,
        d,
        label_dim=label_dim,
        n_cond=kwargs.get("n_cond", 0),
        hidden=budget(problem, quick).hidden,
    )


def _state_shape(problem: ProblemData) -> tuple[int | None, ...]:
    # Operators are resolution-agnostic: leave the grid open.
    return (problem.state_shape[0], None) if problem.kind == "field" else problem.state_shape


def build_stepper(spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
    """A fresh, untrained stepper for ``spec`` on ``problem``.

    Its weights come from the global RNG (the runner seeds it inside
    ``torch.random.fork_rng``); the training noise of CFM and ES from ``seed``.
    """
    shape, dt = _state_shape(problem), problem.dt
    injection = {"injection": spec.injection} if problem.kind == "field" else {}
    if spec.family == "sl":
        net = _backbone(problem, quick, label_dim=spec.label_dim, **injection)
        return StochasticLifting(net, shape, dt=dt)
    if spec.family == "mse":
        return MeanRegression(_backbone(problem, quick, label_dim=0), shape, dt=dt)
    if spec.family == "es":
        net = _backbone(problem, quick, label_dim=DEFAULT_LABEL_DIM, **injection)
        return EnergyScoreLifting(net, shape, n_members=ES_MEMBERS, dt=dt, seed=seed)
    if spec.family == "cfm":
        net = _backbone(problem, quick, label_dim=0, history=2, n_cond=1)
        return FlowMatching(net, shape, n_euler=spec.n_euler, dt=dt, seed=seed)
    if spec.family == "dice":
        return _dice(problem, quick)
    raise ValueError(f"{spec.name} is not a learned method")


def _dice(problem: ProblemData, quick: bool) -> DICE:
    b = budget(problem, quick)
    if problem.kind == "particles":
        potential = PotentialMLP(
            2,
            n_params=1,
            hidden=b.hidden,
            depth=3 if quick else 4,
            periods=[problem.extras["length"], None],
        )
        return DICE(potential, (2,), n_params=1, dt=problem.dt, n_substeps=4)
    d = problem.state_shape[0]
    return DICE(
        PotentialMLP(d, hidden=b.hidden),
        (d,),
        sigma=problem.sigma,
        dt=problem.dt,
        n_substeps=4,
    )


def training_data(
    spec: MethodSpec, stepper: Stepper, problem: ProblemData, seed: int
) -> TransitionDataset | SnapshotDataset:
    """The dataset ``spec`` trains on: transitions (with fixed labels for SL) or snapshots."""
    if spec.family == "dice":
        # DICE's training draws a random sorted subset of times (endpoints kept) per batch
        n_times = min(DICE_TIMES_PER_BATCH, problem.train.sizes["time"])
        return SnapshotDataset.from_xarray(problem.train, n_times=n_times)
    labels = None
    if spec.family == "sl":
        grid = problem.state_shape[1:]
        labels = stepper.fixed_labels(seed, grid)
    return TransitionDataset.from_xarray(problem.train, labels=labels)


def set_sampling(stepper: Stepper, spec: MethodSpec) -> None:
    """Configure a trained stepper for ``spec``'s sampler (CFM's number of Euler steps)."""
    if spec.family == "cfm":
        stepper.n_euler = spec.n_euler
