"""Fixed Gaussian labels, generated from ``(seed, transition index)``.

Stochastic Lifting gives every training transition ``j`` one label ``xi_j ~ N(0, I)`` that
never changes during training. Storing ``N x d`` labels costs memory proportional to the
data set; instead each label is a pure function of ``(seed, j)``: a counter-based hash
(SplitMix64) turns every ``(seed, j, component)`` into two uniforms, and Box-Muller turns
them into one standard normal. Any batch of indices, in any order, on any worker, gives
the same labels, and nothing is stored.

Labels can also be keyed by the content of a transition instead of its index
(:class:`ContentLabels`): a hash of the values of ``(x, y)`` picks the label, so a training
loop that hands over plain ``{"x", "y"}`` batches (neuraloperator's ``Trainer`` on its own
datasets) still sees one fixed label per transition, with no index and no dataset wrapper.

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

__all__ = ["ContentLabels", "IndexedGaussianLabels", "StoredLabels", "hash_seed"]

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


# Two independent 31-bit hashes modulo primes below 2**31, reduced after every product, so
# that no int64 arithmetic overflows (signed overflow is not defined on every device).
_PRIMES = (2_147_483_647, 2_147_483_629)


def _integer_view(values: Tensor) -> Tensor:
    """The bit patterns of ``values`` ``(B, ...)`` as int64 ``(B, n)``, one per 32/16 bits."""
    flat = values.detach().reshape(values.shape[0], -1).contiguous()
    if flat.is_floating_point() or flat.is_complex():
        flat = flat + 0  # -0.0 + 0 = +0.0: the two zeros are one value, one label
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(values.shape[0], -1).contiguous()
    if flat.dtype == torch.bool:
        return flat.to(torch.int64)
    size = flat.element_size()
    if size >= 4:
        return flat.view(torch.int32).to(torch.int64)
    if size == 2:
        return flat.view(torch.int16).to(torch.int64)
    return flat.to(torch.int64)


class ContentLabels:
    """Standard normal labels keyed by the values of a transition, not by its index.

    ``labels(x, y)`` hashes the exact bit patterns of every example's ``x`` and ``y``
    (two independent 31-bit hashes on the tensors' device, then SplitMix64 on the host)
    and returns :class:`IndexedGaussianLabels` of that key. The same transition, in any
    batch, at any position, in any epoch, gets the same label; two different transitions
    get independent labels (a collision needs both hashes to agree, about one pair in
    ``2**62``). The hash depends on the exact values and their dtype (``-0.0`` counts
    as ``0.0``): a pipeline that changes the dtype or rounds differently draws other
    labels. Cost per batch: the hash is a few integer operations per value on the
    tensors' device (0.22 s for two ``(32, 1, 256, 256)`` float32 tensors on one CPU
    core) and one ``(B,)`` copy to the host; the normals are drawn on the host, like
    :class:`IndexedGaussianLabels` (1 ms for ``(64, 32)``; 0.8 s for a
    ``(32, 4, 256, 256)`` noise field, where index-keyed fixed labels cost the same).

    Parameters
    ----------
    shape : sequence of int
        Per-label shape, e.g. ``(32,)`` or ``(4, 128)``.
    seed : int
        Labels are a pure function of ``(seed, salt, values)``.

    Attributes
    ----------
    shape : tuple of int
        Per-label shape.
    seed : int
        The seed.

    Raises
    ------
    ValueError
        If ``shape`` is empty or has a size below one.
    """

    def __init__(self, shape: Sequence[int], seed: int = 0) -> None:
        self._gaussians = IndexedGaussianLabels(shape, hash_seed(seed, 0xC0_4E_7E))
        self.shape = self._gaussians.shape
        self.seed = int(seed)
        self._weights: dict[tuple[int, int, str], Tensor] = {}

    def __repr__(self) -> str:
        return f"ContentLabels(shape={self.shape}, seed={self.seed})"

    def _position_weights(self, n: int, stream: int, device: torch.device) -> Tensor:
        """Pseudo-random weights in ``[1, p)`` for ``n`` positions of tensor ``stream``."""
        key = (n, stream, str(device))
        if key not in self._weights:
            counter = np.arange(n, dtype=np.uint64)[:, None] + np.uint64(n) * np.arange(
                2 * stream, 2 * stream + 2, dtype=np.uint64
            )
            with np.errstate(over="ignore"):
                z = _splitmix64(counter * _GOLDEN + np.uint64(self._gaussians.seed))
            primes = np.array(_PRIMES, dtype=np.uint64)
            w = (z % (primes - np.uint64(1)) + np.uint64(1)).astype(np.int64)
            self._weights[key] = torch.from_numpy(w).to(device)  # (n, 2)
        return self._weights[key]

    def keys(self, *tensors: Tensor, salt: int = 0) -> np.ndarray:
        """One 63-bit key per example: a hash of row ``b`` of every tensor and ``salt``.

        Parameters
        ----------
        *tensors : Tensor
            Tensors ``(B, ...)`` with the same leading size, any dtype.
        salt : int
            Mixed into every key (e.g. to give evaluation batches other labels).

        Returns
        -------
        numpy.ndarray
            ``(B,)`` int64 keys in ``[0, 2**63)``.

        Raises
        ------
        ValueError
            If no tensor is given or their leading sizes differ.
        """
        if not tensors or len({t.shape[0] for t in tensors}) != 1 or tensors[0].ndim == 0:
            raise ValueError(
                "ContentLabels needs tensors (B, ...) of one batch size B, got shapes "
                f"{[tuple(t.shape) for t in tensors]}"
            )
        primes = torch.tensor(_PRIMES, dtype=torch.int64, device=tensors[0].device)
        acc = torch.zeros(tensors[0].shape[0], 2, dtype=torch.int64, device=primes.device)
        for stream, values in enumerate(tensors):
            # Bit patterns shifted into [0, 2**32): times a weight below 2**31, < 2**63.
            bits = _integer_view(values.to(primes.device)) + 2**31
            w = self._position_weights(bits.shape[1], stream, primes.device)
            terms = torch.remainder(bits[:, :, None] * w[None], primes)  # (B, n, 2)
            acc = torch.remainder(acc * 1_000_003 + terms.sum(dim=1), primes)
        host = acc.cpu().numpy().astype(np.uint64)
        with np.errstate(over="ignore"):
            mixed = _splitmix64(
                (host[:, 0] << np.uint64(31)) ^ host[:, 1] ^ np.uint64(hash_seed(salt, 0x5A17))
            )
        return (mixed >> np.uint64(1)).astype(np.int64)

    def __call__(self, *tensors: Tensor, salt: int = 0) -> Tensor:
        """The labels of the examples whose values are ``tensors``.

        Parameters
        ----------
        *tensors : Tensor
            Tensors ``(B, ...)``, e.g. a transition's ``x`` and ``y``.
        salt : int
            Gives another, independent set of labels for the same values.

        Returns
        -------
        Tensor
            float32 standard normals ``(B, *shape)`` on the device of ``tensors[0]``.

        Raises
        ------
        ValueError
            As :meth:`keys`.
        """
        labels = self._gaussians(self.keys(*tensors, salt=salt))
        return labels.to(tensors[0].device, non_blocking=True)
