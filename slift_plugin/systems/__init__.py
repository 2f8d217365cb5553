"""Reference stochastic systems that generate ground-truth ensembles as xarray DataArrays."""

from .allen_cahn import allen_cahn, allen_cahn_initial_conditions
from .sdes import (
    DoubleWellSDE,
    Lorenz63SDE,
    OrnsteinUhlenbeckSDE,
    double_well,
    lorenz63,
    ornstein_uhlenbeck,
    ou_transition_moments,
)

__all__ = [
    "DoubleWellSDE",
    "Lorenz63SDE",
    "OrnsteinUhlenbeckSDE",
    "allen_cahn",
    "allen_cahn_initial_conditions",
    "double_well",
    "lorenz63",
    "ornstein_uhlenbeck",
    "ou_transition_moments",
]
