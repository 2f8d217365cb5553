"""``slift sample``: roll a trained stepper out into an ensemble file.

The stepper is rebuilt from its checkpoint (``slift train``'s ``CKPT_DIR/last.pt``, or any
file of :func:`slift_plugin.save_stepper`). The initial states come from an ensemble file:
the last state(s) of every sample of ``--x0 FILE``, or the state(s) at ``--time-index K``
of ``--data FILE`` (a stepper with a history of ``h`` states takes the ``h`` states up to
that time). The output is a zarr store (``.zarr``: streamed chunk by chunk, and a rerun of
the same command after an interruption resumes it) or a netCDF file (``.nc``: written
atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ._cli_arguments import (
    check_numeric_time,
    check_output_file,
    check_writable,
    device,
    positive_int,
    seed,
)

__all__ = ["SUFFIXES", "add_sample_parser"]

SUFFIXES = (".zarr", ".nc")


# -- the output ---------------------------------------------------------------------------------
def _related(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one path or one lies inside the other (a folder)."""
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _is_zarr_store(path: Path) -> bool:
    """Whether ``path`` is a zarr group (v3 or v2 metadata at its root)."""
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def _check_output(out: str, *, overwrite: bool, inputs: list[str]) -> tuple[Path, bool]:
    """The output ``out`` if the command may write it, and whether to delete it first.

    Parameters
    ----------
    out : str
        ``--out``: a path ending in one of :data:`SUFFIXES`.
    overwrite : bool
        ``--overwrite``: replace an existing output.
    inputs : list of str
        The command's inputs, which ``out`` must neither be, hold nor lie in.

    Returns
    -------
    path : pathlib.Path
        The output.
    replace : bool
        True when an existing zarr store is to be deleted before sampling starts.

    Raises
    ------
    ValueError
        Another suffix; ``out`` is related to an input; it exists without ``--overwrite``
        (a zarr store written by ``slift sample`` is resumed instead); or it is a folder
        that is not a zarr store.
    """
    path = Path(out)
    if path.suffix not in SUFFIXES:
        raise ValueError(
            f"--out {out} must end in .zarr (a zarr store, written chunk by chunk) or .nc "
            "(a netCDF file)"
        )
    if path.suffix == ".nc":
        return check_output_file(out, overwrite=overwrite, inputs=inputs), False
    for source in inputs:
        if _related(path, Path(source)):
            raise ValueError(
                f"--out {out} is, holds or lies in the input {source}; refusing to write "
                "there (--overwrite does not change this)"
            )
    if not os.path.lexists(path):
        check_writable(path.parent, out)
        return path, False
    if not _is_zarr_store(path) or path.is_symlink():
        raise ValueError(
            f"--out {out} exists and is not a zarr store; refusing to replace it, choose "
            "another --out"
        )
    check_writable(path, out)
    # Without --overwrite a store is handed to rollout(), which resumes the same
    # generation and refuses any other one, naming what differs.
    return path, overwrite


# -- the initial states -------------------------------------------------------------------------
def _index(value: int, size: int, flag: str, what: str) -> int:
    """``value`` as an index in ``[0, size)`` (negative ones count from the end)."""
    if not -size <= value < size:
        raise ValueError(f"{flag} {value} is out of range: {what} has {size} (0 to {size - 1})")
    return value % size


def _initial_ensemble(args: argparse.Namespace) -> tuple[xr.DataArray, int]:
    """The ensemble the initial states come from, and the index of the start time.

    Parameters
    ----------
    args : argparse.Namespace
        ``x0`` or ``data`` (a file), ``time_index`` and ``sample_index``.

    Returns
    -------
    source : xarray.DataArray
        The chosen samples, every time up to the start time.
    k : int
        The index of the start time in ``source``'s times.

    Raises
    ------
    FileNotFoundError, ValueError
        The file is missing or not an ensemble, or an index is out of range.
    """
    from .data import load_ensemble

    path = args.x0 if args.x0 is not None else args.data
    source = load_ensemble(path)
    n_times = source.sizes["time"]
    if args.x0 is not None:
        k = n_times - 1
    else:
        k = _index(args.time_index, n_times, "--time-index", f"{path}'s time axis")
    if args.sample_index is not None:
        i = _index(args.sample_index, source.sizes["sample"], "--sample-index", f"{path}")
        source = source.isel(sample=[i])
    return source.isel(time=slice(0, k + 1)), k


def _windows(stepper: torch.nn.Module, source: xr.DataArray, k: int, path: str) -> torch.Tensor:
    """``(samples, history, *state)``: each sample's ``history`` states up to index ``k``."""
    h = stepper.history
    if k + 1 < h:
        raise ValueError(
            f"the model takes a history of {h} states, but {path} has only {k + 1} up to the "
            f"start time (pass a later --time-index)"
        )
    values = np.asarray(source.isel(time=slice(k + 1 - h, k + 1)).values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"the initial states taken from {path} hold NaN or Inf")
    return torch.from_numpy(values)


def _params(stepper: torch.nn.Module, source: xr.DataArray, path: str) -> torch.Tensor | None:
    """The ``(samples, n_params)`` physics parameters of the initial states, if any."""
    from .data import ensemble_params, param_names

    names = param_names(source)
    if len(names) != stepper.n_params:
        raise ValueError(
            f"the model takes {stepper.n_params} physics parameter(s), but {path} has "
            f"{len(names)} (mu_<name> coords: {names})"
        )
    return ensemble_params(source, path) if names else None


def _tiled(values: torch.Tensor | None, n_samples: int | None) -> torch.Tensor | None:
    """``values`` repeated to ``n_samples`` rows: sample ``i`` starts from row ``i % S``."""
    if values is None or n_samples is None or values.shape[0] in (1, n_samples):
        return values
    if n_samples % values.shape[0]:
        raise ValueError(
            f"--n-samples {n_samples} is not a multiple of the {values.shape[0]} initial "
            "states (pass a multiple, or --sample-index to start all from one)"
        )
    return values.repeat(n_samples // values.shape[0], *([1] * (values.ndim - 1)))


def _start_time(stepper: torch.nn.Module, source: xr.DataArray, k: int, path: str) -> float:
    """``t0``: the time of the start states (0 without a ``time`` coord), in the model's unit.

    Parameters
    ----------
    stepper : torch.nn.Module
        The model; ``dt = nan`` when it counts time in steps (trained on such data).
    source : xarray.DataArray
        The ensemble the start states come from.
    k : int
        The index of the start time.
    path : str
        The file, as the messages name it.

    Returns
    -------
    float
        ``source``'s time at ``k``.

    Raises
    ------
    ValueError
        The time holds dates or durations (not numbers), or it counts steps while the model
        steps in physical time, or the reverse: the output times would mix the two.
    """
    from .data.ensemble import time_counts_steps

    if "time" not in source.coords:
        return 0.0
    check_numeric_time(source["time"], path, "sample")
    counts = time_counts_steps(source)
    if counts is False and math.isnan(stepper.dt):
        raise ValueError(
            f"the model has no physical time step (it was trained on a time that counts "
            f"steps), but {path}'s time coord is physical time (long_name 'time'): the output "
            "times would mix the two; start it from an ensemble whose time counts steps"
        )
    if counts and not math.isnan(stepper.dt):
        raise ValueError(
            f"the model steps dt = {stepper.dt:g} in physical time, but {path}'s time coord "
            "counts steps (long_name 'step'): the output times would mix the two; start it "
            "from an ensemble in physical time"
        )
    return float(source["time"].values[k])


def _coords(source: xr.DataArray) -> dict[str, np.ndarray]:
    """The channel and grid coords of the output: the source's, or positions."""
    return {
        dim: source[dim].values if dim in source.coords else np.arange(source.sizes[dim])
        for dim in source.dims[2:]
    }


# -- the command --------------------------------------------------------------------------------
def _checkpoint_file(path: str) -> Path:
    """``path``, or ``path/last.pt`` for a checkpoint folder of ``slift train``."""
    from .train import CHECKPOINT_NAME

    return Path(path) / CHECKPOINT_NAME if Path(path).is_dir() else Path(path)


def _set_n_euler(stepper: torch.nn.Module, n_euler: int, path: Path) -> None:
    """Sample a flow-matching stepper with ``n_euler`` Euler steps; refuse any other."""
    if not hasattr(type(stepper), "n_euler"):
        raise ValueError(
            f"--n-euler applies to flow-matching models; {path} holds a {type(stepper).__name__}"
        )
    stepper.n_euler = n_euler


@contextlib.contextmanager
def _replacing(out: Path, replace: bool) -> Iterator[None]:
    """Move an old store aside while the new one is written; put it back if that fails.

    The aside copy is a temporary sibling (:func:`slift_plugin.data.io.sibling_temp`), so a
    killed run leaves an orphan the next write of ``out`` removes, never a lost store.
    """
    if not replace:
        yield
        return
    from .data.io import sibling_temp

    aside = sibling_temp(out)
    os.replace(out, aside)
    try:
        yield
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        os.replace(aside, out)
        raise
    shutil.rmtree(aside)


def _sample(args: argparse.Namespace) -> int:
    from .checkpoint import load_stepper
    from .data import param_names, save_netcdf
    from .rollout import rollout

    path = args.x0 if args.x0 is not None else args.data
    if args.x0 is not None and args.time_index is not None:
        raise ValueError("--time-index picks a time of --data; --x0 starts from its last time")
    args.time_index = 0 if args.time_index is None else args.time_index
    inputs = [args.checkpoint, path]
    out, replace = _check_output(args.out, overwrite=args.overwrite, inputs=inputs)
    source, k = _initial_ensemble(args)
    ckpt = _checkpoint_file(args.checkpoint)
    with contextlib.redirect_stdout(io.StringIO()):  # neuraloperator's UNO prints when built
        stepper = load_stepper(ckpt, map_location="cpu")
    if args.n_euler is not None:
        _set_n_euler(stepper, args.n_euler, ckpt)
    t0 = _start_time(stepper, source, k, path)
    x0 = _tiled(_windows(stepper, source, k, path), args.n_samples)
    mu = _tiled(_params(stepper, source, path), args.n_samples)
    if mu is not None and mu.shape[0] == 1:
        mu = mu[0]  # one start shared by every sample: so is its mu
    with _replacing(out, replace):
        ens = rollout(
            stepper,
            x0,
            args.n_steps,
            args.n_samples,
            mu=mu,
            seed=args.seed,
            chunk_size=args.chunk_size,
            device=args.device,
            t0=t0,
            coords=_coords(source),
            param_names=param_names(source) or None,
            progress=not args.quiet,
            out=out if out.suffix == ".zarr" else None,
        )
    if out.suffix == ".nc":  # checked again: the file may have appeared meanwhile
        save_netcdf(ens, check_output_file(args.out, overwrite=args.overwrite, inputs=inputs))
    print(f"wrote {args.out}: {dict(ens.sizes)}")
    return 0


# -- the parser ---------------------------------------------------------------------------------
_DESCRIPTION = """Roll a trained stepper out into an ensemble file. The stepper is rebuilt from its
checkpoint (slift train's --out folder or its last.pt). The initial states are the last
state of every sample of --x0 FILE, or the states at --time-index K of --data FILE (a
model with a history of h states takes the h states up to that time); physics parameters
come from the file's mu_<name> coords. A .zarr output is written chunk by chunk, and
rerunning the same command after an interruption resumes it; a .nc output is written
atomically when done.

The output's time starts at the file's time of the initial states (0 if it has none) and
advances by the model's dt; a model trained on a time that counts steps (dt = nan) counts
steps (long_name "step"). The file's time must be plain numbers (dates or durations, as
xarray decodes CF units such as "hours since ...", are refused), and must count steps if
and only if the model does."""

_EXAMPLES = """examples:
  slift sample ckpt --data ou.nc --n-steps 10 --n-samples 4096 --out ens.nc
  slift sample ckpt --x0 start.nc --n-steps 100 --out ens.zarr --chunk-size 4096
  slift evaluate ens.nc reference.nc                    # score it"""


def _add_start_options(sample: argparse.ArgumentParser) -> None:
    """Where the initial states come from: ``--x0`` or ``--data`` with its indices."""
    start = sample.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--x0", metavar="FILE", help="ensemble file whose samples' last states start the rollout"
    )
    start.add_argument("--data", metavar="FILE", help="ensemble file to take --time-index from")
    sample.add_argument(
        "--time-index",
        type=int,
        default=None,
        metavar="K",
        help="with --data: start from its states at time index K; negative counts from the "
        "end (default: 0, the first time)",
    )
    sample.add_argument(
        "--sample-index",
        type=int,
        default=None,
        metavar="I",
        help="start every trajectory from sample I only (default: every sample of the file)",
    )


def add_sample_parser(sub: argparse._SubParsersAction, formatter: type) -> None:
    """Register ``slift sample`` on the sub-command set ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The ``slift`` sub-parsers.
    formatter : type
        The help formatter class of every sub-command.
    """
    sample = sub.add_parser(
        "sample",
        help="roll a trained stepper out into an ensemble (zarr or netCDF)",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=formatter,
    )
    sample.add_argument("checkpoint", help="checkpoint file, or a slift train folder (its last.pt)")
    sample.add_argument(
        "--out", required=True, help="output: a .zarr store (streamed) or a .nc file (netCDF)"
    )
    sample.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file or zarr store (an input is never replaced)",
    )
    _add_start_options(sample)
    sample.add_argument("--n-steps", type=positive_int, required=True, help="steps to generate")
    sample.add_argument(
        "--n-samples",
        type=positive_int,
        default=None,
        help="trajectories; a multiple of the initial states, sample i starting from state "
        "i mod their number (default: one per initial state)",
    )
    sample.add_argument("--seed", type=seed, default=0, help="seed of all the sampling noise")
    sample.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:i]")
    sample.add_argument(
        "--chunk-size", type=positive_int, default=1024, help="samples generated together"
    )
    sample.add_argument(
        "--n-euler",
        type=positive_int,
        default=None,
        help="flow-matching (cfm) models only, refused for others: Euler steps per output "
        "step (default: as trained)",
    )
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.set_defaults(run=_sample)
