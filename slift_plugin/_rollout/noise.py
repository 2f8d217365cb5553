"""Rollout noise: one random stream per block of samples, drawn in place.

Randomness derives from ``(seed, sample block)`` and nothing else, which is what keeps an
ensemble the same for any ``chunk_size`` and any number of processes. The block size and
the seed range live here with the noise they define, and both the engine and the torchsde
adapter (a differentiable ``sdeint`` replays rollout's chunks with autograd) draw through
:class:`BlockNoise`, so the two paths cannot drift apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..labels import hash_seed

SEED_BLOCK = 256
#: Largest seed: seeds are ints in ``[0, SEED_MAX]``, so that they fit an int64 attribute
#: (netCDF, zarr) and no two seeds alias modulo ``2**64`` (``-1`` and ``2**64 - 1`` did).
SEED_MAX = 2**63 - 1


class BlockNoise:
    """The noise of samples ``[lo, hi)`` for one step after another, drawn in place.

    Every seed block draws all its ``SEED_BLOCK`` rows from its own generator each step,
    also when the chunk covers only part of the block: a draw's values depend on its
    size, so this is what keeps the noise of a sample independent of the chunking.
    Whole blocks are drawn straight into ``buffer`` (``(hi - lo, *noise_shape)``); a
    partial block goes through ``scratch`` (``(SEED_BLOCK, *noise_shape)``) and one copy.
    """

    def __init__(self, seed: int, lo: int, hi: int, buffer: Tensor, scratch: Tensor) -> None:
        self.buffer, self._scratch, self._plan = buffer, scratch, []
        for block in range(lo // SEED_BLOCK, (hi - 1) // SEED_BLOCK + 1):
            b0 = block * SEED_BLOCK
            start, stop = max(lo, b0) - b0, min(hi, b0 + SEED_BLOCK) - b0
            g = torch.Generator(device=buffer.device).manual_seed(hash_seed(seed, block))
            self._plan.append((g, start, stop, buffer[b0 + start - lo : b0 + stop - lo]))

    def draw(self) -> Tensor:
        """Fill and return the buffer with the next step's noise, ``(hi - lo, *noise_shape)``."""
        for g, start, stop, dst in self._plan:
            if stop - start == SEED_BLOCK:
                torch.randn(dst.shape, generator=g, out=dst)
            else:
                torch.randn(self._scratch.shape, generator=g, out=self._scratch)
                dst.copy_(self._scratch[start:stop])
        return self.buffer
