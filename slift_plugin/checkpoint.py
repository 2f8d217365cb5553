"""Safe, atomic checkpoints.

Writes go to a temporary file and are renamed into place, so an interrupted write never
leaves a truncated checkpoint. Reads use ``torch.load(weights_only=True)``: no pickled
code is ever executed. Only tensors of a ``state_dict`` are stored; host frameworks that
put other objects there (neuraloperator's ``_metadata``) are rebuilt from code, not files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model."""


def tensor_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` restricted to tensors (drops host metadata entries)."""
    return {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (tensors, numbers, strings, lists, dicts)."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a slift checkpoint "
            f"(expected a torch.save'd dict readable with weights_only=True): {exc}"
        ) from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(
            f"checkpoint {path} does not hold a dict with a 'model' entry "
            f"(got {type(payload).__name__})"
        )
    return payload


def save_stepper(path: str | os.PathLike, stepper: nn.Module, **extra: Any) -> Path:
    """Save a stepper's weights and buffers (plus ``extra`` metadata) atomically."""
    return save_checkpoint(path, {"model": tensor_state(stepper), **extra})


def load_stepper(path: str | os.PathLike, stepper: nn.Module) -> dict:
    """Load weights saved by :func:`save_stepper` or :func:`slift_plugin.fit` into ``stepper``."""
    payload = load_checkpoint(path)
    try:
        missing, unexpected = stepper.load_state_dict(payload["model"], strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(stepper).__name__}: {exc}"
        ) from exc
    missing = [k for k in missing if not k.endswith("_metadata")]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(stepper).__name__}: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    return payload
