"""The stepper methods, one module per family, over the bases they share.

=====================  =================================================================
module                 steppers
=====================  =================================================================
``base``               :class:`NormalizedStepper`, :class:`TransitionStepper`,
                       :class:`FreshNoiseTraining` (the shared bases)
``lifting``            :class:`StochasticLifting`, :class:`MeanRegression`
``dice``               :class:`DICE`
``flow_matching``      :class:`FlowMatching`
``energy_score``       :class:`EnergyScoreLifting`
``coupling``           :func:`teacher_labels`: coupled labels for SL from a
                       flow-matching teacher
=====================  =================================================================

Every stepper fulfils the abstract :class:`slift_plugin.Stepper` contract. A new method is
one module here, exported below, plus one entry in the contract suite's list
(``tests/steppers.py``) and, to benchmark it, one family in
:mod:`slift_plugin.bench.methods`; see CONTRIBUTING.md. Methods never import file IO,
the training loop or the rollout engine.
"""

from .base import FreshNoiseTraining, NormalizedStepper, TransitionStepper
from .coupling import teacher_labels
from .dice import DICE, trapezoid_weights
from .energy_score import EnergyScoreLifting, energy_score
from .flow_matching import FlowMatching
from .lifting import MeanRegression, StochasticLifting

__all__ = [
    "DICE",
    "EnergyScoreLifting",
    "FlowMatching",
    "FreshNoiseTraining",
    "MeanRegression",
    "NormalizedStepper",
    "StochasticLifting",
    "TransitionStepper",
    "energy_score",
    "teacher_labels",
    "trapezoid_weights",
]
