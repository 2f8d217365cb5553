"""Safe, atomic checkpoints.

Writes go to a temporary file and are renamed into place, so an interrupted write never
leaves a truncated checkpoint (and the temporary file of a killed writer is removed by the
next write of the same file). Reads use ``torch.load(weights_only=True)``: no pickled
code is ever executed. Only tensors of a ``state_dict`` are stored; host frameworks that
put other objects there (neuraloperator's ``_metadata``) are rebuilt from code, not files.
A state is checked in full (tensors, keys, shapes, finite values, positive spreads)
before anything is copied into a model.

:func:`save_stepper` (and :func:`slift_plugin.fit`) also record the stepper's constructor
configuration as a JSON text under :data:`CONFIG_KEY` (:mod:`slift_plugin.config`), so
that ``load_stepper(path)`` rebuilds the stepper without the code that built it.

:func:`lock_checkpoint_dir` gives one training run a checkpoint folder to itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, NotDescribableError, build_stepper, stepper_record
from .data import atomic_write
from .stepper import Stepper

__all__ = [
    "CONFIG_KEY",
    "LOCK_NAME",
    "SIDECAR_SUFFIX",
    "CheckpointError",
    "check_model_state",
    "load_checkpoint",
    "lock_checkpoint_dir",
    "load_model_state",
    "load_stepper",
    "save_checkpoint",
    "save_stepper",
    "sidecar_config_path",
    "stepper_record",
    "tensor_state",
]


LOCK_NAME = ".fit.lock"
# Not "config": fit() stores its own settings there, and callers pass their own (the demo).
CONFIG_KEY = "stepper_config"


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
    """Save a stepper's weights and buffers, its configuration and ``extra`` atomically.

    The configuration is :func:`slift_plugin.config.stepper_record`'s JSON text, under
    :data:`CONFIG_KEY`: the constructor arguments of the stepper and its backbone, so
    that ``load_stepper(path)`` can rebuild it; for a stepper that cannot be described
    (a user's own class, an SDE wrapper) it records why, and only
    ``load_stepper(path, stepper)`` loads the file.

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

    Raises
    ------
    ValueError
        If ``extra`` holds ``"model"`` or :data:`CONFIG_KEY`.
    """
    taken = sorted({"model", CONFIG_KEY} & extra.keys())
    if taken:
        raise ValueError(f"save_stepper stores the stepper itself under {taken}; rename them")
    payload = {"model": tensor_state(stepper), CONFIG_KEY: stepper_record(stepper), **extra}
    return save_checkpoint(path, payload)


def load_stepper(
    path: str | os.PathLike,
    stepper: Stepper | None = None,
    map_location: str | torch.device = "cpu",
) -> Stepper:
    """Load a stepper saved by :func:`save_stepper` or :func:`slift_plugin.fit`.

    Without ``stepper`` it is rebuilt from the configuration the checkpoint records:
    the configuration is checked (known classes only, plain values of the right types
    within sane sizes), the stepper it describes is built on the ``meta`` device (no
    memory) and must fit the stored weights key for key, shape for shape and dtype for
    dtype, and only then is it allocated and loaded. With ``stepper`` the weights are
    loaded into it in place.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    stepper : Stepper or None
        Receives the weights in place (every key and shape must match); None rebuilds
        the stepper from the checkpoint.
    map_location : str or torch.device
        Where to load the tensors (and build a rebuilt stepper).

    Returns
    -------
    Stepper
        ``stepper``, or the rebuilt stepper (in training mode, like any new module). A
        stepper trained with a custom criterion comes back with the default one and a
        warning (see :mod:`slift_plugin.config`); the file's other entries are read with
        :func:`load_checkpoint`.

    Raises
    ------
    CheckpointError
        If the checkpoint is missing or unreadable, or its state does not pass
        :func:`check_model_state` (non-tensor values, other keys, shapes or dtypes,
        NaN/Inf, a non-positive spread), and ``stepper`` is then left untouched; without
        ``stepper``, also if the checkpoint records no configuration (an older file), the
        stepper could not be described when it was saved (naming why), or the
        configuration is malformed, names an unknown class or does not fit the weights:
        then pass the stepper, built as it was trained.
    """
    payload = load_checkpoint(path, map_location)
    if stepper is None:
        return _rebuilt(payload, path, map_location)
    load_model_state(stepper, payload["model"], path)
    return stepper


SIDECAR_SUFFIX = "_stepper_config.json"


def sidecar_config_path(state_path: str | os.PathLike) -> Path | None:
    """Where a host framework's checkpoint keeps its stepper configuration, if it can.

    neuraloperator's layout (``{name}_state_dict.pt``, read by its ``Trainer`` with
    ``load_state_dict``) cannot hold anything but tensors, so :class:`SLFNO` writes the
    configuration beside it, as ``{name}_stepper_config.json``.

    Parameters
    ----------
    state_path : str or os.PathLike
        A checkpoint file.

    Returns
    -------
    pathlib.Path or None
        ``{name}_stepper_config.json`` for a file ``{name}_state_dict.pt``, else None.
    """
    path = Path(state_path)
    if not path.name.endswith("_state_dict.pt"):
        return None
    return path.with_name(path.name.removesuffix("_state_dict.pt") + SIDECAR_SUFFIX)


def _recorded_config(payload: dict, path: str | os.PathLike) -> str | None:
    """The configuration in the payload, else in a sidecar file beside ``path``."""
    config = payload.get(CONFIG_KEY)
    sidecar = sidecar_config_path(path)
    if config is None and sidecar is not None and sidecar.is_file():
        try:
            config = sidecar.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"cannot read the stepper configuration {sidecar}: {exc}"
            ) from exc
    return config


def _rebuilt(payload: dict, path: str | os.PathLike, map_location: object) -> Stepper:
    """The stepper ``payload`` describes, checked on the meta device, then loaded."""
    config = _recorded_config(payload, path)
    pass_it = "build the stepper as it was trained and pass it: load_stepper(path, stepper)"
    if config is None:
        sidecar = sidecar_config_path(path)
        raise CheckpointError(
            f"checkpoint {path} does not record its stepper's configuration (written by "
            "torch.save of a state dict, or by a slift_plugin before 2026-12-02"
            + (f", and there is no {sidecar.name} beside it" if sidecar else "")
            + f"); {pass_it}"
        )
    try:
        probe = build_stepper(config, device="meta")
    except NotDescribableError as exc:
        raise CheckpointError(
            f"checkpoint {path} holds the weights of a stepper that could not be recorded "
            f"as data: {exc}. To load it, {pass_it}"
        ) from exc
    except ConfigError as exc:
        raise CheckpointError(
            f"checkpoint {path} records a stepper configuration that cannot be built: {exc}. "
            f"To load its weights anyway, {pass_it}"
        ) from exc
    _check_fits_description(probe, payload["model"], path)
    device = map_location if isinstance(map_location, str | torch.device) else None
    stepper = build_stepper(config, device=device)
    load_model_state(stepper, payload["model"], path)
    return stepper


def _check_fits_description(probe: nn.Module, state: object, path: str | os.PathLike) -> None:
    """:func:`check_model_state`, and the same dtypes: the description records them."""
    way_out = "to load the weights anyway, pass the stepper: load_stepper(path, stepper)"
    try:
        check_model_state(probe, state, path)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc} (the stepper was built from the configuration the checkpoint records; "
            f"the configuration and the weights disagree); {way_out}"
        ) from exc
    expected = tensor_state(probe)
    other = [
        f"{k}: stored {v.dtype}, recorded {expected[k].dtype}"
        for k, v in state.items()
        if k in expected and v.dtype != expected[k].dtype
    ]
    if other:
        raise CheckpointError(
            f"checkpoint {path} stores tensors in other dtypes than its configuration records "
            f"({other[:5]}); {way_out}"
        )


def _statistic_problems(stepper: nn.Module, given: Mapping[str, torch.Tensor]) -> list[str]:
    """Normalisation statistics of ``given`` that the stepper could not use.

    A stepper that standardises (``normalization_shapes()``) divides by every spread
    (names ending in ``std`` or ``scale``): a zero, negative or non-finite one would pass
    the shape check and make every later step non-finite.
    """
    shapes = getattr(stepper, "normalization_shapes", None)
    names = shapes() if callable(shapes) else {}
    problems = []
    for name in names:
        value = given.get(name)
        if value is None or not value.is_floating_point():
            continue
        if name.endswith(("std", "scale")) and not bool((value > 0).all()):
            problems.append(f"{name} must be positive, got {value.tolist()[:8]}")
    return problems


def check_model_state(stepper: nn.Module, state: object, path: str | os.PathLike) -> None:
    """Raise unless ``state`` loads into ``stepper`` exactly; copy nothing.

    Every value must be a tensor of the key, shape and kind (real, complex, integer) of
    ``stepper``'s, with finite values, and a standardising stepper's spreads (buffers
    named ``*std``/``*scale``) must be positive.

    Parameters
    ----------
    stepper : torch.nn.Module
        The module the state is meant for (its parameters may live on the ``meta``
        device: only names, shapes and dtypes are read).
    state : object
        The candidate state dict; a ``_metadata`` entry is ignored.
    path : str or os.PathLike
        The checkpoint it came from, named in errors.

    Raises
    ------
    CheckpointError
        Naming the keys that are missing, unexpected, not tensors, of another shape or
        kind, or hold NaN/Inf, and the spreads that are not positive.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__} where a state dict (a dict "
            "of tensors by parameter name) was expected"
        )
    expected = tensor_state(stepper)
    given = {k: v for k, v in state.items() if k != "_metadata"}
    not_tensors = [f"{k}: {type(v).__name__}" for k, v in given.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise CheckpointError(
            f"checkpoint {path} holds non-tensor values in its state dict: {not_tensors[:5]}"
        )
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(str(k) for k in set(given) - set(expected))
    wrong = [
        f"{k}: {tuple(given[k].shape)} {given[k].dtype} vs {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in given and (tuple(given[k].shape) != tuple(v.shape) or not _same_kind(given[k], v))
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(stepper).__name__}: missing keys "
            f"{missing[:5]}, unexpected keys {unexpected[:5]}, shape or dtype mismatches "
            f"{wrong[:5]}"
        )
    not_finite = sorted(
        k
        for k, v in given.items()
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    )
    problems = _statistic_problems(stepper, given)
    if not_finite or problems:
        raise CheckpointError(
            f"checkpoint {path} holds values {type(stepper).__name__} cannot use: NaN/Inf in "
            f"{not_finite[:5]}; {problems[:5] or 'spreads fine'}"
        )


def _same_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether copying ``a`` into ``b`` keeps its meaning (real, complex, integral alike)."""
    return a.is_complex() == b.is_complex() and a.is_floating_point() == b.is_floating_point()


def load_model_state(stepper: nn.Module, state: dict, path: str | os.PathLike) -> None:
    """``stepper.load_state_dict(state)`` after :func:`check_model_state` passes.

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
        If :func:`check_model_state` finds a problem; ``stepper`` is then left untouched.
    """
    check_model_state(stepper, state, path)
    stepper.load_state_dict({k: v for k, v in state.items() if k != "_metadata"}, strict=False)


def _lock_record(lock: Path) -> dict | None:
    """The ``{"pid", "host"}`` a lock file holds; None when it vanished or is unreadable."""
    try:
        record = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _usable_folder(directory: Path) -> None:
    """Create ``directory`` or raise: a file in its place, or no way to create it."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"checkpoint_dir {directory} exists and is not a folder; pass a folder path"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create checkpoint_dir {directory}: {exc}") from exc


def _open_locked(lock: Path) -> int | None:
    """An fd of ``lock`` holding its exclusive ``flock``; None when another process holds it.

    The kernel drops a ``flock`` when its holder dies, however it dies, so a killed run
    never leaves the folder locked (an old record in the file, or an empty file, means
    nothing). The lock file may be unlinked by a finishing holder between our ``open`` and
    our ``flock``: then the locked inode is no longer the path's, and we try again.
    """
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint_dir {lock.parent} is not writable (opening {lock.name} failed: "
                f"{exc}); pass a folder this process may write to"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def lock_checkpoint_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold ``directory`` for one training run: no second run may write checkpoints there.

    The folder is created if missing. The lock is an exclusive ``flock`` on the file
    :data:`LOCK_NAME` inside it, which also records this process's pid and host for the
    message another run gets. The kernel releases a ``flock`` when its holder exits or is
    killed, so a lock is never left behind, on any host; on a shared filesystem it holds
    across hosts where the filesystem supports ``flock`` (NFSv4, Lustre with ``flock``
    mounted). The file is removed when the block ends, however it ends. POSIX only.

    Parameters
    ----------
    directory : str or os.PathLike
        The checkpoint folder.

    Yields
    ------
    pathlib.Path
        ``directory``, now held by this process.

    Raises
    ------
    CheckpointError
        If ``directory`` is a file, cannot be created or written, or is held by another
        live run.
    """
    directory = Path(directory)
    _usable_folder(directory)
    lock = directory / LOCK_NAME
    fd = _open_locked(lock)
    if fd is None:
        holder = _lock_record(lock) or {}
        raise CheckpointError(
            f"checkpoint_dir {directory} is in use by another fit() (process "
            f"{holder.get('pid')} on host {holder.get('host')}, lock file {lock}); wait for "
            "it to finish or use another checkpoint_dir"
        )
    try:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield directory
    finally:
        # Unlink while still holding the lock: a waiting opener then sees another inode
        # (see _open_locked) instead of locking a file that is no longer the lock.
        lock.unlink(missing_ok=True)
        os.close(fd)
