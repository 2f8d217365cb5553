"""slift-plugin: fast generators of diverse stochastic trajectories from existing surrogates.

Public surface::

    Stepper                     the abstract contract every method fulfils
    NormalizedStepper           a Stepper with standardisation statistics in buffers
    TransitionStepper           the base of the transition methods (SL, MSE, CFM, ES)
    StochasticLifting           regression with fixed random labels, fresh labels at sampling
    MeanRegression              the deterministic (collapse-to-the-mean) baseline
    FlowMatching                conditional flow matching, K Euler steps per output step
    EnergyScoreLifting          the SL backbone trained with fresh noise and the energy score
    DICE, PotentialMLP          population dynamics from unpaired snapshots
    SnapshotDataset             populations per time (and per mu) for DICE
    MLP                         backbone for vector states
    TransitionDataset           transitions of an ensemble, with fixed labels
    WithFixedLabels             attach fixed labels to any dict dataset (neuraloperator)
    IndexedGaussianLabels       labels as a pure function of (seed, index)
    StoredLabels, teacher_labels  coupled labels: a flow-matching teacher run backwards
    fit, rollout, evaluate      train any stepper, generate ensembles, score them
    HeldOut                     held-out transitions that select fit()'s best epoch
    HeldOutPopulations          held-out populations that select it by rollouts (DICE)

The methods live in ``slift_plugin.methods`` (one module per family), the interfaces a
backbone or dataset must offer in ``slift_plugin.protocols``. Neural-operator backbones and
torchsde glue live in ``slift_plugin.adapters``; the benchmark suite in
``slift_plugin.bench``; torchrun helpers in ``slift_plugin.distributed``.
"""

from .backbones import MLP, PotentialMLP
from .checkpoint import CheckpointError, load_stepper, save_stepper
from .data import (
    SnapshotDataset,
    TransitionDataset,
    WithFixedLabels,
    load_ensemble,
    save_netcdf,
    tensor_to_ensemble,
)
from .labels import ContentLabels, IndexedGaussianLabels, StoredLabels
from .methods import (
    DICE,
    EnergyScoreLifting,
    FlowMatching,
    MeanRegression,
    NormalizedStepper,
    StochasticLifting,
    TransitionStepper,
    teacher_labels,
    trapezoid_weights,
)
from .metrics import energy_distance, evaluate
from .processing import ProcessedStepper
from .rollout import rollout
from .selection import HeldOut, HeldOutPopulations
from .stepper import Stepper
from .train import FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "DICE",
    "PotentialMLP",
    "SnapshotDataset",
    "trapezoid_weights",
    "CheckpointError",
    "ContentLabels",
    "EnergyScoreLifting",
    "FlowMatching",
    "FitResult",
    "HeldOut",
    "HeldOutPopulations",
    "IndexedGaussianLabels",
    "MLP",
    "MeanRegression",
    "NormalizedStepper",
    "ProcessedStepper",
    "Stepper",
    "StochasticLifting",
    "StoredLabels",
    "TransitionDataset",
    "TransitionStepper",
    "WithFixedLabels",
    "energy_distance",
    "evaluate",
    "fit",
    "load_ensemble",
    "load_stepper",
    "rollout",
    "save_netcdf",
    "save_stepper",
    "teacher_labels",
    "tensor_to_ensemble",
]
