"""Atomic file IO: ensembles to and from netCDF (or zarr), and crash-safe writes.

Temporary files and directories are siblings of their target named
``.<target name>.<host>_<pid>_<random>.tmp``: a process killed before its rename leaves
one behind, and the next write of the same target on the same host removes those whose
process is gone (:func:`remove_orphan_temps`), never another target's nor a live one's.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

import xarray as xr

from .ensemble import check_ensemble

__all__ = [
    "CONVENTIONS",
    "atomic_write",
    "load_ensemble",
    "process_is_gone",
    "remove_orphan_temps",
    "save_netcdf",
    "sibling_temp",
]


#: The ``Conventions`` attribute of every Dataset written by :func:`save_netcdf` (and of
#: the zarr stores of ``rollout(out=...)``).
CONVENTIONS = "CF-1.10"

# xarray's names for an unnamed DataArray (or one named like a coord) in a file: what
# DataArray.to_netcdf does, so that open_dataarray gives the name back.
_DATAARRAY_VARIABLE = "__xarray_dataarray_variable__"
_DATAARRAY_NAME = "__xarray_dataarray_name__"


def _host() -> str:
    """This host's name with anything but letters, digits and '-' replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def sibling_temp(path: Path) -> Path:
    """A fresh name for a temporary sibling of ``path`` (nothing is created).

    Parameters
    ----------
    path : pathlib.Path
        The target.

    Returns
    -------
    pathlib.Path
        ``<parent>/.<name>.<host>_<pid>_<16 hex digits>.tmp``.
    """
    return path.parent / f".{path.name}.{_host()}_{os.getpid()}_{secrets.token_hex(8)}.tmp"


def process_is_gone(pid: int, host: str) -> bool:
    """Whether process ``pid`` of ``host`` is known to have ended.

    Only a process of this host can be checked: for another host, for this very process
    and where the check is unavailable (not POSIX), the answer is False (maybe alive).

    Parameters
    ----------
    pid : int
        The process id.
    host : str
        The host it ran on, as ``socket.gethostname()`` named it there.

    Returns
    -------
    bool
        True when no process ``pid`` exists on this host.
    """
    if host != socket.gethostname() or pid <= 0 or pid == os.getpid() or os.name != "posix":
        return False  # pid <= 0 would address process groups; on Windows os.kill terminates
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def remove_orphan_temps(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by dead processes of this host.

    Only names made by :func:`sibling_temp` for this very target count; those of other
    hosts are left alone (their process cannot be checked from here).

    Parameters
    ----------
    path : pathlib.Path
        The target whose orphans to remove.

    Returns
    -------
    list of pathlib.Path
        The files and directories removed.
    """
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9-]+)_(?P<pid>[0-9]+)_[0-9a-f]{{16}}\.tmp"
    )
    if not path.parent.is_dir():
        return []
    removed = []
    for entry in path.parent.iterdir():
        found = pattern.fullmatch(entry.name)
        if not found or found["host"] != _host():
            continue
        if not process_is_gone(int(found["pid"]), socket.gethostname()):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file through a temporary file renamed into place.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; missing parent directories are created. Temporary files that
        earlier writes of ``path`` left when killed are removed first.
    write : callable
        ``write(tmp_path)`` writes the content to ``tmp_path`` (a sibling of ``path``).

    Returns
    -------
    pathlib.Path
        ``path``, which now holds the complete content. An existing file keeps its
        permission bits; a new one gets those of any new file (``0o666`` less the umask).

    Raises
    ------
    BaseException
        Whatever ``write`` (or the file system) raises; the temporary file is removed and
        ``path`` is left as it was, so no partial file survives a failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path)
    tmp = sibling_temp(path)
    # O_EXCL: never write through someone else's file; 0o666 is reduced by the umask by the
    # kernel, which gives a new file its usual mode without reading (or setting) the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            new_file_mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else new_file_mode
        write(tmp)
        with open(tmp, "rb+") as fh:  # the data must be on disk before the rename
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # after write(), which may have replaced the file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_netcdf(obj: xr.DataArray | xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a DataArray or Dataset to netCDF (h5netcdf engine) atomically, CF-labelled.

    The file's global attributes are those of the Dataset (a DataArray has none), plus
    ``Conventions = "CF-1.10"`` unless set, ``source`` copied from the variable of a
    DataArray that has one (e.g. ``"slift_plugin 0.1.0 rollout"``) unless set, and a
    line appended to ``history`` (UTC time, package version). Attribute values that are
    mappings (which netCDF cannot store, e.g. the fingerprint of a zarr store opened as
    a Dataset) are written as JSON strings. ``obj`` itself is not modified.

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
    ds = _cf_dataset(obj)
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))


def _cf_dataset(obj: xr.DataArray | xr.Dataset) -> xr.Dataset:
    """A shallow copy of ``obj`` as a Dataset with the global attributes of
    :func:`save_netcdf` and JSON strings in place of mapping-valued attributes."""
    from .. import __version__  # at call time: slift_plugin/__init__ imports this module early

    if isinstance(obj, xr.DataArray):
        source = obj.attrs.get("source")
        if obj.name is None or obj.name in obj.coords or obj.name in obj.dims:
            ds = obj.to_dataset(name=_DATAARRAY_VARIABLE)
            if obj.name is not None:
                ds.attrs[_DATAARRAY_NAME] = obj.name
        else:
            ds = obj.to_dataset()
    else:
        source, ds = None, obj
    ds = ds.copy(deep=False)  # new variables: their attrs are replaced below, not obj's
    attrs = dict(ds.attrs)
    attrs.setdefault("Conventions", CONVENTIONS)
    if source is not None:
        attrs.setdefault("source", source)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{now} written by slift_plugin {__version__} (save_netcdf)"
    attrs["history"] = f"{attrs['history']}\n{line}" if attrs.get("history") else line
    ds.attrs = _json_mappings(attrs)
    for variable in ds.variables.values():
        variable.attrs = _json_mappings(variable.attrs)
    return ds


def _json_mappings(attrs: Mapping[str, object]) -> dict[str, object]:
    """``attrs`` with every mapping value serialised as a JSON string."""
    return {
        k: json.dumps(v, default=str) if isinstance(v, Mapping) else v for k, v in attrs.items()
    }


def load_ensemble(path: str | os.PathLike) -> xr.DataArray:
    """Read an ensemble written by :func:`save_netcdf` (netCDF), to zarr, or by
    ``rollout(out=...)`` (verified: see :func:`slift_plugin.store.load_store`).

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
        ensemble layout; for a store of ``rollout(out=...)``, also
        :class:`slift_plugin.store.StoreIntegrityError` when a chunk is missing, was never
        written or fails its checksum, or the array metadata was altered.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ensemble file at {path}")
    if path.is_dir() and _written_by_rollout(path):
        from ..store import load_store

        return check_ensemble(load_store(path), str(path))  # every chunk verified
    try:
        ds = _open_zarr(path) if path.is_dir() else xr.open_dataset(path, engine="h5netcdf")
    except Exception as exc:
        raise ValueError(f"could not read an ensemble from {path}: {exc}") from exc
    if isinstance(ds, xr.Dataset):
        if len(ds.data_vars) != 1:
            raise ValueError(f"{path} holds {list(ds.data_vars)}; expected one ensemble variable")
        ds = ds[next(iter(ds.data_vars))]
    return check_ensemble(ds.load(), str(path))


def _open_zarr(path: Path) -> xr.Dataset:
    """``path`` opened lazily: from its consolidated metadata if it has some, else quietly
    from the metadata of each array (xarray would warn about the slower fallback)."""
    try:
        return xr.open_zarr(path, consolidated=True)
    except (KeyError, ValueError, FileNotFoundError):
        return xr.open_zarr(path, consolidated=False)


def _written_by_rollout(path: Path) -> bool:
    """Whether the zarr group at ``path`` carries a ``rollout(out=...)`` fingerprint (read
    before xarray, which would trip over the altered metadata the store checks name)."""
    import zarr

    from ..store import CHUNKS_GROUP, FINGERPRINT_ATTR

    try:
        group = zarr.open_group(path, mode="r")
    except Exception:  # not a zarr group: xarray says what is wrong with it
        return False
    # Either mark makes it a rollout store: one whose root attributes were lost still has
    # its chunk flags, and must be checked (load_store then names the missing fingerprint)
    # rather than read with never-written chunks as NaN.
    return FINGERPRINT_ATTR in group.attrs or CHUNKS_GROUP in group
