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

import math
from typing import Any

import torch
from neuralop.layers.fno_block import FNOBlocks
from neuralop.models import FNO, TFNO, UNO
from neuralop.models.base_model import BaseModel
from torch import Tensor, nn

from ..lifting import StochasticLifting

__all__ = ["INJECTIONS", "OPERATORS", "LiftedOperator", "SLFNO", "lift", "lifted_operator"]

INJECTIONS = ("channels", "noise_field", "embedding")
OPERATORS = {"fno": FNO, "tfno": TFNO, "uno": UNO}
_HOST_KEYS = ("_version", "args", "_name")


def _extra_channels(injection: str, label_dim: int, n_cond: int) -> int:
    return (label_dim if injection in ("channels", "noise_field") else 0) + n_cond


class LiftedOperator(nn.Module):
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
        label_dim: int = 16,
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
        self._offsets: dict[tuple[int, int], tuple[int, int]] = {}
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
        sites: list[tuple[FNOBlocks, int]]
        if isinstance(blocks, FNOBlocks):  # FNO/TFNO: one module called once per layer
            sites = [(blocks, i) for i in range(blocks.n_layers)]
        elif isinstance(blocks, nn.ModuleList):  # UNO: one module per layer
            sites = [(b, 0) for b in blocks]
        else:
            raise TypeError(
                f"injection='embedding' needs an operator with fno_blocks (FNO/TFNO/UNO), got "
                f"{type(self.operator).__name__}"
            )
        width = 0
        for block, index in sites:
            self._offsets[(id(block), index)] = (width, block.in_channels)
            width += block.in_channels
        for block in {id(b): b for b, _ in sites}.values():
            block.register_forward_pre_hook(self._add_embedding, with_kwargs=True)
        return width

    def _add_embedding(self, block: nn.Module, args: tuple, kwargs: dict) -> tuple:
        if self._embedding is None:
            return args, kwargs
        index = args[1] if len(args) > 1 else kwargs.get("index", 0)
        start, size = self._offsets[(id(block), index)]
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

    # -- neuraloperator traps ----------------------------------------------------------------
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
        probe = fn(torch.zeros((), dtype=torch.float32))
        if probe.dtype != torch.float32:
            raise TypeError(
                f"refusing to cast a neuraloperator model to {probe.dtype}: FNO spectral "
                "weights are complex and do not survive dtype casts in neuraloperator 2.0 "
                "(.double() fails, .to(dtype) silently drops imaginary parts). Keep it in "
                "float32; use torch.autocast for mixed precision."
            )
        return super()._apply(fn, recurse)


def lifted_operator(
    operator: str = "fno",
    *,
    state_channels: int,
    history: int = 1,
    label_dim: int = 16,
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


def _spatial_dims(net: nn.Module) -> int:
    n_dim = getattr(net, "n_dim", None)
    if n_dim is None:
        raise TypeError(f"cannot tell the number of grid dimensions of {type(net).__name__}")
    return int(n_dim)


def lift(
    model: BaseModel,
    *,
    label_dim: int = 16,
    injection: str = "channels",
    n_params: int = 0,
    history: int = 1,
    residual: bool = True,
    dt: float = math.nan,
    embedding_hidden: int = 64,
) -> StochasticLifting:
    """Turn a user's deterministic FNO/TFNO/UNO into a StochasticLifting stepper.

    The architecture (every constructor argument of ``model``) is kept; the input width
    grows to ``history * C + label + n_params`` channels, with ``C = model.out_channels``.
    Weights are not copied: the input layer changes shape, and the stochastic model is
    trained from scratch on labelled transitions.
    """
    if not isinstance(model, tuple(OPERATORS.values())):
        raise TypeError(f"lift() takes an FNO, TFNO or UNO, got {type(model).__name__}")
    kwargs = {k: v for k, v in model._init_kwargs.items() if k not in _HOST_KEYS}
    state_channels = int(kwargs.pop("out_channels"))
    kwargs.pop("in_channels")
    kind = {FNO: "fno", TFNO: "tfno", UNO: "uno"}[type(model)]
    backbone = lifted_operator(
        kind,
        state_channels=state_channels,
        history=history,
        label_dim=label_dim,
        injection=injection,
        n_cond=n_params,
        embedding_hidden=embedding_hidden,
        **kwargs,
    )
    grid = (None,) * _spatial_dims(model)
    return StochasticLifting(
        backbone,
        (state_channels, *grid),
        history=history,
        n_params=n_params,
        residual=residual,
        dt=dt,
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
        As for FNO (ignored for ``operator="uno"``, which takes ``operator_kwargs``).
    label_dim, label_injection:
        Label size and injection (see module docstring).
    n_params, history, residual, dt:
        As for :class:`slift_plugin.StochasticLifting`.
    operator:
        ``"fno"``, ``"tfno"`` or ``"uno"``.
    operator_kwargs:
        Further constructor arguments of the operator.
    """

    def __init__(
        self,
        in_channels: int,
        n_modes: tuple[int, ...] = (16,),
        hidden_channels: int = 32,
        n_layers: int = 4,
        label_dim: int = 16,
        label_injection: str = "channels",
        n_params: int = 0,
        history: int = 1,
        residual: bool = True,
        dt: float = math.nan,
        operator: str = "fno",
        operator_kwargs: dict | None = None,
    ) -> None:
        kwargs = dict(operator_kwargs or {})
        if operator.lower() in ("fno", "tfno"):
            kwargs = {
                "n_modes": tuple(n_modes),
                "hidden_channels": hidden_channels,
                "n_layers": n_layers,
                **kwargs,
            }
            n_dim = len(n_modes)
        else:
            kwargs.setdefault("hidden_channels", hidden_channels)
            kwargs.setdefault("n_layers", n_layers)
            n_dim = len(kwargs["uno_n_modes"][0])
        backbone = lifted_operator(
            operator,
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
