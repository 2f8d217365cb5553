"""Argument types of the ``slift`` sub-commands, and the checks on the files they name.

:mod:`.cli` parses ``demo``, ``generate``, ``evaluate`` and ``bench`` and registers
:mod:`.cli_train` and :mod:`.cli_sample`, which parse ``train`` and ``sample``; all of them
take the same positive integers, seeds and devices and refuse an ``--out`` by the same
rules (and ``train`` and ``sample`` an input whose time is not plain numbers). Those shared
pieces live here, below the three and importing none of them, so that no sub-command
module reaches into another's private names and :mod:`.cli_train` and :mod:`.cli_sample`
never import :mod:`.cli`, which imports them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

# Seeds end up in netCDF attributes and torch generators: both need a signed 64-bit int.
_SEED_LIMIT = 2**63


# -- argument types: argparse reports an ArgumentTypeError as "argument --x: <message>" ------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < _SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**63), got {text!r}")
    return value


def device(text: str) -> str:
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):  # torch's parse error is a RuntimeError
        raise argparse.ArgumentTypeError(
            f"expected a torch device such as cpu, cuda or cuda:1, got {text!r}"
        ) from None
    return text


# -- output checks: run before any expensive work ----------------------------------------------
def is_or_is_inside(out: Path, source: Path) -> bool:
    """Whether writing ``out`` would replace ``source`` or write into it (a zarr folder)."""
    out_real, source_real = Path(os.path.realpath(out)), Path(os.path.realpath(source))
    if out_real == source_real:
        return True
    # hard links and case-insensitive file systems: same file under another name
    if out.exists() and source.exists() and os.path.samefile(out, source):
        return True
    return source_real.is_dir() and out_real.is_relative_to(source_real)


def check_writable(directory: Path, out: str) -> None:
    """Refuse ``directory`` when it, or the folder that would hold it, cannot be written.

    A real probe file, not ``os.access``: access() says yes to root on any permission bits
    and cannot see every read-only mount.
    """
    existing = directory.absolute()
    while not os.path.lexists(existing):  # missing folders are created by the write
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {out} is under {existing}, which is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".slift-write-check.", dir=existing)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot write in {existing} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(out: str, *, overwrite: bool, inputs: Sequence[str] = ()) -> Path:
    """The output file ``out`` if the command may write it; ValueError naming why not."""
    path = Path(out)
    for source in inputs:
        if is_or_is_inside(path, Path(source)):
            raise ValueError(
                f"--out {out} is the input {source}; refusing to overwrite an input "
                "(--overwrite does not change this)"
            )
    if path.is_dir() or out.endswith(("/", os.sep)):
        raise ValueError(f"--out {out} is a directory; expected a file path")
    if os.path.lexists(path):
        if not path.is_file():  # /dev/null, a fifo, a dangling link: never replace those
            raise ValueError(f"--out {out} exists and is not a regular file")
        if not overwrite:
            raise ValueError(f"--out {out} already exists; pass --overwrite to replace it")
    check_writable(path.parent, out)
    return path


def check_output_dir(out: str, *, overwrite: bool) -> Path:
    """The output folder ``out`` if the command may write into it; ValueError otherwise."""
    path = Path(out)
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; expected an output folder")
    if path.is_dir() and not overwrite:
        held = sorted(p.name for p in path.iterdir())
        if held:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise ValueError(
                f"--out {out} is a non-empty folder (holds {shown}); pass --overwrite to "
                "replace the files of the same names in it, or choose another --out"
            )
    check_writable(path, out)
    return path


OVERWRITE_DIR = (
    "write into a non-empty --out folder, replacing the files of the same names "
    "(other files are left alone)"
)


# -- input checks -----------------------------------------------------------------------------
def check_numeric_time(time: xr.DataArray, path: str, command: str) -> None:
    """Refuse a ``time`` coord that is not plain numbers: dates, durations or cftime objects.

    xarray decodes a netCDF time with CF units (``"hours since 2000-01-01"``, or a duration
    unit with a timedelta ``dtype`` attribute) into datetime64 or timedelta64; its step as a
    float would be in nanoseconds, and a datetime as a float the nanoseconds since 1970.

    Parameters
    ----------
    time : xarray.DataArray
        The ``time`` coord of the ensemble at ``path``.
    path : str
        The file, as the message names it.
    command : str
        ``"train"`` or ``"sample"``, as the message names it.

    Raises
    ------
    ValueError
        ``time`` does not hold integers or floats.
    """
    if time.dtype.kind in "iuf":
        return
    kind = {"M": "dates (datetime64)", "m": "durations (timedelta64)"}.get(
        time.dtype.kind, f"non-numeric values ({time.dtype}, e.g. cftime dates)"
    )
    units = time.encoding.get("units")
    decoded = f", decoded by xarray from the CF units {units!r}" if units else ""
    raise ValueError(
        f"{path}: its time coord holds {kind}{decoded}; slift {command} needs a numeric "
        "time whose step is dt in the data's time unit: open the file with "
        "xarray.open_dataset(path, decode_times=False, decode_timedelta=False), replace "
        "time.attrs by {'long_name': 'time', 'units': 'hours'} or another plain unit (no "
        "'since', no 'dtype' attribute), and save it again"
    )
