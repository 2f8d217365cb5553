"""Data: xarray ensembles <-> tensors, training datasets, files.

Four modules, one concern each:

- :mod:`~slift_plugin.data.ensemble`: the ensemble conventions (dims
  ``("sample", "time", "channel", *grid)``, parameters as ``mu_<name>`` coords) and the
  conversions between ensembles and tensors;
- :mod:`~slift_plugin.data.io`: atomic file writes, netCDF/zarr ensembles;
- :mod:`~slift_plugin.data.transitions`: :class:`TransitionDataset`,
  :class:`WithFixedLabels` and their normalisation statistics;
- :mod:`~slift_plugin.data.snapshots`: :class:`SnapshotDataset`, unpaired populations for
  DICE.

Every public name is re-exported here. This package never knows about models.
"""

from .ensemble import (
    LEADING_DIMS,
    MU_PREFIX,
    check_ensemble,
    ensemble_params,
    ensemble_to_tensor,
    param_names,
    tensor_to_ensemble,
    uniform_step,
)
from .io import atomic_write, load_ensemble, save_netcdf
from .snapshots import SnapshotDataset
from .transitions import TransitionDataset, WithFixedLabels, transition_statistics

__all__ = [
    "LEADING_DIMS",
    "MU_PREFIX",
    "SnapshotDataset",
    "TransitionDataset",
    "WithFixedLabels",
    "atomic_write",
    "check_ensemble",
    "ensemble_params",
    "ensemble_to_tensor",
    "load_ensemble",
    "param_names",
    "save_netcdf",
    "tensor_to_ensemble",
    "transition_statistics",
    "uniform_step",
]
