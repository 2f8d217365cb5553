"""Coupled labels for Stochastic Lifting: a transport of the data instead of independent draws.

Stochastic Lifting with independent fixed labels learns a Gaussian-like law: a fresh
label is nearly orthogonal to every training label, so the fitted map acts on it almost
linearly, fills valleys and loses skew (DESIGN.md, "Measured limit of independent
labels"). Giving transition ``j`` the label that a transport of the data assigns to it
keeps the same regression and the same one-evaluation sampling, but the map now has to
interpolate a monotone transport, which it can:

* with the exact conditional quantile ``xi_j = Phi^{-1}(F(y_j | x_j))`` (one dimension),
  the learned law is the exact one (``tests/test_coupling.py``);
* in general a trained flow-matching teacher provides the transport: its probability-flow
  ODE, run backwards from ``y_j`` given ``x_j`` (and ``mu_j``), gives ``xi_j`` of the
  state's shape. SL then distils the teacher into one evaluation per step.

Sampling is unchanged: fresh ``N(0, I)`` labels of the state's shape at every step. The
SL backbone must take such labels: ``MLP(h*d, d, label_dim=d)`` for vectors,
``lifted_operator(..., injection="noise_field", label_dim=C)`` for fields.

Explicit Euler steps of the backward flow contract the labels: for a Gaussian target of
standardised spread ``s`` the label's spread comes out ``< 1``, the more the narrower the
target (20 steps: 0.94 at ``s = 1``, 0.80 at ``s = 0.1``). SL fits the map from those
labels and is sampled with unit-variance ones, so it widens every direction by the inverse
factor. On a field the narrow directions are the fine Fourier modes, and the sampled
spectrum comes out too rough (the demo: label spread 0.85-0.94 by mode, spectrum error
2.9x a solver ensemble's). ``calibrate="fourier"`` rescales every Fourier mode of the labels
to unit mean power over the training set, which removes that error (the demo: 1.0x);
``calibrate="coordinates"`` does the same per coordinate (vectors, or fields without
translation symmetry).
"""

from __future__ import annotations

import torch

from ..labels import StoredLabels
from ..protocols import IndexedBatches
from .flow_matching import FlowMatching

__all__ = ["LABEL_CALIBRATIONS", "teacher_labels"]

LABEL_CALIBRATIONS = ("fourier", "coordinates")


def teacher_labels(
    teacher: FlowMatching,
    dataset: IndexedBatches,
    *,
    n_steps: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    calibrate: str | None = None,
) -> StoredLabels:
    """Label every transition of ``dataset`` with the noise the teacher's flow maps to it.

    Deterministic: the same teacher and data give the same labels, bit for bit, whatever
    ``batch_size`` (each label depends on its own transition only, up to the round-off of
    batched kernels). Cost: ``n_steps`` teacher evaluations per transition, once.

    Parameters
    ----------
    teacher : FlowMatching
        A trained, normalised flow-matching stepper on the same kind of transitions.
    dataset : IndexedBatches
        The training transitions, e.g. a :class:`slift_plugin.TransitionDataset`; its
        batches carry ``x`` ``(B, history*C, *grid)``, ``y`` ``(B, C, *grid)`` and, with
        parameters, ``mu``. Label ``j`` belongs to transition ``j`` of this dataset.
    n_steps : int or None
        Euler steps of the backward flow; defaults to ``teacher.n_euler``.
    batch_size : int
        Transitions inverted together (memory only).
    device : str or torch.device or None
        Where to run the teacher; defaults to its device.
    calibrate : {None, "fourier", "coordinates"}
        Undo the contraction of the Euler inversion (module docstring). ``"fourier"``:
        each channel and Fourier mode of the grid (``rfftn`` over the grid dims,
        orthonormal) is scaled to unit mean power over all transitions, the power of
        white unit noise; for fields on periodic grids, whose law is homogeneous or
        nearly so. ``"coordinates"``: each entry of the label (channel and grid point,
        or vector component) is scaled to unit root mean square. None: the labels as
        the flow gives them. Deterministic, like the labels.

    Returns
    -------
    StoredLabels
        ``(len(dataset), C, *grid)``: pass it as ``labels=`` to the SL training set built
        on the same transitions (``TransitionDataset.from_xarray(data, labels=...)``).

    Raises
    ------
    TypeError
        ``teacher`` is not a FlowMatching or ``dataset`` has no ``get_batch``.
    ValueError
        The teacher is not normalised (untrained), ``batch_size < 1``, ``calibrate`` is
        not one of :data:`LABEL_CALIBRATIONS` or None (or ``"fourier"`` for labels without
        a grid), or the labels come out non-finite (a diverged teacher) or with a mode or
        coordinate of zero power.
    """
    if not isinstance(teacher, FlowMatching):
        raise TypeError(f"the teacher must be a FlowMatching stepper, got {type(teacher).__name__}")
    if not isinstance(dataset, IndexedBatches):
        raise TypeError(
            f"{type(dataset).__name__} is not a slift_plugin.protocols.IndexedBatches "
            "(get_batch(indices)); build the transitions with slift_plugin.TransitionDataset"
        )
    if not bool(teacher.normalized):
        raise ValueError("the teacher is not normalised: train it with fit() first")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if calibrate is not None and calibrate not in LABEL_CALIBRATIONS:
        raise ValueError(
            f"calibrate must be None or one of {LABEL_CALIBRATIONS}, got {calibrate!r}"
        )
    if calibrate == "fourier" and len(teacher.state_shape) < 2:
        raise ValueError(
            "calibrate='fourier' needs states on a grid (C, *grid), got state shape "
            f"{teacher.state_shape}; use calibrate='coordinates' for vector states"
        )
    home, dtype = teacher.param_device_dtype()
    run = torch.device(device) if device is not None else home
    was_training = teacher.training
    teacher.to(run).eval()
    try:
        with torch.no_grad():
            parts = [
                _invert_batch(teacher, dataset.get_batch(index), n_steps, run, dtype)
                for index in torch.arange(len(dataset)).split(int(batch_size))
            ]
    finally:
        teacher.to(home).train(was_training)
    labels = torch.cat(parts)
    if calibrate == "fourier":
        labels = _unit_power_modes(labels)
    elif calibrate == "coordinates":
        labels = labels / _nonzero_rms(labels.double(), "coordinate").to(labels.dtype)
    return StoredLabels(labels)


def _nonzero_rms(values: torch.Tensor, what: str) -> torch.Tensor:
    """Root mean square over the first dim; refuses a zero (nothing to rescale)."""
    rms = values.abs().pow(2).mean(0).sqrt()
    if not (rms > 0).all():
        raise ValueError(f"a label {what} has zero power over the data; it cannot be rescaled")
    return rms


def _unit_power_modes(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` ``(N, C, *grid)`` (a grid: checked on the teacher) with every channel and
    Fourier mode at unit mean power."""
    grid = tuple(labels.shape[2:])
    dims = tuple(range(2, labels.ndim))
    modes = torch.fft.rfftn(labels.double(), dim=dims, norm="ortho")
    modes = modes / _nonzero_rms(modes, "Fourier mode")
    return torch.fft.irfftn(modes, s=grid, dim=dims, norm="ortho").to(labels.dtype)


def _invert_batch(
    teacher: FlowMatching,
    batch: dict[str, torch.Tensor],
    n_steps: int | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The teacher's ``z_0`` of one batch, on the CPU."""
    window = batch["x"].to(device, dtype)
    y = batch["y"].to(device, dtype)
    mu = batch.get("mu")
    mu = None if mu is None else mu.to(device, dtype)
    z0 = teacher.invert(window, y, mu=mu, n_steps=n_steps)
    if not torch.isfinite(z0).all():
        raise ValueError("the teacher's backward flow gave NaN or Inf labels; check its training")
    return z0.cpu()
