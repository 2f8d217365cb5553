"""Constructor arguments of neuraloperator models: read from a built one, checked when recorded.

Shared by :mod:`.neuralop` (:func:`~.neuralop.lift` reads a user's operator,
:meth:`~.neuralop.SLFNO.from_checkpoint` checks a checkpoint's metadata) and
:mod:`.neuralop_config` (describes a stepper's operator, checks a description). It sits
below both and imports neither, so that neither reaches into the other's private helpers
and the two never import each other in a cycle; :func:`checkpoint_arguments` is handed the
SLFNO class instead of importing it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from neuralop.layers.embeddings import GridEmbeddingND
from neuralop.layers.fno_block import FNOBlocks
from neuralop.layers.spectral_convolution import SpectralConv
from neuralop.models import FNO, TFNO, UNO
from neuralop.models.base_model import BaseModel

from ..checkpoint import CheckpointError
from ..config import NotDescribableError

INJECTIONS = ("channels", "noise_field", "embedding")
OPERATORS = {"fno": FNO, "tfno": TFNO, "uno": UNO}
_HOST_KEYS = ("_version", "args", "_name")
# Generous bounds on the sizes a checkpoint's metadata may ask for: beyond them it is
# broken or hostile, and building the model would exhaust memory or time before the
# weights could say so.
SIZE_LIMITS = {
    "in_channels": (1, 4096),
    "hidden_channels": (1, 65536),
    "n_layers": (1, 256),
    "label_dim": (0, 65536),
    "n_params": (0, 4096),
    "history": (1, 1024),
    "embedding_hidden": (1, 65536),
}
MAX_GRID_DIMS = 6
MAX_MODES = 65536
# The arguments a UNO keeps as attributes under their own names.
_UNO_KEPT = (
    "hidden_channels",
    "lifting_channels",
    "projection_channels",
    "n_layers",
    "uno_out_channels",
    "uno_n_modes",
    "uno_scalings",
    "horizontal_skips_map",
    "rank",
    "factorization",
    "fixed_rank_modes",
    "decomposition_kwargs",
    "implementation",
    "separable",
    "preactivation",
)


# -- a built operator's arguments ------------------------------------------------------------
def constructor_arguments(model: BaseModel) -> dict[str, Any]:
    """The user's constructor arguments (positional ones bound to names), minus defaults."""
    if type(model) is UNO:  # neuraloperator 2.0's UNO is no BaseModel: no _init_kwargs
        channels = {"in_channels": model.in_channels, "out_channels": model.out_channels}
        return channels | _uno_arguments(model)
    init = FNO.__init__ if isinstance(model, FNO) else type(model).__init__
    signature = inspect.signature(init)
    stored = {k: v for k, v in model._init_kwargs.items() if k not in _HOST_KEYS}
    bound = signature.bind_partial(None, *model._init_kwargs.get("args", ()), **stored)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))  # self
    # BaseModel records every default too; keep only what differs, so that the
    # metadata stays plain data (no functions or classes) and loads with weights_only.
    return {
        k: v
        for k, v in arguments.items()
        if signature.parameters[k].default is inspect.Parameter.empty
        or not _same(v, signature.parameters[k].default)
    }


def _uno_arguments(uno: UNO) -> dict[str, Any]:
    """A UNO's constructor arguments, read back from its attributes.

    neuraloperator 2.0's UNO is no ``BaseModel`` and keeps no record of its arguments.
    Those it does not keep (``channel_mlp_expansion``, ``channel_mlp_dropout``, ``norm``)
    are taken at their defaults: a UNO built otherwise differs from the one the
    description builds, which :func:`slift_plugin.config.describe_stepper` then detects.
    """
    code = {"non_linearity": F.gelu, "operator_block": FNOBlocks, "integral_operator": SpectralConv}
    changed = sorted(k for k, v in code.items() if getattr(uno, k) is not v)
    if changed:
        raise NotDescribableError(f"its UNO was built with its own {changed} (code, not data)")
    embedding = uno.positional_embedding
    if embedding is not None and type(embedding) is not GridEmbeddingND:
        raise NotDescribableError(f"its UNO has a {type(embedding).__name__} positional embedding")
    padding = uno.domain_padding
    args = {k: getattr(uno, k) for k in _UNO_KEPT}
    args["positional_embedding"] = None if embedding is None else "grid"
    args["domain_padding"] = None if padding is None else padding.domain_padding
    n_layers = uno.n_layers
    default_skips = {n_layers - i - 1: i for i in range(n_layers // 2)}
    if args["horizontal_skips_map"] == default_skips:
        args["horizontal_skips_map"] = None
    defaults = inspect.signature(UNO.__init__).parameters
    return {
        k: v
        for k, v in args.items()
        if defaults[k].default is inspect.Parameter.empty or not _same(v, defaults[k].default)
    }


def _same(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


# -- a checkpoint's recorded SLFNO arguments -------------------------------------------------
def is_plain_data(value: object, depth: int = 0) -> bool:
    """Numbers, strings, None and (shallowly nested) lists, tuples and dicts of those."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if depth > 4:
        return False
    if isinstance(value, list | tuple):
        return all(is_plain_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str | int) and is_plain_data(v, depth + 1) for k, v in value.items()
        )
    return False


def _checked_size(key: str, value: object, path: Path) -> None:
    """Raise unless ``value`` is an int (not a bool) within ``SIZE_LIMITS[key]``."""
    low, high = SIZE_LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(
            f"SLFNO metadata {path}: {key} must be an integer in [{low}, {high}], got {value!r}"
        )


def _check_argument(key: str, value: object, path: Path) -> None:
    """Raise a CheckpointError unless ``value`` is a plausible SLFNO argument ``key``."""
    expected = None
    if key in SIZE_LIMITS:
        _checked_size(key, value, path)
    elif key == "n_modes":
        if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_GRID_DIMS:
            expected = f"a tuple of 1 to {MAX_GRID_DIMS} mode counts"
        elif not all(type(m) is int and 1 <= m <= MAX_MODES for m in value):
            expected = f"mode counts that are integers in [1, {MAX_MODES}]"
    elif key == "label_injection" and value not in INJECTIONS:
        expected = f"one of {INJECTIONS}"
    elif key == "operator" and (not isinstance(value, str) or value.lower() not in OPERATORS):
        expected = f"one of {sorted(OPERATORS)}"
    elif key == "residual" and not isinstance(value, bool):
        expected = "a bool"
    elif key == "dt" and (isinstance(value, bool) or not isinstance(value, int | float)):
        expected = "a number"
    elif key == "operator_kwargs" and value is not None:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            expected = "None or a dict of keyword arguments"
        elif not is_plain_data(value):
            expected = "plain data (numbers, strings, lists, dicts)"
        else:
            for name in SIZE_LIMITS.keys() & value.keys():
                _checked_size(name, value[name], path)
    if expected is not None:
        raise CheckpointError(f"SLFNO metadata {path}: {key} must be {expected}, got {value!r}")


def checkpoint_arguments(meta: object, path: Path, slfno: type) -> dict[str, Any]:
    """The SLFNO constructor arguments stored in metadata ``meta``, checked.

    Parameters
    ----------
    meta : object
        What the metadata file holds: BaseModel's record of the constructor call,
        keyword arguments (defaults filled in) plus ``args``, ``_version`` and ``_name``.
    path : pathlib.Path
        The metadata file, named in errors.
    slfno : type
        :class:`~.neuralop.SLFNO`, whose constructor names the arguments (passed in: this
        module sits below the one that defines it).

    Returns
    -------
    dict of str to Any
        Keyword arguments for ``slfno``; a positional argument overrides the
        default BaseModel recorded under the same name.

    Raises
    ------
    slift_plugin.CheckpointError
        If ``meta`` is not a dict, names another model, holds unknown keys, too many
        positional arguments, or a value :func:`_check_argument` rejects.
    """
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"SLFNO metadata {path} must be a dict of constructor arguments, got "
            f"{type(meta).__name__}"
        )
    names = list(inspect.signature(slfno.__init__).parameters)[1:]  # without self
    unknown = sorted(str(k) for k in meta if k not in names and k not in _HOST_KEYS)
    if unknown:
        raise CheckpointError(
            f"SLFNO metadata {path} holds unknown keys {unknown[:8]}; expected constructor "
            f"arguments {names} and {list(_HOST_KEYS)}"
        )
    if meta.get("_name", "SLFNO") != "SLFNO":
        raise CheckpointError(f"metadata {path} is for model {meta['_name']!r}, not SLFNO")
    args = meta.get("args", ())
    if not isinstance(args, list | tuple) or len(args) > len(names):
        raise CheckpointError(
            f"SLFNO metadata {path}: args must be at most {len(names)} positional "
            f"arguments, got {args!r:.200}"
        )
    arguments = {k: v for k, v in meta.items() if k not in _HOST_KEYS}
    # Python refuses an argument given twice, so a name both positional and recorded
    # as a keyword was given positionally: the keyword is BaseModel's filled-in default.
    arguments.update(zip(names, args, strict=False))
    if "in_channels" not in arguments:
        raise CheckpointError(f"SLFNO metadata {path} lacks in_channels")
    for key, value in arguments.items():
        _check_argument(key, value, path)
    return arguments
