"""``slift train``: fit a stepper to the trajectories of a netCDF file or zarr store.

The data is an ensemble as ``slift generate`` writes it: dims ``(sample, time, channel,
*grid)``, a uniformly spaced numeric ``time`` coord (the step ``dt``; ``nan`` when it counts
steps; dates and durations are refused) and optional ``mu_<name>`` coords along ``sample``
(physics parameters, which the stepper is then conditioned on). An option that the chosen
method or backbone does not use is refused, not ignored.
The checkpoint is :func:`slift_plugin.fit`'s ``CKPT_DIR/last.pt``: atomic, resumable with
``--resume`` (the same settings and data), and what ``slift sample`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from ._cli_arguments import (
    OVERWRITE_DIR,
    check_numeric_time,
    check_output_dir,
    check_writable,
    device,
    is_or_is_inside,
    positive_int,
    seed,
)
from .methods.dice import SCHEMES

__all__ = ["BACKBONES", "METHODS", "add_train_parser"]

METHODS = ("sl", "mse", "cfm", "es", "dice")
BACKBONES = ("auto", "mlp", "fno", "tfno", "uno")
_METHOD_HELP = (
    "sl: Stochastic Lifting (fixed random labels); mse: deterministic regression (the "
    "conditional mean, for comparison); cfm: conditional flow matching (--n-euler steps per "
    "output step); es: energy score over fresh labels; dice: DICE, a potential fitted to "
    "the populations at each time (pairing across times ignored)"
)


# -- argument types -----------------------------------------------------------------------------
def _float(text: str, *, low: float, strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and (value > low if strict else value >= low)):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
    return value


_positive_float = partial(_float, low=0.0, strict=True)
_nonnegative_float = partial(_float, low=0.0, strict=False)


# -- the data -----------------------------------------------------------------------------------
def _first_nonfinite(values: np.ndarray) -> str:
    """Where the first NaN/Inf of an ensemble's values is, as the message names it."""
    sample, time = np.argwhere(~np.isfinite(values))[0][:2]
    return f"sample {sample}, time index {time}"


def _load_training_data(path: str, history: int) -> xr.DataArray:
    """The ensemble at ``path``, checked for training with ``history`` past states.

    Parameters
    ----------
    path : str
        A netCDF file or zarr store holding one ensemble variable.
    history : int
        States in the input window: every trajectory needs ``history + 1`` times.

    Returns
    -------
    xarray.DataArray
        The ensemble, loaded, with finite values and a uniform, numeric ``time`` coord.

    Raises
    ------
    FileNotFoundError, ValueError
        Nothing at ``path``; an unreadable file, another layout, no ``time`` coord, a
        non-numeric one (dates or durations) or a non-uniform one, too few times, or
        NaN/Inf values or parameters.
    """
    from .data import ensemble_params, load_ensemble, uniform_step

    data = load_ensemble(path)
    if "time" not in data.coords:
        raise ValueError(f"{path} has no time coordinate; slift train takes the step dt from it")
    check_numeric_time(data["time"], path, "train")
    n_times = data.sizes["time"]
    if n_times < history + 1:
        raise ValueError(
            f"{path} has {n_times} time step(s); training with --history {history} needs "
            f"at least {history + 1} per trajectory"
        )
    uniform_step(data["time"].values, f"{path} time")
    if not np.isfinite(data.values).all():
        raise ValueError(
            f"{path} holds NaN or Inf (first at {_first_nonfinite(data.values)}); drop or "
            "repair those trajectories first"
        )
    mu = ensemble_params(data, str(path))
    if mu is not None and not torch.isfinite(mu).all():
        raise ValueError(f"{path} has NaN or Inf physics parameters (mu_* coords)")
    return data


def _time_step(data: xr.DataArray, path: str, method: str) -> float:
    """The stepper's ``dt``: the step of ``data``'s time coord, or nan when it counts steps.

    A time coord marked as a step count (``long_name`` ``"step"``, as ``slift sample``
    writes for a stepper without a physical step; see
    :func:`slift_plugin.data.ensemble.time_counts_steps`) has no physical step: the stepper is
    trained with ``dt = nan`` and its samples count time in steps. DICE integrates an SDE
    in physical time and is refused such data.
    """
    from .data import uniform_step
    from .data.ensemble import time_counts_steps

    dt = uniform_step(data["time"].values, f"{path} time")
    if not time_counts_steps(data):
        return dt
    if method == "dice":
        raise ValueError(
            f"--method dice integrates in physical time, but {path}'s time coord counts steps "
            "(long_name 'step'): it has no physical dt; give the file a time coord in "
            "physical time, or use another --method"
        )
    return math.nan


def _backbone_kind(choice: str, data: xr.DataArray, path: str) -> str:
    """The backbone for ``data``: ``choice``, or by its dims for ``auto``; refused when it
    does not fit (an MLP takes vectors, an operator fields)."""
    grid = tuple(data.dims[3:])
    if choice == "auto":
        return "fno" if grid else "mlp"
    if choice == "mlp" and grid:
        raise ValueError(
            f"--backbone mlp takes vector data with dims (sample, time, channel); {path} has "
            f"the grid dims {grid}: use --backbone fno, tfno or uno"
        )
    if choice != "mlp" and not grid:
        raise ValueError(
            f"--backbone {choice} takes fields with grid dims after channel (sample, time, "
            f"channel, x, ...); {path} holds vectors (sample, time, channel): use --backbone mlp"
        )
    return choice


# -- the stepper --------------------------------------------------------------------------------
def _n_modes(given: list[int] | None, grid: tuple[int, ...]) -> tuple[int, ...]:
    """Fourier modes per grid dim: ``--n-modes`` (one for all, or one per dim), else up to
    16 and at most half the points of each dim."""
    if given is None:
        return tuple(max(1, min(16, n // 2)) for n in grid)
    if len(given) == 1:
        return tuple(given) * len(grid)
    if len(given) != len(grid):
        raise ValueError(
            f"--n-modes takes one count or one per grid dim ({len(grid)}), got {len(given)}"
        )
    return tuple(given)


def _operator_sizes(args: argparse.Namespace, kind: str, grid: tuple[int, ...]) -> dict:
    """The neuraloperator constructor arguments of ``--backbone kind``."""
    modes, width, layers = _n_modes(args.n_modes, grid), args.hidden_channels, args.n_layers
    if kind != "uno":
        return {"n_modes": modes, "hidden_channels": width, "n_layers": layers}
    # UNO has no single n_modes: every layer gets the same modes, width and scale 1 (no
    # down/up-sampling), without horizontal skips, whose concatenations would change widths.
    return {
        "hidden_channels": width,
        "n_layers": layers,
        "uno_out_channels": [width] * layers,
        "uno_n_modes": [list(modes)] * layers,
        "uno_scalings": [[1.0] * len(grid)] * layers,
        "horizontal_skips_map": {},
        "lifting_channels": width,
        "projection_channels": width,
    }


def _network(
    args: argparse.Namespace,
    kind: str,
    data: xr.DataArray,
    *,
    history: int,
    label_dim: int,
    n_cond: int,
) -> nn.Module:
    """The lifted backbone: an :class:`~slift_plugin.MLP` or a neuraloperator operator."""
    channels, grid = data.sizes["channel"], tuple(data.shape[3:])
    if kind == "mlp":
        from .backbones import MLP

        return MLP(
            history * channels,
            channels,
            label_dim=label_dim,
            n_cond=n_cond,
            hidden=args.hidden,
            depth=args.depth,
        )
    from .adapters.neuralop import lifted_operator

    with contextlib.redirect_stdout(io.StringIO()):  # UNO prints its skip types
        return lifted_operator(
            kind,
            state_channels=channels,
            history=history,
            label_dim=label_dim,
            injection=args.injection,
            n_cond=n_cond,
            **_operator_sizes(args, kind, grid),
        )


def _dice(args: argparse.Namespace, kind: str, data: xr.DataArray, **common) -> nn.Module:
    """A DICE stepper: a potential MLP for vectors, an operator potential for fields."""
    from .backbones import PotentialMLP
    from .methods import DICE

    if args.history != 1:
        raise ValueError(f"--method dice is Markov: --history must be 1, got {args.history}")
    channels, n_params = data.sizes["channel"], common["n_params"]
    if kind == "mlp":
        potential = PotentialMLP(channels, n_params=n_params, hidden=args.hidden, depth=args.depth)
    else:
        from .adapters.neuralop import operator_potential

        sizes = _operator_sizes(args, kind, tuple(data.shape[3:]))
        with contextlib.redirect_stdout(io.StringIO()):
            potential = operator_potential(
                kind, state_channels=channels, n_params=n_params, **sizes
            )
    return DICE(
        potential, sigma=args.sigma, n_substeps=args.n_substeps, scheme=args.scheme, **common
    )


def _build_stepper(args: argparse.Namespace, kind: str, data: xr.DataArray, dt: float) -> nn.Module:
    """The untrained stepper of ``--method`` on backbone ``kind``, sized for ``data``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``slift train`` arguments.
    kind : str
        The backbone, one of :data:`BACKBONES` but ``auto``.
    data : xarray.DataArray
        The training ensemble (its channels, grid and parameters).
    dt : float
        The step of :func:`_time_step` (nan: the data's time counts steps).

    Returns
    -------
    torch.nn.Module
        The stepper; its weights are drawn from ``--seed``.
    """
    from .data import param_names
    from .methods import EnergyScoreLifting, FlowMatching, MeanRegression, StochasticLifting

    n_params = len(param_names(data))
    grid = (None,) * (data.ndim - 3)  # operators are resolution-agnostic: any grid
    common = {
        "state_shape": (data.sizes["channel"], *grid),
        "n_params": n_params,
        "dt": dt,
    }
    net = partial(_network, args, kind, data, n_cond=n_params)
    h, method = args.history, args.method
    # Initial weights from --seed, without touching the caller's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        if method == "dice":
            return _dice(args, kind, data, **common)
        if method == "cfm":  # the velocity sees the window and the flow point z, and s
            velocity = _network(args, kind, data, history=h + 1, label_dim=0, n_cond=n_params + 1)
            return FlowMatching(velocity, history=h, n_euler=args.n_euler, seed=args.seed, **common)
        if method == "mse":
            return MeanRegression(net(history=h, label_dim=0), history=h, **common)
        backbone = net(history=h, label_dim=args.label_dim)
        if method == "es":
            return EnergyScoreLifting(
                backbone, history=h, n_members=args.n_members, seed=args.seed, **common
            )
        return StochasticLifting(backbone, history=h, **common)


def _training_set(args: argparse.Namespace, stepper: nn.Module, data: xr.DataArray) -> object:
    """What ``fit`` trains ``stepper`` on: transitions (fixed labels for SL) or snapshots.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``slift train`` arguments (``method``, ``history``, ``seed``).
    stepper : torch.nn.Module
        The stepper of :func:`_build_stepper`.
    data : xarray.DataArray
        The training ensemble.

    Returns
    -------
    object
        A :class:`~slift_plugin.TransitionDataset` or, for DICE, a
        :class:`~slift_plugin.SnapshotDataset`.
    """
    from .data import SnapshotDataset, TransitionDataset

    if args.method == "dice":
        return SnapshotDataset.from_xarray(data)
    labels = stepper.fixed_labels(args.seed, tuple(data.shape[3:])) if args.method == "sl" else None
    return TransitionDataset.from_xarray(data, history=args.history, labels=labels)


# -- the checkpoint folder ----------------------------------------------------------------------
def _checkpoint_dir(out: str, *, resume: bool, overwrite: bool, data: str) -> tuple[Path, bool]:
    """The checkpoint folder ``out``, if this run may train into it.

    Parameters
    ----------
    out : str
        ``--out``.
    resume, overwrite : bool
        ``--resume`` (continue ``out/last.pt``) and ``--overwrite`` (start afresh over it).
    data : str
        The training data, which ``out`` must not be or lie in.

    Returns
    -------
    path : pathlib.Path
        The folder.
    resumable : bool
        Whether it holds a checkpoint that ``--resume`` continues.

    Raises
    ------
    ValueError
        ``out`` is the data or inside it, is a file, cannot be written, holds a checkpoint
        without ``--resume`` or ``--overwrite``, or is a non-empty folder without one and
        without ``--overwrite`` (with ``--resume`` too: there is nothing to resume there,
        and a fresh run does not write into an unrelated folder).
    """
    from .train import CHECKPOINT_NAME

    path = Path(out)
    if is_or_is_inside(path, Path(data)):
        raise ValueError(
            f"--out {out} is the input {data} or inside it; refusing to write checkpoints "
            "there (--overwrite does not change this)"
        )
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; expected a checkpoint folder")
    held = os.path.lexists(path / CHECKPOINT_NAME)
    if resume and held:
        check_writable(path, out)
        return path, True
    if resume and path.is_dir() and any(path.iterdir()):
        shown = sorted(p.name for p in path.iterdir())
        shown = ", ".join(shown[:4]) + (", ..." if len(shown) > 4 else "")
        raise ValueError(
            f"--out {out} holds no checkpoint ({CHECKPOINT_NAME}) to resume, and is a "
            f"non-empty folder (holds {shown}); refusing to start a run in it: choose "
            "another --out, or pass --overwrite instead of --resume to write into it"
        )
    if held and not overwrite:
        raise ValueError(
            f"--out {out} holds a checkpoint ({CHECKPOINT_NAME}); pass --resume to continue "
            "its training, or --overwrite to start afresh over it"
        )
    return check_output_dir(out, overwrite=overwrite), False


def _remove_if_new_and_empty(path: Path, existed: bool) -> None:
    """Undo the folder fit() created for a run that failed before writing anything."""
    if not existed and path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def _summary(args, kind, data, n_examples, dt, result) -> str:
    """One line on what was trained, on what, for how long, to what loss."""
    examples = (
        f"populations at {data.sizes['time']} times"
        if args.method == "dice"
        else f"{n_examples} transitions"
    )
    done = result.resumed_from_epoch
    start = f" (resumed after epoch {done})" if done else ""
    step = "none (time counts steps)" if math.isnan(dt) else f"{dt:g}"
    return (
        f"trained {args.method} on a {kind} backbone: {examples}, dt {step}, "
        f"{result.epochs} epochs{start}, final loss {result.final_loss:.4g}"
    )


# -- options a run does not use ------------------------------------------------------------------
_OPERATORS = ("fno", "tfno", "uno")
_LABELLED = ("sl", "es")
#: option dest -> (the methods, the backbones that use it); None: every one.
_USED_BY: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...] | None]] = {
    "label_dim": (_LABELLED, None),
    "hidden": (None, ("mlp",)),
    "depth": (None, ("mlp",)),
    "n_modes": (None, _OPERATORS),
    "hidden_channels": (None, _OPERATORS),
    "n_layers": (None, _OPERATORS),
    "injection": (_LABELLED, _OPERATORS),
    "n_euler": (("cfm",), None),
    "n_members": (("es",), None),
    "sigma": (("dice",), None),
    "n_substeps": (("dice",), None),
    "scheme": (("dice",), None),
}


class _Given(argparse.Action):
    """Stores the value, as ``store`` does, and notes that the option was given.

    The parser keeps the real default (so that ``--help`` shows it); ``args.given`` tells
    a default apart from an option given explicitly, which is refused when the run does
    not use it (:func:`_refuse_unused`).
    """

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = (*getattr(namespace, "given", ()), self.dest)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _names(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def _refuse_unused(args: argparse.Namespace, kind: str | None = None) -> None:
    """Refuse an option given explicitly that ``--method`` (or backbone ``kind``) ignores.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``slift train`` arguments (``given``: the options given explicitly).
    kind : str or None
        The backbone once known (``--backbone auto`` picks it by the data); None checks
        the method only.

    Raises
    ------
    ValueError
        Naming the first such option, and what uses it.
    """
    for dest in getattr(args, "given", ()):
        methods, backbones = _USED_BY.get(dest, (None, None))
        if methods is not None and args.method not in methods:
            raise ValueError(
                f"{_flag(dest)} applies to --method {_names(methods)} only; --method "
                f"{args.method} does not use it: drop it"
            )
        if kind is not None and backbones is not None and kind not in backbones:
            chosen = f"--backbone {kind}"
            if args.backbone == "auto":
                chosen = f"the {kind} backbone (--backbone auto, by the dims of {args.data})"
            raise ValueError(
                f"{_flag(dest)} applies to the {_names(backbones)} backbone only; {chosen} "
                "does not use it: drop it"
            )


# -- the command --------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from .train import fit

    out, resumable = _checkpoint_dir(
        args.out, resume=args.resume, overwrite=args.overwrite, data=args.data
    )
    _refuse_unused(args)
    data = _load_training_data(args.data, args.history)
    kind = _backbone_kind(args.backbone, data, args.data)
    _refuse_unused(args, kind)
    dt = _time_step(data, args.data, args.method)
    stepper = _build_stepper(args, kind, data, dt)
    dataset = _training_set(args, stepper, data)
    if args.resume and not resumable:
        note = f"slift train: no checkpoint in {args.out} to resume; starting afresh"
        print(note, file=sys.stderr, flush=True)
    existed = out.exists()
    try:
        result = fit(
            stepper,
            dataset,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            device=args.device,
            checkpoint_dir=out,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=not args.quiet,
            description=f"train {args.method}-{kind}",
        )
    finally:
        _remove_if_new_and_empty(out, existed)
    print(_summary(args, kind, data, len(dataset), stepper.dt, result))
    print(f"wrote {result.checkpoint}")
    return 0


# -- the parser ---------------------------------------------------------------------------------
_DESCRIPTION = """Train a stepper on the trajectories of an ensemble file, as slift generate writes
it: dims (sample, time, channel, *grid), a uniform numeric time coord (its step is dt, in
the data's time unit), optional mu_<name> coords along sample (physics parameters the
stepper is then conditioned on).

time: dates or durations (a netCDF time with CF units such as "hours since 2000-01-01",
which xarray decodes) are refused; store the time as plain numbers in a stated unit. A
time coord that counts steps (long_name "step", as slift sample writes for such a model)
has no physical step: the stepper is trained with dt = nan and its samples count time in
steps; --method dice, which integrates in physical time, refuses such data.

Options that the chosen --method or backbone does not use (e.g. --n-euler without
--method cfm, --hidden with an operator backbone) are refused, not ignored; each option's
help names what uses it.

The checkpoint is --out/last.pt, written atomically every --checkpoint-every epochs and at
the end; --resume continues it (with the same data and settings), slift sample reads it."""

_EXAMPLES = """examples:
  slift train ou.nc --out ckpt                          # SL on an MLP, vectors
  slift train ac.nc --out ckpt --backbone fno --n-modes 16 --injection noise_field
  slift train ou.nc --out ckpt --method cfm --n-euler 20
  slift train ou.nc --out ckpt --resume                 # continue an interrupted run"""


def _add_model_options(train: argparse.ArgumentParser) -> None:
    """The method, the backbone and their sizes; each option's help names what uses it."""
    model = train.add_argument_group(
        "model", "options that the chosen --method or backbone does not use are refused"
    )
    model.add_argument("--method", choices=METHODS, default="sl", help=_METHOD_HELP)
    model.add_argument(
        "--backbone",
        choices=BACKBONES,
        default="auto",
        help="network: mlp for vector data (sample, time, channel); fno, tfno or uno "
        "(neuraloperator) for fields (sample, time, channel, *grid); auto picks by the dims",
    )
    given = partial(model.add_argument, action=_Given)
    given("--label-dim", type=positive_int, default=32, help="sl, es: label size per point")
    model.add_argument(
        "--history", type=positive_int, default=1, help="past states in the input window"
    )
    given("--hidden", type=positive_int, default=128, help="mlp backbone: width")
    given("--depth", type=positive_int, default=3, help="mlp backbone: hidden layers")
    given(
        "--n-modes",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="M",
        help="operator backbones (fno, tfno, uno): Fourier modes, one count for every grid "
        "dim or one per dim (default: min(16, points // 2) per dim)",
    )
    given("--hidden-channels", type=positive_int, default=32, help="operator backbones: width")
    given("--n-layers", type=positive_int, default=4, help="operator backbones: blocks")
    given(
        "--injection",
        choices=("channels", "noise_field", "embedding"),
        default="channels",
        help="sl, es on an operator backbone: how the operator takes the label: constant "
        "channels, a white-noise field of the state's grid, or an embedding added in every "
        "block",
    )
    given("--n-euler", type=positive_int, default=20, help="cfm: Euler steps per output step")
    given(
        "--n-members", type=positive_int, default=2, help="es: samples per transition in the loss"
    )
    given("--sigma", type=_nonnegative_float, default=0.0, help="dice: known diffusion (0: none)")
    given("--n-substeps", type=positive_int, default=4, help="dice: sub-steps per step")
    given(
        "--scheme",
        choices=SCHEMES,
        default="euler",
        help="dice: integrator of a sub-step (heun: two gradient evaluations, second order)",
    )


def _add_fit_options(train: argparse.ArgumentParser) -> None:
    opt = train.add_argument_group("training")
    opt.add_argument("--epochs", type=positive_int, default=100, help="passes over the data")
    opt.add_argument("--batch-size", type=positive_int, default=64, help="examples per step")
    opt.add_argument(
        "--lr", type=_positive_float, default=1e-3, help="AdamW learning rate (cosine decay)"
    )
    opt.add_argument(
        "--weight-decay", type=_nonnegative_float, default=1e-4, help="AdamW weight decay"
    )
    opt.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seeds the initial weights, the labels, the training noise and the shuffling",
    )
    opt.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:i]")
    opt.add_argument(
        "--checkpoint-every", type=positive_int, default=10, help="epochs between checkpoints"
    )


def add_train_parser(sub: argparse._SubParsersAction, formatter: type) -> None:
    """Register ``slift train`` on the sub-command set ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The ``slift`` sub-parsers.
    formatter : type
        The help formatter class of every sub-command.
    """
    train = sub.add_parser(
        "train",
        help="train a stepper on trajectories in a netCDF file or zarr store",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=formatter,
    )
    train.add_argument(
        "data",
        help="netCDF file or zarr store: dims (sample, time, channel, *grid), a uniform "
        "numeric time coord (gives dt; one that counts steps gives dt = nan), optional "
        "mu_<name> coords along sample (physics parameters)",
    )
    train.add_argument("--out", required=True, help="checkpoint folder (gets last.pt)")
    again = train.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue --out/last.pt (same data and settings); without one, start afresh "
        "in a new or empty --out (a non-empty folder is refused)",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help=OVERWRITE_DIR + "; an existing last.pt is trained afresh",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_options(train)
    _add_fit_options(train)
    train.set_defaults(run=_train, given=())
