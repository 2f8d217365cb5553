"""Blow-up detection: one reduction on the device per chunk, a host search only when it fires.

Apart from the engine that computes the flag and the drain that carries it, because the
torchsde adapter applies the same :class:`NonFiniteCheck` to the chunks it computes with
autograd: one rule, and one message, for NaN/Inf on both paths.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

#: What ``rollout(on_nonfinite=...)`` may do when a trajectory turns NaN or infinite.
NONFINITE_ACTIONS = ("raise", "warn", "ignore")


def finite_flag(traj: Tensor) -> Tensor:
    """A 0-d bool on ``traj``'s device: True when every value is finite; no host sync.

    One reduction without a temporary of ``traj``'s size: min and max propagate NaN, and
    an infinite value is the min or the max.
    """
    low, high = torch.aminmax(traj)
    return torch.isfinite(low) & torch.isfinite(high)


class NonFiniteCheck:
    """What happens to a chunk whose device flag says it holds NaN or Inf.

    Called with the chunk on the host ``(hi - lo, n_steps + 1, C, *grid)`` (time 0 is
    the initial state) before it reaches the sink: ``"raise"`` raises a
    FloatingPointError, so the chunk is never written (nor marked done in a store);
    ``"warn"`` warns once per rollout and lets the chunk through.
    """

    def __init__(self, action: str, times: list[float]) -> None:
        self.action, self.times, self.warned = action, times, False

    def __call__(self, lo: int, hi: int, values: Tensor) -> None:
        if self.action == "warn" and self.warned:
            return
        bad = ~torch.isfinite(values.reshape(hi - lo, values.shape[1], -1)).all(-1)
        step = int(bad.any(0).nonzero()[0, 0])  # (sample, time) -> the earliest time
        sample = lo + int(bad[:, step].nonzero()[0, 0])
        message = (
            f"rollout produced NaN/Inf, first at step {step} (time {self.times[step]:g}) of "
            f"sample {sample} (the earliest in samples [{lo}, {hi}), "
            f"{int(bad.any(1).sum())} of which hold NaN/Inf)"
        )
        if self.action == "raise":
            raise FloatingPointError(
                f"{message}. Samples [{lo}, {hi}) were not kept (nor marked done in a zarr "
                "store); on_nonfinite='warn' keeps them, 'ignore' skips this check"
            )
        self.warned = True
        warnings.warn(f"{message} (later chunks are not reported)", RuntimeWarning, stacklevel=2)
