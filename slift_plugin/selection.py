"""Selection on held-out transitions: which epoch's weights :func:`slift_plugin.fit` keeps.

The law a one-step stepper learns depends strongly on how long it trains (Stochastic
Lifting in particular moves from a smooth Gaussian-like law towards memorising the
training pairs), and the training loss does not show it. After every epoch, ``fit`` can
score fresh-noise samples against held-out next states with the fair energy score, a
strictly proper scoring rule of the transition law, keep the best epoch's weights and
stop early.

The score works for every stepper whose ``step`` maps a window and standard normal noise
to a next state, with no knowledge of the method: ``n_members`` samples per held-out
transition, the same seeded noise in every epoch (so that the curve compares models, not
noise draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .methods.energy_score import energy_score
from .protocols import IndexedBatches
from .stepper import Stepper

__all__ = ["HeldOut", "held_out_score"]


@dataclass(frozen=True)
class HeldOut:
    """Held-out transitions for :func:`slift_plugin.fit` to select an epoch on.

    Parameters
    ----------
    data : IndexedBatches
        Transitions the stepper does not train on, e.g. a
        :class:`slift_plugin.TransitionDataset` of held-out trajectories; batches carry
        ``x``, ``y`` and, with parameters, ``mu``.
    n_members : int
        Samples per transition in the fair energy score (>= 2).
    max_examples : int
        Score at most this many transitions (the first ones), to bound the cost.
    patience : int or None
        Stop when this many epochs pass without a better score; None trains all epochs.
    seed : int
        Seeds the sampling noise, the same in every epoch.

    Raises
    ------
    TypeError
        ``data`` has no ``get_batch``.
    ValueError
        ``data`` is empty, ``n_members < 2``, ``max_examples < 1`` or ``patience < 1``.
    """

    data: IndexedBatches
    n_members: int = 8
    max_examples: int = 1024
    patience: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.data, IndexedBatches):
            raise TypeError(
                f"held-out data {type(self.data).__name__} is not a "
                "slift_plugin.protocols.IndexedBatches (get_batch(indices)); use a "
                "slift_plugin.TransitionDataset"
            )
        if len(self.data) == 0:
            raise ValueError("the held-out data is empty")
        if self.n_members < 2 or self.max_examples < 1:
            raise ValueError(
                f"n_members must be >= 2 and max_examples >= 1, got {self.n_members}, "
                f"{self.max_examples}"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")

    def facts(self) -> dict[str, object]:
        """What shapes the selection, for the checkpoint's resume check.

        Returns
        -------
        dict of str to object
            Sizes and settings; a resume with other values is refused.
        """
        return {
            "n_held_out": len(self.data),
            "n_members": self.n_members,
            "max_examples": self.max_examples,
            "patience": self.patience,
            "held_out_seed": self.seed,
        }


def held_out_score(stepper: Stepper, held_out: HeldOut, device: torch.device) -> float:
    """Mean fair energy score of fresh-noise samples against the held-out next states.

    Norms run over the whole state of one example, in the data's own units. The stepper
    is evaluated in eval mode without gradients and handed back in its own mode.

    Parameters
    ----------
    stepper : Stepper
        Any stepper; one ``step`` call on ``n_members`` copies of every window.
    held_out : HeldOut
        The transitions and settings.
    device : torch.device
        Where the stepper lives.

    Returns
    -------
    float
        Lower is better; its expectation is minimised by the true transition law.

    Raises
    ------
    ValueError
        A batch does not fit the stepper.
    """
    n = min(len(held_out.data), held_out.max_examples)
    batch = held_out.data.get_batch(torch.arange(n))
    _, dtype = stepper.param_device_dtype()
    window, y = batch["x"].to(device, dtype), batch["y"].to(device, dtype)
    mu = batch.get("mu")
    m = held_out.n_members
    members_mu = None if mu is None else mu.to(device, dtype).repeat_interleave(m, dim=0)
    noise = _noise(stepper, window, m, held_out.seed)
    was_training = stepper.training
    stepper.eval()
    try:
        with torch.no_grad():
            samples = stepper.step(window.repeat_interleave(m, dim=0), noise, mu=members_mu)
    finally:
        stepper.train(was_training)
    ensemble = samples.reshape(n, m, -1)  # rows b*m .. b*m + m - 1 are example b's members
    return float(energy_score(y.reshape(n, -1), ensemble).mean())


def _noise(stepper: Stepper, window: Tensor, n_members: int, seed: int) -> Tensor | None:
    """Standard normals ``(B * n_members, *noise_shape)`` from ``seed`` (CPU generator)."""
    shape = stepper.noise_shape(tuple(window.shape[2:]))
    if shape is None:
        return None
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((window.shape[0] * n_members, *shape), generator=g)
    return noise.to(window.device, window.dtype)
