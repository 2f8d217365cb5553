"""Atomic file IO: ensembles to and from netCDF (or zarr), and crash-safe writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import xarray as xr

from .ensemble import check_ensemble

__all__ = ["atomic_write", "load_ensemble", "save_netcdf"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file through a temporary file renamed into place.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; missing parent directories are created.
    write : callable
        ``write(tmp_path)`` writes the content to ``tmp_path`` (a sibling of ``path``).

    Returns
    -------
    pathlib.Path
        ``path``, which now holds the complete content with the umask-derived mode.

    Raises
    ------
    BaseException
        Whatever ``write`` (or the file system) raises; the temporary file is removed and
        ``path`` is left as it was, so no partial file survives a failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:  # the data must be on disk before the rename
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_netcdf(obj: xr.DataArray | xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a DataArray or Dataset to netCDF (h5netcdf engine) atomically.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        What to store.
    path : str or os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic_write(path, lambda tmp: obj.to_netcdf(tmp, engine="h5netcdf"))


def load_ensemble(path: str | os.PathLike) -> xr.DataArray:
    """Read an ensemble written by :func:`save_netcdf` (netCDF) or to zarr.

    Parameters
    ----------
    path : str or os.PathLike
        A netCDF file, or a zarr directory, holding one ensemble variable.

    Returns
    -------
    xarray.DataArray
        The ensemble, loaded into memory, dims ``("sample", "time", "channel", *grid)``.

    Raises
    ------
    FileNotFoundError
        Nothing exists at ``path``.
    ValueError
        The file cannot be read, holds more or fewer than one variable, or breaks the
        ensemble layout.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ensemble file at {path}")
    try:
        if path.is_dir():
            ds = xr.open_zarr(path)
        else:
            ds = xr.open_dataset(path, engine="h5netcdf")
    except Exception as exc:
        raise ValueError(f"could not read an ensemble from {path}: {exc}") from exc
    if isinstance(ds, xr.Dataset):
        if len(ds.data_vars) != 1:
            raise ValueError(f"{path} holds {list(ds.data_vars)}; expected one ensemble variable")
        ds = ds[next(iter(ds.data_vars))]
    return check_ensemble(ds.load(), str(path))
