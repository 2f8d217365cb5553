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
"""

from __future__ import annotations

import torch

from ..labels import StoredLabels
from ..protocols import IndexedBatches
from .flow_matching import FlowMatching

__all__ = ["teacher_labels"]


def teacher_labels(
    teacher: FlowMatching,
    dataset: IndexedBatches,
    *,
    n_steps: int | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
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
        The teacher is not normalised (untrained), ``batch_size < 1``, or the labels come
        out non-finite (a diverged teacher).
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
    return StoredLabels(torch.cat(parts))


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
