"""Reference stochastic systems that generate ground-truth ensembles as xarray DataArrays."""

from .allen_cahn import allen_cahn, allen_cahn_initial_conditions
from .lorenz96 import Lorenz96SDE, lorenz96, lorenz96_drift
from .sdes import (
    DoubleWellSDE,
    Lorenz63SDE,
    OrnsteinUhlenbeckSDE,
    double_well,
    lorenz63,
    ornstein_uhlenbeck,
    ou_transition_moments,
)
from .vlasov import field_energy, fit_growth_rate, two_stream_growth_rate, vlasov_two_stream

__all__ = [
    "DoubleWellSDE",
    "Lorenz63SDE",
    "Lorenz96SDE",
    "OrnsteinUhlenbeckSDE",
    "allen_cahn",
    "field_energy",
    "fit_growth_rate",
    "two_stream_growth_rate",
    "vlasov_two_stream",
    "allen_cahn_initial_conditions",
    "double_well",
    "lorenz63",
    "lorenz96",
    "lorenz96_drift",
    "ornstein_uhlenbeck",
    "ou_transition_moments",
]
