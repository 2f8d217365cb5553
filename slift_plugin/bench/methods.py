"""The methods compared, built on the same backbone architecture per problem.

Every method family is one entry of :data:`FAMILIES`: a :class:`MethodFamily` that says
how it parses its names, which kinds of problem it applies to and runs by default, how it
builds its stepper, what it trains on and how it samples. A method name is parsed into a
:class:`MethodSpec`:

``solver``
    the reference system at its fine internal step (no training);
``sl``, ``sl-<injection>``, ``sl-l<L>``, ``sl-<injection>-l<L>``
    Stochastic Lifting; fields take an injection (one of
    :data:`slift_plugin.adapters.neuralop.INJECTIONS`), every backbone a label size ``L``;
``mse``
    the same backbone regressed without labels (collapse to the mean);
``cfm<K>``
    conditional flow matching sampled with ``K`` Euler steps; one training per seed
    serves every ``K``;
``es``
    the SL backbone with fresh noise at every training step and the energy score;
``sl-coupled``
    Stochastic Lifting with coupled labels: a flow-matching teacher (the ``cfm`` model,
    trained with the same budget up to its :attr:`Budget.teacher_epochs`) run backwards
    from each training transition gives its label, of the state's shape (``noise_field``
    injection on fields); sampling is SL's, one evaluation per step. On fields the labels
    are calibrated to unit power per Fourier mode (:data:`LABEL_CALIBRATION`). The
    teacher's training and inversion show as ``data_seconds``;
``dice``
    DICE on unpaired populations (diffusion variant with the system's known sigma; on
    fields the potential is a neural operator, :func:`slift_plugin.adapters.neuralop.
    operator_potential`, with a Hutchinson Laplacian). Each batch draws
    :attr:`Budget.snapshot_times` times (default :data:`DICE_TIMES_PER_BATCH`); where
    :attr:`Budget.scale_potential` is set (Lorenz-96) the potential is scaled by the
    training populations' marginal speed. Not run on Lorenz-63, whose
    point start is outside the method's regime (:attr:`MethodFamily.outside_regime`);
``<method>-bf16``
    a transition method (SL, MSE, CFM, ES) sampled under bfloat16 autocast, with the
    float32 run's trained model: how much bf16 moves the accuracy.

Adding a method to the benchmark is one :class:`MethodFamily` subclass handed to
:func:`register_family`. Every learned method of a problem gets the same budget: the same
epochs, batch size and learning rate (:data:`BUDGETS`).
"""

from __future__ import annotations

import re
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .. import (
    DICE,
    MLP,
    EnergyScoreLifting,
    FitResult,
    FlowMatching,
    MeanRegression,
    PotentialMLP,
    SnapshotDataset,
    Stepper,
    StochasticLifting,
    TransitionDataset,
    fit,
    teacher_labels,
)
from ..labels import hash_seed
from .problems import PROBLEM_KINDS, ProblemData

__all__ = [
    "BF16_SUFFIX",
    "BUDGETS",
    "COUPLING_STEPS",
    "INVERSION_STEPS",
    "DEFAULT_INJECTION",
    "DEFAULT_LABEL_DIM",
    "DICE_TIMES_PER_BATCH",
    "ES_MEMBERS",
    "FAMILIES",
    "LABEL_CALIBRATION",
    "Budget",
    "MethodFamily",
    "MethodSpec",
    "TransitionFamily",
    "applies",
    "budget",
    "build_seeded",
    "build_stepper",
    "default_methods",
    "not_applicable_reason",
    "parse_method",
    "register_family",
    "set_sampling",
    "train_with_budget",
    "training_data",
]

DEFAULT_LABEL_DIM = 32
DEFAULT_INJECTION = "channels"
ES_MEMBERS = 2
DICE_TIMES_PER_BATCH = 8
BF16_SUFFIX = "-bf16"
COUPLING_STEPS = 20  # Euler steps per output step of the flow-matching teacher's sampler
# Euler steps of the teacher's backward flow that gives the labels, by problem kind. On the
# double well 20 steps left the short horizon at ED ratio 5.0 (pooled 3.2) and 160 steps
# brought it to 2.3 (pooled 1.1), mid and final unchanged (benchmarks/recipe_study.py,
# 3 seeds); the inversion is a one-off pass, 160 steps cost about 10 s there. Fields keep
# 20: their short horizon was already at 1.3, and an FNO inversion pass costs 8x more.
INVERSION_STEPS = {"vector": 160, "field": 20}
# teacher_labels(calibrate=...) by problem kind. On fields the 20 Euler steps contract the
# fine Fourier modes of the labels (0.85-0.94 by mode), and SL comes out too rough; unit
# power per mode removes that (the demo's spectrum error 0.080 -> 0.028; BENCHMARKS.md,
# "Calibrated labels"). Vectors' 160 steps leave the labels' spread at 0.99-1.00.
LABEL_CALIBRATION = {"vector": None, "field": "fourier"}


# DICE's sub-steps by problem kind (4 gradient evaluations per output step everywhere).
# On Lorenz-96 the exact drift diverges with 4 Euler sub-steps and is at the noise floor
# with 2 Heun ones, and the trained DICE's ED ratio at t = 0.25 / 1 / 2 went 1.61 / 4.70 /
# 5.68 -> 1.81 / 3.17 / 4.34 and 1.61 / 2.15 / 3.54 -> 2.05 / 1.40 / 2.54 (seeds 0, 1:
# benchmarks/dice_lorenz96_study.py --sample-heun; BENCHMARKS.md, "Lorenz-96 in the bench:
# a broad start and 2,048 trajectories per forcing"). On the other problems Heun was worse
# (double well, Allen-Cahn) or equal (Vlasov) (benchmarks/dice_integrator.py).
DICE_INTEGRATOR: dict[str, dict[str, Any]] = {
    "vector": {"n_substeps": 4, "scheme": "euler"},
    "particles": {"n_substeps": 4, "scheme": "euler"},
    "field": {"n_substeps": 4, "scheme": "euler"},
    "population": {"n_substeps": 2, "scheme": "heun"},
}


@dataclass(frozen=True)
class Budget:
    """Training budget shared by every learned method of one problem.

    Attributes
    ----------
    epochs : int
        Passes over the training data.
    batch_size : int
        Examples per optimisation step.
    lr : float
        Peak learning rate.
    hidden : int
        MLP width / FNO hidden channels.
    snapshot_epochs : int or None
        Epochs of the methods trained on snapshots (DICE); None: ``epochs``. An epoch of
        snapshots has one batch per ``batch_size`` samples of the largest population,
        where an epoch of transitions has one per ``batch_size`` transitions (``n_steps``
        times more): problems with long trajectories give DICE more epochs, so that it
        gets a comparable number of optimisation steps.
    teacher_epochs : int or None
        Epochs of the flow-matching teacher whose backward flow gives ``sl-coupled`` its
        labels; None: ``epochs``. The teacher is inverted with many Euler steps, and its
        best training length for that differs from the ``cfm`` rows' (sampled with 20).
    snapshot_times : int or None
        Snapshot times in each DICE batch (both endpoints among them); None:
        :data:`DICE_TIMES_PER_BATCH`, or every time when there are fewer.
    scale_potential : bool
        DICE's ``potential_scale`` is the training populations'
        :meth:`~slift_plugin.SnapshotDataset.marginal_speed` (else 1).
    """

    epochs: int
    batch_size: int
    lr: float
    hidden: int  # MLP width / FNO hidden channels
    snapshot_epochs: int | None = None
    teacher_epochs: int | None = None
    snapshot_times: int | None = None
    scale_potential: bool = False


BUDGETS: dict[tuple[str, bool], Budget] = {
    # (problem, quick)
    ("double_well", False): Budget(epochs=100, batch_size=256, lr=2e-3, hidden=256),
    ("double_well", True): Budget(epochs=15, batch_size=128, lr=3e-3, hidden=64),
    # sl-coupled's teacher trains 3x longer on Lorenz-63: inverted with 160 Euler steps, 120
    # epochs gave the lowest median autocorrelation error of 40, 80, 120, 160 and 240 (5
    # seeds; teacher 1.17x, coupled SL 1.12x the solver's, against 2.1x and 2.4x with 40;
    # 160: 3.7x and 4.2x). 120 beat 40 on 5 of 5 and 4 of 5 seeds, and on 3 of 3 for both
    # on a second training set (benchmarks/recipe_study.py --experiments autocorrelation;
    # BENCHMARKS.md, "The Lorenz-63 autocorrelation")
    ("lorenz63", False): Budget(epochs=40, batch_size=256, lr=2e-3, hidden=256, teacher_epochs=120),
    ("lorenz63", True): Budget(epochs=10, batch_size=128, lr=3e-3, hidden=64),
    ("allen_cahn", False): Budget(epochs=30, batch_size=64, lr=2e-3, hidden=32),
    ("allen_cahn", True): Budget(epochs=2, batch_size=32, lr=2e-3, hidden=8),
    ("vlasov", False): Budget(epochs=15, batch_size=256, lr=3e-4, hidden=128),
    ("vlasov", True): Budget(epochs=3, batch_size=256, lr=3e-4, hidden=64),
    # CFM: 8192 x 40 transitions = 1280 steps per epoch; DICE: 8192 / 256 = 32 per epoch.
    # DICE sees all 41 times in every batch and scales its potential by the marginals'
    # speed: ED ratio at t = 0.25 / 1 / 2 of 9.6 / 17 / 16.5 against 87 / 56 / 11 with 8
    # times and no scale, medians of 3 seeds, at 5.5x the training time, on the problem's
    # start until 2026-12-03. With today's broad start and 2,048 trajectories per forcing,
    # 1,600 steps gave medians of 3 seeds of 1.8 / 2.8 / 4.9 and 3,200 steps 1.7 / 4.1 /
    # 5.6; 800 steps gave 5.4 / 7.0 / 8.3 (seed 0) (benchmarks/dice_lorenz96_study.py;
    # BENCHMARKS.md, "DICE on Lorenz-96: the potential's shape, the start's breadth, and
    # what 512 trajectories allow"). Sampled with the bench's 2 Heun sub-steps, 2,400 steps
    # gave 1.35 / 2.39 / 2.94, lr 2e-3 1.51 / 2.52 / 2.68 and both 1.73 / 3.54 / 3.74,
    # against 1.81 / 2.52 / 2.77 for this budget: no variant better at every horizon
    # (BENCHMARKS.md, "DICE on the bench's Lorenz-96 problem: learning rate, length,
    # weight average").
    ("lorenz96", False): Budget(
        epochs=10,
        batch_size=256,
        lr=1e-3,
        hidden=128,
        snapshot_epochs=50,
        snapshot_times=41,
        scale_potential=True,
    ),
    ("lorenz96", True): Budget(
        epochs=3, batch_size=128, lr=2e-3, hidden=64, snapshot_epochs=30, scale_potential=True
    ),
}


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name.

    Attributes
    ----------
    name : str
        The name as given, ``-bf16`` suffix included.
    family : str
        Its family, a key of :data:`FAMILIES`.
    label_dim : int
        SL's label size.
    injection : str
        SL's label injection on fields.
    n_euler : int
        CFM's Euler steps per output step.
    bf16 : bool
        Sample under ``torch.autocast(bfloat16)``.
    """

    name: str
    family: str
    label_dim: int = DEFAULT_LABEL_DIM
    injection: str = DEFAULT_INJECTION
    n_euler: int = 0
    bf16: bool = False

    @property
    def training_key(self) -> str:
        """Methods with the same key share one trained model: all variants of a family
        with :attr:`MethodFamily.shared_training` (CFM sampled with several K), and a
        ``-bf16`` variant with its float32 sampler."""
        if FAMILIES[self.family].shared_training:
            return self.family
        return self.name.removesuffix(BF16_SUFFIX)


class MethodFamily(ABC):
    """One family of methods of ``slift bench``: its names, where it runs, how it is built,
    trained and sampled.

    Subclasses set the class attributes and implement :meth:`build`; the other methods
    have the defaults of a family whose only name is its own, trained on transitions.

    Attributes
    ----------
    name : str
        The family's name, a key of :data:`FAMILIES`; its method name unless
        :meth:`options` accepts others.
    kinds : tuple of str
        The problem kinds (:attr:`ProblemData.kind`) it applies to.
    bf16 : bool
        Whether its names take the ``-bf16`` suffix (sampling under bfloat16 autocast).
    shared_training : bool
        Whether all its variants share one trained model per seed.
    outside_regime : dict of str to str
        Problems of a kind it applies to that it is not run on, each with the reason.
    """

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]
    bf16: ClassVar[bool] = False
    shared_training: ClassVar[bool] = False
    outside_regime: ClassVar[dict[str, str]] = {}

    @property
    def syntax(self) -> str:
        """The names it accepts, for people (the error on an unknown name lists them)."""
        return self.name

    def options(self, base: str) -> dict[str, Any] | None:
        """The :class:`MethodSpec` fields that ``base`` (a name without ``-bf16``) sets.

        Parameters
        ----------
        base : str
            A method name without the ``-bf16`` suffix.

        Returns
        -------
        dict or None
            Keyword arguments of :class:`MethodSpec`; None when ``base`` is not a name of
            this family.

        Raises
        ------
        ValueError
            On a name of this family with an invalid option (:func:`parse_method`
            prefixes the name to the message).
        """
        return {} if base == self.name else None

    def defaults(self, kind: str) -> tuple[str, ...]:
        """The names run by default on problems of ``kind`` (none where it does not apply).

        Parameters
        ----------
        kind : str
            A problem kind.

        Returns
        -------
        tuple of str
        """
        return (self.name,) if kind in self.kinds else ()

    @abstractmethod
    def build(self, spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
        """A fresh, untrained stepper; see :func:`build_stepper`.

        Parameters
        ----------
        spec : MethodSpec
            The method, of this family.
        problem : ProblemData
            The problem, which sizes the backbone.
        quick : bool
            Quick (CI) or full sizes.
        seed : int
            The training seed.

        Returns
        -------
        Stepper
        """

    def training_data(
        self, spec: MethodSpec, stepper: Stepper, problem: ProblemData, seed: int
    ) -> TransitionDataset | SnapshotDataset:
        """The dataset ``stepper`` trains on; see :func:`training_data`.

        The default: the transitions of ``problem.train``, without labels.

        Parameters
        ----------
        spec : MethodSpec
            The method, of this family.
        stepper : Stepper
            Its stepper, from :meth:`build`.
        problem : ProblemData
            The problem, whose ``train`` ensemble is read.
        seed : int
            The training seed.

        Returns
        -------
        TransitionDataset or SnapshotDataset
        """
        return TransitionDataset.from_xarray(problem.train)

    def set_sampling(self, stepper: Stepper, spec: MethodSpec) -> None:
        """Configure a trained stepper for ``spec``'s sampler; nothing by default.

        Parameters
        ----------
        stepper : Stepper
            The trained stepper, changed in place.
        spec : MethodSpec
            The method to sample, of this family.
        """
        return  # most samplers have no options: not abstract


class TransitionFamily(MethodFamily):
    """A method regressing the transitions of vectors and fields, also sampled in bf16."""

    kinds = ("vector", "field")
    bf16 = True


FAMILIES: dict[str, MethodFamily] = {}
"""The registry: family name -> family, in the order of :func:`default_methods`."""


def register_family(family: MethodFamily) -> MethodFamily:
    """Add ``family`` to the benchmark: after the others in :data:`FAMILIES`.

    Parameters
    ----------
    family : MethodFamily
        The new family; its name must be new.

    Returns
    -------
    MethodFamily
        ``family``.

    Raises
    ------
    ValueError
        If a family of that name is registered already.
    """
    if family.name in FAMILIES:
        raise ValueError(f"a method family {family.name!r} is registered already")
    FAMILIES[family.name] = family
    return family


def parse_method(name: str) -> MethodSpec:
    """Parse a method name with the first family of :data:`FAMILIES` that accepts it.

    Parameters
    ----------
    name : str
        A method name, e.g. ``sl-noise_field-l8``, ``cfm5-bf16``.

    Returns
    -------
    MethodSpec

    Raises
    ------
    ValueError
        On a name no family accepts, or an invalid option (label size, Euler steps).
    """
    base = name.removesuffix(BF16_SUFFIX)
    bf16 = base != name
    for family in FAMILIES.values():
        if bf16 and not family.bf16:
            continue
        try:
            options = family.options(base)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        if options is not None:
            return MethodSpec(name, family.name, bf16=bf16, **options)
    raise ValueError(_unknown(name))


def _unknown(name: str) -> str:
    forms = ", ".join(f.syntax for f in FAMILIES.values())
    with_bf16 = ", ".join(f.name for f in FAMILIES.values() if f.bf16)
    return (
        f"unknown method {name!r}; expected one of {forms}; the {with_bf16} methods also "
        f"take a {BF16_SUFFIX} suffix"
    )


def default_methods(problem: str) -> tuple[str, ...]:
    """The methods run on ``problem`` by default: each family's defaults, in registry order.

    Parameters
    ----------
    problem : str
        A key of :data:`slift_plugin.bench.problems.PROBLEMS`.

    Returns
    -------
    tuple of str
    """
    kind = PROBLEM_KINDS[problem]
    return tuple(
        name
        for family in FAMILIES.values()
        if problem not in family.outside_regime
        for name in family.defaults(kind)
    )


def applies(spec: MethodSpec, problem: ProblemData) -> bool:
    """Whether ``spec``'s family runs on ``problem``'s kind.

    Parameters
    ----------
    spec : MethodSpec
        The method.
    problem : ProblemData
        The problem.

    Returns
    -------
    bool
        False also on a problem outside the family's regime.
    """
    return not not_applicable_reason(spec, problem)


def not_applicable_reason(spec: MethodSpec, problem: ProblemData) -> str:
    """Why ``spec`` does not run on ``problem``; empty when it does.

    Parameters
    ----------
    spec : MethodSpec
        The method.
    problem : ProblemData
        The problem.

    Returns
    -------
    str
        ``"not applicable to <kind> problems"``, the family's reason for a problem outside
        its regime, or ``""``.
    """
    family = FAMILIES[spec.family]
    if problem.kind not in family.kinds:
        return f"not applicable to {problem.kind} problems"
    return family.outside_regime.get(problem.name, "")


def budget(problem: ProblemData, quick: bool) -> Budget:
    """The training budget of ``problem`` at quick or full size.

    Parameters
    ----------
    problem : ProblemData
        The problem.
    quick : bool
        Quick (CI) or full sizes.

    Returns
    -------
    Budget
        The entry of :data:`BUDGETS`.
    """
    return BUDGETS[(problem.name, quick)]


def build_stepper(spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
    """A fresh, untrained stepper for ``spec`` on ``problem``.

    Its weights come from the global RNG (the runner seeds it inside
    ``torch.random.fork_rng``); the training noise of CFM and ES from ``seed``.

    Parameters
    ----------
    spec : MethodSpec
        The method.
    problem : ProblemData
        The problem, which sizes the backbone.
    quick : bool
        Quick (CI) or full sizes.
    seed : int
        The training seed.

    Returns
    -------
    Stepper

    Raises
    ------
    ValueError
        For a method without a model (the solver).
    """
    return FAMILIES[spec.family].build(spec, problem, quick, seed)


def build_seeded(
    spec: MethodSpec, problem: ProblemData, quick: bool, seed: int, *, key: str
) -> Stepper:
    """:func:`build_stepper` with initial weights drawn from ``(seed, crc32(key))``.

    Parameters
    ----------
    spec : MethodSpec
        The method.
    problem : ProblemData
        The problem.
    quick : bool
        The quick suite's sizes.
    seed : int
        The training seed.
    key : str
        Names the model, so that models of one seed get independent weights.

    Returns
    -------
    Stepper
        Untrained; the global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        # only the CPU generator: torch.manual_seed would also reseed every CUDA generator
        torch.default_generator.manual_seed(hash_seed(seed, zlib.crc32(key.encode())))
        return build_stepper(spec, problem, quick, seed)


def train_with_budget(
    stepper: Stepper,
    data: TransitionDataset | SnapshotDataset,
    problem: ProblemData,
    quick: bool,
    seed: int,
    device: str | None = None,
    epochs: int | None = None,
) -> FitResult:
    """``fit`` with the problem's budget, shared by every learned method (snapshot data
    gets :attr:`Budget.snapshot_epochs` where the problem sets them).

    Parameters
    ----------
    stepper : Stepper
        Trained in place.
    data : TransitionDataset or SnapshotDataset
        Its training data.
    problem : ProblemData
        Gives the budget.
    quick : bool
        The quick suite's budget.
    seed : int
        The shuffling seed.
    device : str or None
        Where to train (the stepper's device if None).
    epochs : int or None
        Overrides the budget's epochs (the ``sl-coupled`` teacher's
        :attr:`Budget.teacher_epochs`); None: the budget's.

    Returns
    -------
    FitResult
        The training record.
    """
    b = budget(problem, quick)
    if epochs is None:
        snapshots = isinstance(data, SnapshotDataset) and b.snapshot_epochs is not None
        epochs = b.snapshot_epochs if snapshots else b.epochs
    return fit(
        stepper,
        data,
        epochs=epochs,
        batch_size=b.batch_size,
        lr=b.lr,
        weight_decay=0.0,
        seed=seed,
        device=device,
        progress=False,
    )


def training_data(
    spec: MethodSpec, stepper: Stepper, problem: ProblemData, seed: int
) -> TransitionDataset | SnapshotDataset:
    """The dataset ``spec`` trains on: transitions (with fixed labels for SL) or snapshots.

    Parameters
    ----------
    spec : MethodSpec
        The method.
    stepper : Stepper
        Its stepper, from :func:`build_stepper`.
    problem : ProblemData
        The problem, whose ``train`` ensemble is read.
    seed : int
        The training seed (SL's fixed labels).

    Returns
    -------
    TransitionDataset or SnapshotDataset
    """
    return FAMILIES[spec.family].training_data(spec, stepper, problem, seed)


def set_sampling(stepper: Stepper, spec: MethodSpec) -> None:
    """Configure a trained stepper for ``spec``'s sampler (CFM's number of Euler steps).

    Parameters
    ----------
    stepper : Stepper
        The trained stepper, changed in place.
    spec : MethodSpec
        The method to sample.
    """
    FAMILIES[spec.family].set_sampling(stepper, spec)


# -- backbones ------------------------------------------------------------------------------
def _field_backbone(
    problem: ProblemData, quick: bool, *, spatial_noise: bool, **kwargs
) -> nn.Module:
    from ..adapters.neuralop import lifted_operator

    # Every Fourier mode of the grid (neuraloperator keeps n_modes // 2 + 1 of the real
    # FFT): a white label field must be shaped at every wavenumber. On the demo's field 16
    # (9 modes) left a spectrum error of 0.42, all modes 0.073 (solver 0.028), for up to
    # 1.3x the training time (BENCHMARKS.md, "A rollout loss, and every Fourier mode").
    # No positional embedding where the input carries noise that varies in space (a
    # noise-field label, CFM's z): the field is homogeneous on a periodic grid; without the
    # cell coordinates as inputs the FNO commutes with shifts and cannot learn the chance
    # spatial pattern of the training ensemble (BENCHMARKS.md, "Translation-equivariant
    # FNOs"). Methods whose label is constant in space or absent keep the grid embedding:
    # from the homogeneous start u0 = 0 an equivariant FNO returns uniform fields whatever
    # the label (spectrum error 8.9, a uniform ensemble's; BENCHMARKS.md, "Stochastic
    # Allen-Cahn with the current field backbone").
    n_grid = problem.state_shape[-1]
    return lifted_operator(
        "fno",
        state_channels=problem.state_shape[0],
        n_modes=(n_grid,),
        hidden_channels=budget(problem, quick).hidden,
        n_layers=2 if quick else 4,
        positional_embedding=None if spatial_noise else "grid",
        **kwargs,
    )


def _backbone(
    problem: ProblemData, quick: bool, *, label_dim: int, spatial_noise: bool = False, **kwargs
) -> nn.Module:
    """The problem's backbone with ``label_dim`` label inputs (0: none); ``spatial_noise``:
    an input varies in space at random (a noise-field label, CFM's z), which decides the
    operator's positional embedding (MLPs ignore it)."""
    if problem.kind == "field":
        return _field_backbone(
            problem, quick, label_dim=label_dim, spatial_noise=spatial_noise, **kwargs
        )
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


def _labelled_backbone(
    spec: MethodSpec, problem: ProblemData, quick: bool, label_dim: int
) -> nn.Module:
    # only operators take an injection; MLPs concatenate the label
    injection = {"injection": spec.injection} if problem.kind == "field" else {}
    spatial_noise = spec.injection == "noise_field"
    return _backbone(problem, quick, label_dim=label_dim, spatial_noise=spatial_noise, **injection)


def _n_params(problem: ProblemData) -> int:
    """Number of physics parameters the problem's models are conditioned on."""
    return len(problem.mu) if problem.mu else 0


def _state_shape(problem: ProblemData) -> tuple[int | None, ...]:
    # Operators are resolution-agnostic: leave the grid open.
    return (problem.state_shape[0], None) if problem.kind == "field" else problem.state_shape


def _injections() -> tuple[str, ...]:
    # Imported when an SL name is parsed, not with this module: the CLI imports the bench,
    # and only the bench needs neuraloperator.
    from ..adapters.neuralop import INJECTIONS

    return INJECTIONS


# -- the families -----------------------------------------------------------------------------
class _Solver(MethodFamily):
    name = "solver"
    kinds = ("vector", "field", "particles", "population")

    def build(self, spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
        raise ValueError(f"{spec.name} is not a learned method")


class _StochasticLifting(TransitionFamily):
    name = "sl"
    _DEFAULTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "vector": ("sl", "sl-l8", "sl-l128"),
        "field": ("sl-channels", "sl-noise_field", "sl-embedding"),
    }

    @property
    def syntax(self) -> str:
        return f"sl[-<injection>][-l<L>] (<injection>: {', '.join(_injections())})"

    def options(self, base: str) -> dict[str, Any] | None:
        injections = "|".join(map(re.escape, _injections()))
        match = re.fullmatch(rf"sl(?:-(?P<injection>{injections}))?(?:-l(?P<label>\d+))?", base)
        if match is None:
            return None
        label = int(match["label"]) if match["label"] else DEFAULT_LABEL_DIM
        if label < 1:
            raise ValueError("the label size must be >= 1")
        return {"label_dim": label, "injection": match["injection"] or DEFAULT_INJECTION}

    def defaults(self, kind: str) -> tuple[str, ...]:
        return self._DEFAULTS.get(kind, ())

    def build(self, spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
        net = _labelled_backbone(spec, problem, quick, spec.label_dim)
        return StochasticLifting(net, _state_shape(problem), dt=problem.dt)

    def training_data(
        self, spec: MethodSpec, stepper: Stepper, problem: ProblemData, seed: int
    ) -> TransitionDataset:
        labels = stepper.fixed_labels(seed, problem.state_shape[1:])
        return TransitionDataset.from_xarray(problem.train, labels=labels)


class _MeanRegression(TransitionFamily):
    name = "mse"

    def build(self, spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
        net = _backbone(problem, quick, label_dim=0)
        return MeanRegression(net, _state_shape(problem), dt=problem.dt)


class _FlowMatching(TransitionFamily):
    name = "cfm"
    kinds = ("vector", "field", "population")
    shared_training = True  # K is a sampling option

    @property
    def syntax(self) -> str:
        return "cfm<K>"

    def options(self, base: str) -> dict[str, Any] | None:
        match = re.fullmatch(r"cfm(?P<k>\d+)", base)
        if match is None:
            return None
        if int(match["k"]) < 1:
            raise ValueError("CFM needs at least one Euler step")
        return {"n_euler": int(match["k"])}

    def defaults(self, kind: str) -> tuple[str, ...]:
        return ("cfm5", "cfm20") if kind in self.kinds else ()

    def build(self, spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
        n_params = _n_params(problem)  # conditioned on [mu, flow time s]
        net = _backbone(
            problem, quick, label_dim=0, spatial_noise=True, history=2, n_cond=n_params + 1
        )
        return FlowMatching(
            net,
            _state_shape(problem),
            n_params=n_params,
            n_euler=spec.n_euler,
            dt=problem.dt,
            seed=seed,
        )

    def set_sampling(self, stepper: Stepper, spec: MethodSpec) -> None:
        stepper.n_euler = spec.n_euler


class _EnergyScore(TransitionFamily):
    name = "es"

    def build(self, spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
        net = _labelled_backbone(spec, problem, quick, DEFAULT_LABEL_DIM)
        return EnergyScoreLifting(
            net, _state_shape(problem), n_members=ES_MEMBERS, dt=problem.dt, seed=seed
        )


class _DICE(MethodFamily):
    name = "dice"
    kinds = ("vector", "field", "particles", "population")
    # Every sample of Lorenz-63 starts at one point, which the noise and the chaos stretch
    # along the attractor: the first populations are nearly a point mass, where X_{k+1}
    # has mass and X_k has none, the case in which DICE's sampled loss with few snapshot
    # times runs unbounded below (DESIGN.md, "Regime"). Measured in the bench: ED ratios
    # of 400 to 30,000 and a training loss of -223. The double well also starts at a
    # point, but in one dimension, where the known diffusion spreads it (ED ratio 0.7).
    outside_regime: ClassVar[dict[str, str]] = {
        "lorenz63": "outside DICE's regime: every sample starts at one point (a point-mass "
        "first population, stretched by chaos in 3-D)",
    }

    def build(self, spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
        b = budget(problem, quick)
        n_params = _n_params(problem)
        if problem.kind == "field":
            return self._field(problem, quick, n_params)
        if problem.kind == "particles":
            potential = PotentialMLP(
                2,
                n_params=n_params,
                hidden=b.hidden,
                depth=3 if quick else 4,
                periods=[problem.extras["length"], None],
            )
            return DICE(
                potential, (2,), n_params=n_params, dt=problem.dt, **DICE_INTEGRATOR["particles"]
            )
        d = problem.state_shape[0]
        return DICE(
            PotentialMLP(d, n_params=n_params, hidden=b.hidden),
            (d,),
            n_params=n_params,
            sigma=problem.sigma,
            dt=problem.dt,
            **DICE_INTEGRATOR[problem.kind],
        )

    @staticmethod
    def _field(problem: ProblemData, quick: bool, n_params: int) -> Stepper:
        """An FNO potential (a functional: one output channel averaged over the grid).

        Each DICE training step differentiates the potential twice (the velocity, then
        the loss), and the Laplacian of the diffusion term is a Hutchinson estimate (one
        probe): an exact one would take one more backward per grid value.
        """
        from ..adapters.neuralop import operator_potential

        n_grid = problem.state_shape[-1]
        potential = operator_potential(
            "fno",
            state_channels=problem.state_shape[0],
            n_params=n_params,
            n_modes=(min(16, n_grid // 2),),
            hidden_channels=budget(problem, quick).hidden,
            n_layers=2,
        )
        return DICE(
            potential,
            _state_shape(problem),
            n_params=n_params,
            sigma=problem.sigma,
            laplacian="hutchinson",
            dt=problem.dt,
            **DICE_INTEGRATOR["field"],
        )

    def training_data(
        self, spec: MethodSpec, stepper: Stepper, problem: ProblemData, seed: int
    ) -> SnapshotDataset:
        # DICE's training draws a random sorted subset of times (endpoints kept) per batch
        b = budget(problem, problem.quick)
        n_times = min(b.snapshot_times or DICE_TIMES_PER_BATCH, problem.train.sizes["time"])
        data = SnapshotDataset.from_xarray(problem.train, n_times=n_times)
        if b.scale_potential:
            stepper.potential_scale = data.marginal_speed()
        return data


class _CoupledLifting(TransitionFamily):
    name = "sl-coupled"

    def defaults(self, kind: str) -> tuple[str, ...]:
        return (self.name,) if kind in self.kinds else ()

    def options(self, base: str) -> dict[str, Any] | None:
        # the label has the state's shape: a noise field of C channels on grids
        return {"injection": "noise_field"} if base == self.name else None

    def build(self, spec: MethodSpec, problem: ProblemData, quick: bool, seed: int) -> Stepper:
        net = _labelled_backbone(spec, problem, quick, problem.state_shape[0])
        return StochasticLifting(net, _state_shape(problem), dt=problem.dt)

    def training_data(
        self, spec: MethodSpec, stepper: Stepper, problem: ProblemData, seed: int
    ) -> TransitionDataset:
        data = TransitionDataset.from_xarray(problem.train)
        teacher = self._trained_teacher(problem, data, seed)
        labels = teacher_labels(
            teacher,
            data,
            n_steps=INVERSION_STEPS[problem.kind],
            calibrate=LABEL_CALIBRATION[problem.kind],
        )
        return TransitionDataset.from_xarray(problem.train, labels=labels)

    @staticmethod
    def _trained_teacher(problem: ProblemData, data: TransitionDataset, seed: int) -> Stepper:
        """The ``cfm`` family's model with the problem's budget, trained for its
        :attr:`Budget.teacher_epochs`: where those are the budget's epochs, the same teacher
        as the ``cfm`` rows of this seed up to its initial weights."""
        cfm = MethodSpec("cfm", "cfm", n_euler=COUPLING_STEPS)
        teacher = build_seeded(cfm, problem, problem.quick, seed, key="sl-coupled teacher")
        epochs = budget(problem, problem.quick).teacher_epochs
        train_with_budget(teacher, data, problem, problem.quick, seed, epochs=epochs)
        return teacher


for _family in (
    _Solver(),
    _StochasticLifting(),
    _CoupledLifting(),
    _MeanRegression(),
    _FlowMatching(),
    _EnergyScore(),
    _DICE(),
):
    register_family(_family)
del _family
