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

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_model_state",
    "load_stepper",
    "save_checkpoint",
    "save_stepper",
    "tensor_state",
]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model."""


def tensor_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` restricted to tensors (drops host metadata entries).

    Parameters
    ----------
    module : torch.nn.Module
        Any module.

    Returns
    -------
    dict of str to Tensor
        The tensor entries of its state dict, by key.
    """
    return {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` with ``torch.save``.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file; its parent folders are created.
    payload : dict
        Tensors, numbers, strings, lists and dicts only, so that it loads with
        ``weights_only=True``.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, or a plain state dict.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    map_location : str or torch.device
        Where to load the tensors.

    Returns
    -------
    dict
        The payload, a dict with a ``"model"`` state dict; a plain state dict of tensors
        comes back as ``{"model": state_dict}``.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable with ``weights_only=True``, or holds neither
        a state dict nor a dict with a ``"model"`` entry.
    """
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
    if isinstance(payload, dict) and "model" not in payload and payload:
        if all(isinstance(v, torch.Tensor) for v in payload.values()):
            return {"model": payload}
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(
            f"checkpoint {path} does not hold a state dict or a dict with a 'model' entry "
            f"(got {type(payload).__name__})"
        )
    return payload


def save_stepper(path: str | os.PathLike, stepper: nn.Module, **extra: Any) -> Path:
    """Save a stepper's weights and buffers (plus ``extra`` metadata) atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    stepper : torch.nn.Module
        The stepper (or any module); its tensor state goes under ``"model"``.
    **extra : Any
        Further entries of the payload (numbers, strings, lists, dicts, tensors).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    return save_checkpoint(path, {"model": tensor_state(stepper), **extra})


def load_stepper(
    path: str | os.PathLike, stepper: nn.Module, map_location: str | torch.device = "cpu"
) -> dict:
    """Load weights saved by :func:`save_stepper` or :func:`slift_plugin.fit` into ``stepper``.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    stepper : torch.nn.Module
        Receives the weights in place; every key and shape must match.
    map_location : str or torch.device
        Where to load the tensors before copying them into ``stepper``.

    Returns
    -------
    dict
        The whole checkpoint payload (``"model"`` and any metadata saved with it).

    Raises
    ------
    CheckpointError
        If the checkpoint is missing or unreadable, or does not match ``stepper``
        (which is then left untouched).
    """
    payload = load_checkpoint(path, map_location)
    load_model_state(stepper, payload["model"], path)
    return payload


def load_model_state(stepper: nn.Module, state: dict, path: str | os.PathLike) -> None:
    """``stepper.load_state_dict(state)`` after checking every key and shape up front.

    Parameters
    ----------
    stepper : torch.nn.Module
        Receives the state in place.
    state : dict
        A state dict; a ``_metadata`` entry is ignored.
    path : str or os.PathLike
        The checkpoint it came from, named in errors.

    Raises
    ------
    CheckpointError
        If keys are missing or unexpected or shapes differ; ``stepper`` is then left
        untouched.
    """
    expected = tensor_state(stepper)
    given = {k: v for k, v in state.items() if k != "_metadata"}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{k}: {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(stepper).__name__}: missing keys "
            f"{missing[:5]}, unexpected keys {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    stepper.load_state_dict(given, strict=False)
