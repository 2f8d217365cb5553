"""Fixed Gaussian labels, generated from ``(seed, transition index)``.

Stochastic Lifting gives every training transition ``j`` one label ``xi_j ~ N(0, I)`` that
never changes during training. Storing ``N x d`` labels costs memory proportional to the
data set; instead each label is a pure function of ``(seed, j)``: a counter-based hash
(SplitMix64) turns every ``(seed, j, component)`` into two uniforms, and Box-Muller turns
them into one standard normal. Any batch of indices, in any order, on any worker, gives
the same labels, and nothing is stored.

Coupled labels (a transport of the data, e.g. a flow-matching teacher run backwards from
each transition's next state) depend on the data, so they are computed once and kept in a
table: :class:`StoredLabels`, the same interface ``labels(indices) -> (n, *shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["IndexedGaussianLabels", "StoredLabels", "hash_seed"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (numpy wraps modulo 2**64 by definition)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash_seed(*keys: int) -> int:
    """Mix integers into one 63-bit seed (for ``torch.Generator.manual_seed``).

    Parameters
    ----------
    *keys : int
        The integers to mix, in order (taken modulo ``2**64``).

    Returns
    -------
    int
        A seed in ``[0, 2**63)``, a pure function of ``keys``.
    """
    z = np.uint64(0)
    with np.errstate(over="ignore"):
        for k in keys:
            z = _splitmix64(np.array([z + np.uint64(k % 2**64) * _GOLDEN + _GOLDEN]))[0]
    return int(z >> np.uint64(1))


class IndexedGaussianLabels:
    """Standard normal labels of shape ``shape`` indexed by an integer.

    Calling the object with indices ``(n,)`` returns a float32 tensor ``(n, *shape)``.

    Parameters
    ----------
    shape : sequence of int
        Per-label shape, e.g. ``(16,)`` for a vector label or ``(4, 128)`` for a white-noise
        label field on a 128-point grid.
    seed : int
        Labels are a pure function of ``(seed, index)``.

    Attributes
    ----------
    shape : tuple of int
        Per-label shape.
    seed : int
        The seed.
    size : int
        Numbers per label, ``prod(shape)``.

    Raises
    ------
    ValueError
        If ``shape`` is empty or has a size below one.
    """

    def __init__(self, shape: Sequence[int], seed: int = 0) -> None:
        shape = tuple(int(s) for s in shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"label shape must be non-empty with positive sizes, got {shape}")
        self.shape = shape
        self.seed = int(seed)
        self.size = math.prod(shape)
        self._key = np.uint64(hash_seed(self.seed, 0x5EED))

    def __repr__(self) -> str:
        return f"IndexedGaussianLabels(shape={self.shape}, seed={self.seed})"

    def __call__(self, index: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """The labels of transitions ``index``.

        Parameters
        ----------
        index : Tensor or numpy.ndarray or sequence of int
            Non-negative indices ``(n,)``, in any order, repeats allowed.

        Returns
        -------
        Tensor
            float32 standard normals ``(n, *shape)`` on the CPU.

        Raises
        ------
        ValueError
            If ``index`` is not 1-D or holds a negative index.
        """
        idx = np.asarray(index.cpu() if isinstance(index, Tensor) else index, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"label indices must be 1-D, got shape {idx.shape}")
        if idx.size and idx.min() < 0:
            raise ValueError(f"label indices must be >= 0, got min {idx.min()}")
        counter = idx.astype(np.uint64)[:, None] * np.uint64(self.size) + np.arange(
            self.size, dtype=np.uint64
        )
        with np.errstate(over="ignore"):
            base = self._key + counter * np.uint64(2) * _GOLDEN
            z1 = _splitmix64(base)
            z2 = _splitmix64(base + _GOLDEN)
        # 53-bit uniforms; u1 in (0, 1] keeps the log finite.
        u1 = ((z1 >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
        u2 = (z2 >> np.uint64(11)).astype(np.float64) * 2.0**-53
        normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        return torch.from_numpy(normal.astype(np.float32)).reshape(len(idx), *self.shape)


class StoredLabels:
    """A table of labels, one per transition: ``labels(indices) -> values[indices]``.

    The label source for labels that are a function of the data rather than of the index
    alone, such as those of :func:`slift_plugin.methods.coupling.teacher_labels`. It has
    the interface of :class:`IndexedGaussianLabels`, so it plugs into
    :class:`slift_plugin.TransitionDataset` the same way.

    Parameters
    ----------
    values : Tensor
        ``(N, *shape)``, finite; label ``j`` belongs to transition ``j``. Kept as a
        float32 CPU copy.

    Raises
    ------
    ValueError
        ``values`` is empty, has no per-label axis, or holds NaN or Inf.
    """

    def __init__(self, values: Tensor) -> None:
        values = torch.as_tensor(values)
        if values.ndim < 2 or values.shape[0] == 0 or 0 in values.shape[1:]:
            raise ValueError(
                f"labels must be (N, *shape) with N >= 1 and a non-empty shape, got "
                f"{tuple(values.shape)}"
            )
        if not torch.isfinite(values).all():
            raise ValueError("labels hold NaN or Inf")
        self.values = values.detach().to("cpu", torch.float32).clone()
        self.shape = tuple(self.values.shape[1:])

    def __repr__(self) -> str:
        return f"StoredLabels(n={len(self)}, shape={self.shape})"

    def __len__(self) -> int:
        return self.values.shape[0]

    def __call__(self, index: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """The labels of transitions ``index``.

        Parameters
        ----------
        index : Tensor or numpy.ndarray or sequence of int
            ``(n,)`` transition indices in ``[0, N)``.

        Returns
        -------
        Tensor
            ``(n, *shape)`` float32.

        Raises
        ------
        ValueError
            ``index`` is not 1-D or out of range.
        """
        idx = torch.as_tensor(index).cpu()
        if idx.ndim != 1:
            raise ValueError(f"label indices must be 1-D, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise ValueError(
                f"label indices must lie in [0, {len(self)}), got [{int(idx.min())}, "
                f"{int(idx.max())}]"
            )
        return self.values[idx.long()]
