"""neuraloperator glue: lifted FNO/TFNO/UNO backbones, ``SLFNO`` in the model registry.

Three ways in, from most to least hands-on:

* :func:`lifted_operator` builds an FNO/TFNO/UNO whose input channels are sized for the
  state window + label + conditioning, wrapped as a backbone for
  :class:`slift_plugin.StochasticLifting`.
* :func:`lift` takes a user's existing (deterministic) FNO/TFNO/UNO and returns a
  StochasticLifting stepper with the same architecture, input widened for the label.
* :class:`SLFNO` is registered in neuraloperator's model registry, so
  ``neuralop.get_model(config)`` builds it with ``config.model.model_arch = "slfno"``; it
  trains unchanged with ``neuralop.Trainer`` on dict batches from
  :class:`slift_plugin.WithFixedLabels` and saves with neuraloperator checkpoints.

Label injections (``injection=``):

``"channels"``
    the label vector ``(B, L)`` broadcast as ``L`` constant input channels;
``"noise_field"``
    a white-noise label field ``(B, L, *grid)`` as ``L`` input channels;
``"embedding"``
    an MLP embedding of the label vector added to the input of every operator block,
    like a diffusion time embedding.

Physics parameters always enter as constant input channels.

Two traps of neuraloperator 2.0 are handled here: a nested ``BaseModel`` injects a
``_metadata`` entry into its parent's ``state_dict`` (stripped by :class:`LiftedOperator`),
and FNO weights do not survive a dtype cast (any cast away from float32 is refused).
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any

import torch
from neuralop.layers.fno_block import FNOBlocks
from neuralop.models import FNO, TFNO, UNO
from neuralop.models.base_model import BaseModel
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_stepper, tensor_state
from ..data import atomic_write
from ..lifting import StochasticLifting

__all__ = [
    "INJECTIONS",
    "OPERATORS",
    "SLFNO",
    "LiftedOperator",
    "OperatorPotential",
    "lift",
    "lifted_operator",
    "operator_potential",
]

INJECTIONS = ("channels", "noise_field", "embedding")
OPERATORS = {"fno": FNO, "tfno": TFNO, "uno": UNO}
_HOST_KEYS = ("_version", "args", "_name")


def _extra_channels(injection: str, label_dim: int, n_cond: int) -> int:
    return (label_dim if injection in ("channels", "noise_field") else 0) + n_cond


class _HostsOperator(nn.Module):
    """Handles the two neuraloperator traps for a module that wraps an operator."""

    def state_dict(self, *args: Any, destination=None, prefix: str = "", keep_vars: bool = False):
        had_metadata = destination is not None and "_metadata" in destination
        state = super().state_dict(
            *args, destination=destination, prefix=prefix, keep_vars=keep_vars
        )
        if not had_metadata:
            # The wrapped BaseModel writes its init kwargs under a bare '_metadata' key,
            # which the parent module neither expects on load nor can save safely.
            state.pop("_metadata", None)
        return state

    def _apply(self, fn, recurse: bool = True):
        # Module.to(dtype) converts complex tensors too, even for float32 -> float32.
        real = fn(torch.zeros((), dtype=torch.float32)).dtype
        cplx = fn(torch.zeros((), dtype=torch.complex64)).dtype
        if real != torch.float32 or cplx != torch.complex64:
            raise TypeError(
                f"refusing to cast a neuraloperator model (float32 -> {real}, complex64 -> "
                f"{cplx}): FNO spectral "
                "weights are complex and do not survive dtype casts in neuraloperator 2.0 "
                "(.double() fails, .to(dtype) silently drops imaginary parts). Keep it in "
                "float32; use torch.autocast for mixed precision."
            )
        return super()._apply(fn, recurse)


class LiftedOperator(_HostsOperator):
    """A neural operator as a lifted backbone ``G(window, label, cond)``.

    Parameters
    ----------
    operator:
        An FNO/TFNO/UNO whose ``in_channels`` equals ``window_channels`` plus the label
        channels (``channels``/``noise_field``) plus ``n_cond``.
    window_channels:
        ``history * C`` state channels of the input window.
    label_dim:
        Label size ``L`` (0: a deterministic regression backbone).
    injection:
        One of :data:`INJECTIONS`.
    n_cond:
        Number of conditioning values (constant channels).
    embedding_hidden:
        Hidden width of the label embedding MLP (``injection="embedding"``).
    """

    def __init__(
        self,
        operator: nn.Module,
        *,
        window_channels: int,
        label_dim: int = 32,
        injection: str = "channels",
        n_cond: int = 0,
        embedding_hidden: int = 64,
    ) -> None:
        super().__init__()
        if injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, got {injection!r}")
        if label_dim < 0 or n_cond < 0:
            raise ValueError(f"label_dim and n_cond must be >= 0, got {label_dim}, {n_cond}")
        expected = window_channels + _extra_channels(injection, label_dim, n_cond)
        if getattr(operator, "in_channels", expected) != expected:
            raise ValueError(
                f"operator.in_channels must be {expected} (window {window_channels} + "
                f"{_extra_channels(injection, label_dim, n_cond)} for injection={injection!r}, "
                f"label_dim={label_dim}, n_cond={n_cond}), got {operator.in_channels}"
            )
        self.operator = operator
        self.window_channels = window_channels
        self.label_dim = label_dim
        self.injection = injection
        self.n_cond = n_cond
        self._embedding: Tensor | None = None
        # (start, size) of each block call's slice of the embedding, indexed by
        # [block position][layer index]; positions (not ids) survive deepcopy and pickling.
        self._offsets: list[list[tuple[int, int]]] = []
        if injection == "embedding" and label_dim:
            width = self._register_block_hooks()
            self.label_embedding = nn.Sequential(
                nn.Linear(label_dim, embedding_hidden),
                nn.SiLU(),
                nn.Linear(embedding_hidden, width),
            )

    # -- embedding injection ---------------------------------------------------------------
    def _register_block_hooks(self) -> int:
        blocks = self.operator.fno_blocks
        if isinstance(blocks, FNOBlocks):  # FNO/TFNO: one module called once per layer
            modules, calls = [blocks], [blocks.n_layers]
        elif isinstance(blocks, nn.ModuleList):  # UNO: one module per layer
            modules, calls = list(blocks), [1] * len(blocks)
        else:
            raise TypeError(
                f"injection='embedding' needs an operator with fno_blocks (FNO/TFNO/UNO), got "
                f"{type(self.operator).__name__}"
            )
        width = 0
        for position, (block, n_calls) in enumerate(zip(modules, calls, strict=True)):
            block._slift_block_position = position
            self._offsets.append([])
            for _ in range(n_calls):
                self._offsets[position].append((width, block.in_channels))
                width += block.in_channels
            block.register_forward_pre_hook(self._add_embedding, with_kwargs=True)
        return width

    def _add_embedding(self, block: nn.Module, args: tuple, kwargs: dict) -> tuple:
        if self._embedding is None:
            return args, kwargs
        index = args[1] if len(args) > 1 else kwargs.get("index", 0)
        start, size = self._offsets[block._slift_block_position][index]
        x = args[0]
        bias = self._embedding[:, start : start + size].reshape(
            x.shape[0], size, *([1] * (x.ndim - 2))
        )
        return (x + bias, *args[1:]), kwargs

    # -- the backbone ----------------------------------------------------------------------
    def label_shape(self, grid_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        if not self.label_dim:
            return None
        if self.injection == "noise_field":
            return (self.label_dim, *grid_shape)
        return (self.label_dim,)

    def forward(self, x: Tensor, label: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        grid = x.shape[2:]

        def constant(v: Tensor) -> Tensor:
            return v.reshape(*v.shape, *([1] * len(grid))).expand(*v.shape, *grid)

        parts = [x]
        if self.label_dim and self.injection == "channels":
            parts.append(constant(label))
        elif self.label_dim and self.injection == "noise_field":
            parts.append(label)
        if self.n_cond:
            parts.append(constant(cond))
        if self.label_dim and self.injection == "embedding":
            self._embedding = self.label_embedding(label)
        try:
            return self.operator(torch.cat(parts, dim=1))
        finally:
            self._embedding = None


def lifted_operator(
    operator: str = "fno",
    *,
    state_channels: int,
    history: int = 1,
    label_dim: int = 32,
    injection: str = "channels",
    n_cond: int = 0,
    out_channels: int | None = None,
    embedding_hidden: int = 64,
    **operator_kwargs: Any,
) -> LiftedOperator:
    """Build an FNO/TFNO/UNO sized for state window + label + conditioning.

    ``operator_kwargs`` go to the neuraloperator constructor (``n_modes``,
    ``hidden_channels``, ``n_layers``; for UNO ``uno_out_channels``, ``uno_n_modes``,
    ``uno_scalings``, ...). ``in_channels`` is computed; ``out_channels`` defaults to
    ``state_channels``.
    """
    key = operator.lower()
    if key not in OPERATORS:
        raise ValueError(f"operator must be one of {sorted(OPERATORS)}, got {operator!r}")
    if "in_channels" in operator_kwargs:
        raise ValueError("in_channels is computed from state, label and conditioning sizes")
    window_channels = history * state_channels
    in_channels = window_channels + _extra_channels(injection, label_dim, n_cond)
    net = OPERATORS[key](
        in_channels=in_channels, out_channels=out_channels or state_channels, **operator_kwargs
    )
    return LiftedOperator(
        net,
        window_channels=window_channels,
        label_dim=label_dim,
        injection=injection,
        n_cond=n_cond,
        embedding_hidden=embedding_hidden,
    )


def _constructor_arguments(model: BaseModel) -> dict[str, Any]:
    """The user's constructor arguments (positional ones bound to names), minus defaults."""
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


def _same(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def lift(
    model: BaseModel,
    *,
    label_dim: int = 32,
    injection: str = "channels",
    n_params: int = 0,
    history: int = 1,
    residual: bool = True,
    dt: float = math.nan,
) -> SLFNO:
    """Turn a user's deterministic FNO/TFNO/UNO into a Stochastic Lifting stepper.

    The architecture (every constructor argument of ``model``) is kept; the input width
    grows to ``history * C + label + n_params`` channels, with ``C`` the state channels
    (``in_channels == out_channels`` is required: the stepper maps a state to the next).
    Weights are not copied: the input layer changes shape, and the stochastic model is
    trained from scratch on labelled transitions. The result is an :class:`SLFNO`, so
    ``neuralop.Trainer`` can train and checkpoint it.
    """
    if not isinstance(model, tuple(OPERATORS.values())):
        raise TypeError(f"lift() takes an FNO, TFNO or UNO, got {type(model).__name__}")
    kwargs = _constructor_arguments(model)
    in_channels, out_channels = kwargs.pop("in_channels"), kwargs.pop("out_channels")
    if in_channels != out_channels:
        raise ValueError(
            f"lift() needs a state-to-state operator (in_channels == out_channels), got "
            f"in_channels={in_channels}, out_channels={out_channels}"
        )
    kind = {FNO: "fno", TFNO: "tfno", UNO: "uno"}[type(model)]
    named = {k: kwargs.pop(k) for k in ("n_modes", "hidden_channels", "n_layers") if k in kwargs}
    if kind == "uno":  # UNO takes them through operator_kwargs
        kwargs |= named
        named = {}
    return SLFNO(
        in_channels,
        **named,
        label_dim=label_dim,
        label_injection=injection,
        n_params=n_params,
        history=history,
        residual=residual,
        dt=dt,
        operator=kind,
        operator_kwargs=kwargs,
    )


class SLFNO(StochasticLifting, BaseModel, name="SLFNO"):
    """Stochastic Lifting neural operator, registered in neuraloperator's model registry.

    ``neuralop.get_model(config)`` builds it from ``config.model`` with
    ``model_arch: slfno`` and ``data_channels`` = channels of one state. It is a
    :class:`slift_plugin.StochasticLifting` stepper (``rollout()`` works on it) and a
    neuraloperator ``BaseModel`` (``save_checkpoint``/``from_checkpoint``, ``Trainer``).

    ``forward(x, label, mu=None, **batch)`` returns the predicted next state, so the
    Trainer's ``model(**batch)`` and ``LpLoss(out, y)`` work on dict batches
    ``{"x", "y", "label"}``.

    Parameters
    ----------
    in_channels:
        Channels ``C`` of one state (neuraloperator's ``data_channels``).
    n_modes, hidden_channels, n_layers:
        As for FNO (for ``operator="uno"``, ``hidden_channels``/``n_layers`` are defaults
        for ``operator_kwargs``, which must hold ``uno_n_modes`` etc.).
    label_dim, label_injection:
        Label size and injection (see module docstring).
    n_params, history, residual, dt:
        As for :class:`slift_plugin.StochasticLifting`.
    operator:
        ``"fno"``, ``"tfno"`` or ``"uno"``.
    operator_kwargs:
        Further constructor arguments of the operator.

    Checkpoints (``save_checkpoint``/``from_checkpoint``, also used by ``Trainer``) are
    written atomically and read with ``weights_only=True``: only tensors and plain
    constructor arguments are stored.
    """

    def __init__(
        self,
        in_channels: int,
        n_modes: tuple[int, ...] = (16,),
        hidden_channels: int = 32,
        n_layers: int = 4,
        label_dim: int = 32,
        label_injection: str = "channels",
        n_params: int = 0,
        history: int = 1,
        residual: bool = True,
        dt: float = math.nan,
        operator: str = "fno",
        operator_kwargs: dict | None = None,
    ) -> None:
        key = str(operator).lower()
        if key not in OPERATORS:
            raise ValueError(f"operator must be one of {sorted(OPERATORS)}, got {operator!r}")
        kwargs = dict(operator_kwargs or {})
        if key in ("fno", "tfno"):
            kwargs = {
                "n_modes": tuple(n_modes),
                "hidden_channels": hidden_channels,
                "n_layers": n_layers,
                **kwargs,
            }
            n_dim = len(kwargs["n_modes"])
        else:
            kwargs.setdefault("hidden_channels", hidden_channels)
            kwargs.setdefault("n_layers", n_layers)
            if "uno_n_modes" not in kwargs:
                raise ValueError("operator='uno' needs operator_kwargs['uno_n_modes'] (and more)")
            n_dim = len(kwargs["uno_n_modes"][0])
        backbone = lifted_operator(
            key,
            state_channels=in_channels,
            history=history,
            label_dim=label_dim,
            injection=label_injection,
            n_cond=n_params,
            **kwargs,
        )
        super().__init__(
            backbone,
            (in_channels, *(None,) * n_dim),
            history=history,
            n_params=n_params,
            residual=residual,
            dt=dt,
        )

    def save_checkpoint(self, save_folder: str | os.PathLike, save_name: str) -> None:
        """neuraloperator's checkpoint layout, written atomically and safe to load."""
        folder = Path(save_folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = tensor_state(self)
        atomic_write(folder / f"{save_name}_state_dict.pt", lambda p: torch.save(state, p))
        meta = dict(self._init_kwargs)
        atomic_write(folder / f"{save_name}_metadata.pkl", lambda p: torch.save(meta, p))

    def load_checkpoint(self, save_folder, save_name, map_location=None) -> None:
        path = Path(save_folder) / f"{save_name}_state_dict.pt"
        load_stepper(path, self, map_location=map_location or "cpu")

    @classmethod
    def from_checkpoint(cls, save_folder, save_name, map_location=None) -> SLFNO:
        path = Path(save_folder) / f"{save_name}_metadata.pkl"
        if not path.is_file():
            raise CheckpointError(f"no SLFNO metadata file at {path}")
        try:
            meta = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"SLFNO metadata {path} is corrupt or holds non-data objects: {exc}"
            ) from exc
        args = tuple(meta.pop("args", ()))
        meta = {k: v for k, v in meta.items() if k not in _HOST_KEYS}
        instance = cls(*args, **meta)
        instance.load_checkpoint(save_folder, save_name, map_location=map_location)
        return instance


class OperatorPotential(_HostsOperator):
    """A DICE potential for fields: the grid average of a one-channel neural operator.

    ``s[u](t, mu) = mean_x f(u, t, mu)(x)``, the quadrature of ``integral f dx`` on the unit
    domain; :class:`slift_plugin.DICE` scales its gradient by the inverse cell volume, so
    the velocity is the functional derivative and does not depend on the resolution.
    Time and parameters enter as constant input channels.
    """

    def __init__(self, operator: nn.Module, *, state_channels: int, n_params: int = 0) -> None:
        super().__init__()
        expected = state_channels + 1 + n_params
        if getattr(operator, "in_channels", expected) != expected:
            raise ValueError(
                f"operator.in_channels must be {expected} (state {state_channels} + time 1 + "
                f"n_params {n_params}), got {operator.in_channels}"
            )
        if getattr(operator, "out_channels", 1) != 1:
            raise ValueError(f"a potential has one output channel, got {operator.out_channels}")
        self.operator = operator
        self.state_channels = state_channels
        self.n_cond = n_params

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        grid = x.shape[2:]

        def constant(v: Tensor) -> Tensor:
            return v.reshape(*v.shape, *([1] * len(grid))).expand(*v.shape, *grid)

        parts = [x, constant(t[:, None])]
        if self.n_cond:
            parts.append(constant(cond))
        out = self.operator(torch.cat(parts, dim=1))
        return out.flatten(1).mean(1)


def operator_potential(
    operator: str = "fno", *, state_channels: int, n_params: int = 0, **operator_kwargs: Any
) -> OperatorPotential:
    """Build an FNO/TFNO/UNO potential with ``state + 1 + n_params`` inputs, one output."""
    key = operator.lower()
    if key not in OPERATORS:
        raise ValueError(f"operator must be one of {sorted(OPERATORS)}, got {operator!r}")
    net = OPERATORS[key](
        in_channels=state_channels + 1 + n_params, out_channels=1, **operator_kwargs
    )
    return OperatorPotential(net, state_channels=state_channels, n_params=n_params)
