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
import os
from pathlib import Path
from typing import Any

import torch
from neuralop.layers.fno_block import FNOBlocks
from neuralop.models import FNO, TFNO, UNO
from neuralop.models.base_model import BaseModel
from torch import Tensor, nn

from ..checkpoint import (
    CheckpointError,
    check_model_state,
    load_checkpoint,
    load_model_state,
    load_stepper,
    sidecar_config_path,
    stepper_record,
    tensor_state,
)
from ..data import atomic_write
from ..labels import ContentLabels
from ..methods import StochasticLifting
from ..rollout import rollout
from ._neuralop_arguments import INJECTIONS, OPERATORS, checkpoint_arguments, constructor_arguments

__all__ = [
    "INJECTIONS",
    "OPERATORS",
    "SLFNO",
    "LiftedOperator",
    "OperatorPotential",
    "lift",
    "lifted_operator",
    "operator_potential",
    "rollout",
]


def _extra_channels(injection: str, label_dim: int, n_cond: int) -> int:
    return (label_dim if injection in ("channels", "noise_field") else 0) + n_cond


class _HostsOperator(nn.Module):
    """Handles the two neuraloperator traps for a module that wraps an operator."""

    def state_dict(self, *args: Any, destination=None, prefix: str = "", keep_vars: bool = False):
        """``nn.Module.state_dict`` without the bare ``_metadata`` entry of the operator.

        The wrapped neuraloperator ``BaseModel`` writes its constructor arguments under a
        ``_metadata`` key, which the parent module neither expects on load nor can save
        safely; it is dropped unless ``destination`` already held one.

        Parameters
        ----------
        *args : Any
            Positional arguments of ``nn.Module.state_dict`` (deprecated by torch).
        destination : dict or None
            The dict to fill, as for ``nn.Module.state_dict``; a new one when None.
        prefix : str
            Prefix of every key.
        keep_vars : bool
            Keep the tensors attached to autograd instead of detaching them.

        Returns
        -------
        dict
            The state dict, tensors by key.
        """
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
    operator : torch.nn.Module
        An FNO/TFNO/UNO whose ``in_channels`` equals ``window_channels`` plus the label
        channels (``channels``/``noise_field``) plus ``n_cond``.
    window_channels : int
        ``history * C`` state channels of the input window.
    label_dim : int
        Label size ``L`` (0: a deterministic regression backbone).
    injection : str
        One of :data:`INJECTIONS`.
    n_cond : int
        Number of conditioning values (constant channels).
    embedding_hidden : int
        Hidden width of the label embedding MLP (``injection="embedding"``).

    Raises
    ------
    ValueError
        If ``injection`` is not one of :data:`INJECTIONS`, ``label_dim`` or ``n_cond``
        is negative, or ``operator.in_channels`` (when it has one) is not the width
        above.
    TypeError
        If ``injection="embedding"`` (with ``label_dim > 0``) and the operator's
        ``fno_blocks`` are neither FNO/TFNO blocks nor UNO's list of blocks.
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
        """Per-sample label shape on a grid.

        Parameters
        ----------
        grid_shape : tuple of int
            The grid of the states.

        Returns
        -------
        tuple of int or None
            ``(L, *grid_shape)`` for ``injection="noise_field"``, else ``(L,)``; None when
            ``label_dim == 0``.
        """
        if not self.label_dim:
            return None
        if self.injection == "noise_field":
            return (self.label_dim, *grid_shape)
        return (self.label_dim,)

    def forward(self, x: Tensor, label: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """Apply the operator to the window with the label and conditioning injected.

        Parameters
        ----------
        x : Tensor
            The standardised window ``(B, window_channels, *grid)``.
        label : Tensor or None
            The label ``(B, *label_shape(grid))``: ``(B, L)`` for ``"channels"`` and
            ``"embedding"``, ``(B, L, *grid)`` for ``"noise_field"``; None when
            ``label_dim == 0``.
        cond : Tensor or None
            Conditioning values ``(B, n_cond)``, as constant channels; None when
            ``n_cond == 0``.

        Returns
        -------
        Tensor
            The operator's output ``(B, out_channels, *grid)``.
        """
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

    Parameters
    ----------
    operator : str
        ``"fno"``, ``"tfno"`` or ``"uno"`` (any case).
    state_channels : int
        Channels ``C`` of one state.
    history : int
        Number of past states in the input window (``window_channels = history * C``).
    label_dim : int
        Label size ``L`` (0: a deterministic regression backbone).
    injection : str
        One of :data:`INJECTIONS`.
    n_cond : int
        Number of conditioning values (constant channels).
    out_channels : int or None
        Output channels; ``state_channels`` when None.
    embedding_hidden : int
        Hidden width of the label embedding MLP (``injection="embedding"``).
    **operator_kwargs : Any
        Further constructor arguments of the operator (not ``in_channels``).

    Returns
    -------
    LiftedOperator
        The operator wrapped as a lifted backbone.

    Raises
    ------
    ValueError
        If ``operator`` is unknown, ``operator_kwargs`` holds ``in_channels``, or
        :class:`LiftedOperator` rejects ``injection``, ``label_dim`` or ``n_cond``.
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

    Parameters
    ----------
    model : neuralop.models.base_model.BaseModel
        An FNO, TFNO or UNO with ``in_channels == out_channels``.
    label_dim : int
        Label size ``L``.
    injection : str
        One of :data:`INJECTIONS`.
    n_params : int
        Number of physics parameters ``mu``.
    history : int
        Number of past states stacked on the channel axis as input (1 = Markov).
    residual : bool
        Predict the standardised increment (default) instead of the standardised state.
    dt : float
        Physical length of one step (``nan`` when unknown).

    Returns
    -------
    SLFNO
        A new, untrained stepper with ``model``'s architecture.

    Raises
    ------
    TypeError
        If ``model`` is not an FNO, TFNO or UNO.
    ValueError
        If ``model.in_channels != model.out_channels``, or :class:`SLFNO` rejects the
        arguments.
    """
    if not isinstance(model, tuple(OPERATORS.values())):
        raise TypeError(f"lift() takes an FNO, TFNO or UNO, got {type(model).__name__}")
    kwargs = constructor_arguments(model)
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

    Checkpoints (``save_checkpoint``/``from_checkpoint``, also used by ``Trainer``) are
    written atomically and read with ``weights_only=True``: only tensors and plain
    constructor arguments are stored.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of one state (neuraloperator's ``data_channels``).
    n_modes : tuple of int
        Fourier modes per grid axis, as for FNO; its length is the grid dimension
        (ignored for ``operator="uno"``, which takes ``uno_n_modes``).
    hidden_channels, n_layers : int
        As for FNO (for ``operator="uno"``, defaults for ``operator_kwargs``, which
        must hold ``uno_n_modes`` etc.).
    label_dim : int
        Label size ``L``.
    label_injection : str
        One of :data:`INJECTIONS` (see the module docstring).
    n_params, history : int
        As for :class:`slift_plugin.StochasticLifting`.
    residual : bool
        As for :class:`slift_plugin.StochasticLifting`.
    dt : float
        As for :class:`slift_plugin.StochasticLifting`.
    operator : str
        ``"fno"``, ``"tfno"`` or ``"uno"`` (any case).
    operator_kwargs : dict or None
        Further constructor arguments of the operator.

    Raises
    ------
    ValueError
        If ``operator`` is unknown, ``operator="uno"`` comes without
        ``operator_kwargs["uno_n_modes"]``, or :func:`lifted_operator` or
        :class:`slift_plugin.StochasticLifting` rejects the arguments.
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
        self._content_labels: dict[tuple[int, ...], ContentLabels] = {}

    def forward(
        self, x: Tensor, label: Tensor | None = None, mu: Tensor | None = None, **batch: Tensor
    ) -> Tensor:
        """Predict the next state ``(B, C, *grid)``; a missing label is keyed by content.

        This is what lets a plain neuraloperator ``Trainer`` script train the model on its
        own ``{"x", "y"}`` batches. Without ``label``:

        * in training mode, each transition's label is a hash of its ``(x, y)`` values
          (:class:`slift_plugin.ContentLabels`, seed 0): fixed per
          transition across batches and epochs, as Stochastic Lifting needs;
        * in evaluation mode, labels are independent of the training ones (another salt,
          and the row position, so that repeated inputs get different labels): an
          evaluation loss scores fresh samples, and ``model(x)`` returns one
          reproducible sample per row. Ensembles come from :func:`slift_plugin.rollout`.

        The first training batch (with ``y``) also normalises a stepper that was never normalised
        (no :meth:`prepare`): per channel mean and std of its states and std of its
        increments ``y - x_k``, in the coordinates the model is trained in (those of a
        ``DataProcessor`` when the Trainer has one). A prepared stepper's statistics are
        checked once against that batch: a scale off by more than 10x means ``prepare``
        saw data in other coordinates than training does.

        Parameters
        ----------
        x : Tensor
            The window ``(B, history*C, *grid)``.
        label : Tensor or None
            ``(B, *noise_shape(grid))``, or None for a content-keyed label.
        mu : Tensor or None
            Physics parameters ``(B, n_params)``.
        **batch : Tensor
            Other entries of a dict batch; ``y`` (the next states ``(B, C, *grid)``) keys
            the labels, the rest is ignored.

        Returns
        -------
        Tensor
            The predicted next state ``(B, C, *grid)``.

        Raises
        ------
        ValueError
            In training mode without ``label`` and without ``y``; when an unnormalised
            stepper with physics parameters, or a batch without spread, would have to
            normalise itself from the batch; when a prepared stepper's scale does not
            fit the batch; and as :meth:`slift_plugin.StochasticLifting.forward`.
        """
        y = batch.get("y")
        if self.training and torch.is_tensor(x) and torch.is_tensor(y):
            self._normalise_from_batch(x, y)
        if label is None and self.label_dim and torch.is_tensor(x):
            label = self._content_label(x, y)
        return super().forward(x, label, mu)

    def step(
        self,
        window: Tensor,
        noise: Tensor | None = None,
        *,
        mu: Tensor | None = None,
        t: float | None = None,
    ) -> Tensor:
        # A step's label is its noise, always given: no content-keyed label, no
        # normalisation from a batch (those serve the Trainer's forward calls only).
        return StochasticLifting.forward(self, window, noise, mu)

    def _content_label(self, x: Tensor, y: Tensor | None) -> Tensor:
        shape = self.noise_shape(tuple(x.shape[2:]))
        labels = self._content_labels.get(shape)
        if labels is None:  # one per label shape: it caches its hash weights per size
            labels = self._content_labels[shape] = ContentLabels(shape, seed=0)
        if self.training:
            if not torch.is_tensor(y):
                raise ValueError(
                    "SLFNO in training mode needs a label or the next state y to key one: "
                    "call model(x=..., y=...) or model(**batch) on {'x', 'y'} batches"
                )
            return labels(x, y).to(x.dtype)
        rows = torch.arange(x.shape[0], device=x.device)
        return labels(x, rows, salt=1).to(x.dtype)

    def _normalise_from_batch(self, x: Tensor, y: Tensor) -> None:
        if getattr(self, "_batch_scale_checked", False):
            return
        self.check_window(x, "x")
        last = self._last_state(x).detach()
        dims = (0, *range(2, last.ndim))
        mean, std = last.mean(dims), last.std(dims)
        if bool(self.normalized):
            off = (mean - self.state_mean).abs() > 10 * self.state_std
            ratio = std / self.state_std
            if bool(off.any() | (ratio > 10).any() | (ratio < 0.1).any()):
                raise ValueError(
                    f"SLFNO was normalised (prepare) with state mean {self.state_mean.tolist()} "
                    f"and std {self.state_std.tolist()}, but its first training batch has mean "
                    f"{mean.tolist()} and std {std.tolist()}: prepare() saw data in other "
                    "coordinates than training does (e.g. raw data while the Trainer's "
                    "DataProcessor normalises). Train without prepare(): the first batch then "
                    "sets the normalisation in the training coordinates"
                )
        else:
            self._set_normalization_from(last, y, dims, mean, std)
        self._batch_scale_checked = True

    def _set_normalization_from(
        self, last: Tensor, y: Tensor, dims: tuple, mean: Tensor, std: Tensor
    ) -> None:
        if self.n_params:
            raise ValueError(
                "SLFNO is not normalised: call model.prepare(train_set) before training (a "
                "stepper with physics parameters needs their statistics from the data)"
            )
        delta_std = (y.detach() - last).std(dims)
        if not bool((std > 0).all() & (delta_std > 0).all()):
            raise ValueError(
                f"SLFNO's first training batch has no spread to normalise with (state std "
                f"{std.tolist()}, increment std {delta_std.tolist()}); shuffle the loader or "
                "call model.prepare(train_set)"
            )
        self.set_normalization({"state_mean": mean, "state_std": std, "delta_std": delta_std})

    def save_checkpoint(self, save_folder: str | os.PathLike, save_name: str) -> None:
        """neuraloperator's checkpoint layout, written atomically and safe to load.

        Writes ``{save_name}_state_dict.pt`` (the tensors of the state dict),
        ``{save_name}_metadata.pkl`` (the constructor arguments) and
        ``{save_name}_stepper_config.json`` (the stepper's configuration, so that
        :func:`slift_plugin.load_stepper` of the state file, ``slift sample`` and the
        learned ``sdeint`` rebuild the model) into ``save_folder``.

        Parameters
        ----------
        save_folder : str or os.PathLike
            The folder, created when missing.
        save_name : str
            The stem of both file names.
        """
        folder = Path(save_folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = tensor_state(self)
        atomic_write(folder / f"{save_name}_state_dict.pt", lambda p: torch.save(state, p))
        meta = dict(self._init_kwargs)
        atomic_write(folder / f"{save_name}_metadata.pkl", lambda p: torch.save(meta, p))
        config = stepper_record(self)
        sidecar = sidecar_config_path(folder / f"{save_name}_state_dict.pt")
        atomic_write(sidecar, lambda p: Path(p).write_text(config))

    def load_checkpoint(self, save_folder, save_name, map_location=None) -> None:
        """Load the weights written by :meth:`save_checkpoint` into this model in place.

        Parameters
        ----------
        save_folder : str or os.PathLike
            The folder of the checkpoint.
        save_name : str
            The stem of its file names; ``{save_name}_state_dict.pt`` is read.
        map_location : str or torch.device or None
            Where to load the tensors before copying them in (the CPU when None).

        Raises
        ------
        slift_plugin.CheckpointError
            If the file is missing or unreadable, or does not match this model (which is
            then left untouched).
        """
        path = Path(save_folder) / f"{save_name}_state_dict.pt"
        load_stepper(path, self, map_location=map_location or "cpu")

    @classmethod
    def from_checkpoint(cls, save_folder, save_name, map_location=None) -> SLFNO:
        """Build a model from the constructor arguments and weights of a checkpoint.

        Nothing is built from the file before it is checked: the metadata must hold
        known constructor arguments of the right types within sane sizes, the model it
        describes is first built on the ``meta`` device (no memory) and must match the
        stored weights key for key and shape for shape, and only then is it allocated.

        Parameters
        ----------
        save_folder : str or os.PathLike
            The folder written by :meth:`save_checkpoint`.
        save_name : str
            The stem of the file names.
        map_location : str or torch.device or None
            Where to load the tensors (the CPU when None).

        Returns
        -------
        SLFNO
            The model, with the stored weights and normalisation.

        Raises
        ------
        slift_plugin.CheckpointError
            If the metadata file is missing, corrupt or holds non-data objects, holds
            unknown keys, values of the wrong type or out-of-range sizes, or describes a
            model the weights file does not fit (or the weights are unusable).
        """
        path = Path(save_folder) / f"{save_name}_metadata.pkl"
        if not path.is_file():
            raise CheckpointError(f"no SLFNO metadata file at {path}")
        try:
            meta = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"SLFNO metadata {path} is corrupt or holds non-data objects: {exc}"
            ) from exc
        arguments = checkpoint_arguments(meta, path, SLFNO)
        try:
            with torch.device("meta"):  # shapes only: nothing is allocated
                probe = cls(**arguments)
        except Exception as exc:
            raise CheckpointError(
                f"SLFNO metadata {path} does not describe a valid SLFNO: {exc}"
            ) from exc
        state_path = Path(save_folder) / f"{save_name}_state_dict.pt"
        state = load_checkpoint(state_path, map_location or "cpu")["model"]
        check_model_state(probe, state, state_path)
        instance = cls(**arguments)
        load_model_state(instance, state, state_path)
        return instance


class OperatorPotential(_HostsOperator):
    """A DICE potential for fields: the grid average of a one-channel neural operator.

    ``s[u](t, mu) = mean_x f(u, t, mu)(x)``, the quadrature of ``integral f dx`` on the unit
    domain; :class:`slift_plugin.DICE` scales its gradient by the inverse cell volume, so
    the velocity is the functional derivative and does not depend on the resolution.
    Time and parameters enter as constant input channels.

    Parameters
    ----------
    operator : torch.nn.Module
        An FNO/TFNO/UNO with ``in_channels == state_channels + 1 + n_params`` and one
        output channel.
    state_channels : int
        Channels ``C`` of one state.
    n_params : int
        Number of physics parameters (the potential's ``n_cond``).

    Raises
    ------
    ValueError
        If ``operator.in_channels`` or ``operator.out_channels`` (when it has them) is
        not as above.
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
        """The potential ``s`` of each sample: the grid mean of the operator's output.

        Parameters
        ----------
        x : Tensor
            Standardised states ``(B, C, *grid)``.
        t : Tensor
            Standardised times ``(B,)``.
        cond : Tensor or None
            Standardised physics parameters ``(B, n_params)``; None when
            ``n_params == 0``.

        Returns
        -------
        Tensor
            The potential ``(B,)``.
        """
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
    """Build an FNO/TFNO/UNO potential with ``state + 1 + n_params`` inputs, one output.

    Parameters
    ----------
    operator : str
        ``"fno"``, ``"tfno"`` or ``"uno"`` (any case).
    state_channels : int
        Channels ``C`` of one state.
    n_params : int
        Number of physics parameters (the potential's ``n_cond``).
    **operator_kwargs : Any
        Further constructor arguments of the operator (``n_modes``,
        ``hidden_channels``, ...; not ``in_channels`` or ``out_channels``).

    Returns
    -------
    OperatorPotential
        The potential, for :class:`slift_plugin.DICE`.

    Raises
    ------
    ValueError
        If ``operator`` is not one of :data:`OPERATORS`.
    """
    key = operator.lower()
    if key not in OPERATORS:
        raise ValueError(f"operator must be one of {sorted(OPERATORS)}, got {operator!r}")
    net = OPERATORS[key](
        in_channels=state_channels + 1 + n_params, out_channels=1, **operator_kwargs
    )
    return OperatorPotential(net, state_channels=state_channels, n_params=n_params)
