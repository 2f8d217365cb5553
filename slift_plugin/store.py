"""Zarr stores of rollout ensembles: written chunk by chunk, resumable, shardable.

Layout of ``<name>.zarr`` (zarr format 3, readable with ``xarray.open_zarr``):

``state``
    ``(sample, time, channel, *grid)``, zarr-chunked along ``sample`` by the rollout's
    ``chunk_size`` (whole trajectories per zarr chunk), ``NaN`` where nothing is written.
``time``, grid coords, ``mu_<name>`` ``(sample,)``
    the coords of the in-memory ensemble (:func:`slift_plugin.tensor_to_ensemble`).
``chunk_done``
    ``(sample_chunk,)`` bool, one zarr chunk per flag. A flag is set only after its
    chunk's data is written, so an interrupted generation resumes by skipping the
    chunks marked done; a chunk whose write was cut short is not marked and is redone.

The group attribute ``slift_rollout`` fingerprints the generation (seed, sizes, dtype and
autocast dtype, stepper type and weights, initial states, ``mu``, coords and parameter
names, ...): a store is only ever resumed by the same
generation. One flag per zarr chunk lets processes that own disjoint chunks write
without touching each other's files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr
from torch import Tensor, nn

from .distributed import barrier, is_main_process

if int(zarr.__version__.split(".")[0]) < 3:
    raise ImportError(f"rollout(out=...) needs zarr>=3 (zarr format 3), found {zarr.__version__}")

__all__ = [
    "DIGEST_PIECE_BYTES",
    "DONE",
    "DONE_DIM",
    "FINGERPRINT_ATTR",
    "FORMAT",
    "EnsembleStore",
    "check_store_path",
    "coords_digest",
    "fingerprint",
    "tensor_digest",
]

FINGERPRINT_ATTR = "slift_rollout"
DONE = "chunk_done"
DONE_DIM = "sample_chunk"
FORMAT = "slift-rollout-zarr/1"


#: Bytes hashed per piece by :func:`tensor_digest`: what it copies at a time.
DIGEST_PIECE_BYTES = 1 << 24


def tensor_digest(*tensors: Tensor | None) -> str:
    """SHA-256 (hex, 16 characters) of the shapes, dtypes and bytes of ``tensors``.

    The bytes are those of the tensor made contiguous, hashed a few rows at a time (at
    most :data:`DIGEST_PIECE_BYTES` or one row per piece): an expanded view such as the
    rollout's shared ``x0`` window is never materialised whole.

    Parameters
    ----------
    *tensors : Tensor or None
        Tensors of any shape, dtype and device; None hashes as a marker of its own.

    Returns
    -------
    str
        The first 16 hex digits of the digest.
    """
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if not t.numel():
            continue
        rows = t.reshape(1, -1) if t.ndim == 0 else t
        per_row = rows[0].numel() * rows.element_size()
        for piece in rows.split(max(1, DIGEST_PIECE_BYTES // per_row)):
            h.update(piece.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def coords_digest(coords: Mapping[str, xr.DataArray]) -> str:
    """SHA-256 (hex, 16 characters) of the names, dims and values of ``coords``.

    Parameters
    ----------
    coords : Mapping[str, xarray.DataArray]
        Coordinates by name (e.g. ``DataArray.coords``); hashed in sorted name order.

    Returns
    -------
    str
        The first 16 hex digits of the digest.
    """
    h = hashlib.sha256()
    for name in sorted(coords):
        values = np.asarray(coords[name].values)
        h.update(f"{name}{tuple(coords[name].dims)}{values.dtype}{values.shape}".encode())
        if values.dtype.hasobject:
            h.update(repr(values.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()[:16]


def fingerprint(
    stepper: nn.Module,
    *,
    windows: Tensor,
    mu: Tensor | None,
    coords: Mapping[str, xr.DataArray],
    **settings: object,
) -> dict[str, object]:
    """What must match for a store to be resumed: settings, stepper, inputs, coords.

    Parameters
    ----------
    stepper : torch.nn.Module
        The stepper; its class name and the digest of its ``state_dict`` are recorded.
    windows : Tensor
        The initial windows ``(n_samples, history*C, *grid)``.
    mu : Tensor or None
        The physics parameters ``(n_samples, n_params)``.
    coords : Mapping[str, xarray.DataArray]
        The result's coords (time, grid, ``mu_<name>``).
    **settings : object
        Plain JSON values (seed, n_samples, chunk_size, n_steps, ...), recorded as given.

    Returns
    -------
    dict
        JSON-serialisable fingerprint: the format tag, the stepper's qualified name,
        ``settings``, and the digests of weights, ``windows``, ``mu`` and ``coords``.
    """
    cls = type(stepper)
    return {
        "format": FORMAT,
        "stepper": f"{cls.__module__}.{cls.__qualname__}",
        **settings,
        "weights_sha256": tensor_digest(*stepper.state_dict().values()),
        "x0_sha256": tensor_digest(windows),
        "mu_sha256": tensor_digest(mu),
        "coords_sha256": coords_digest(coords),
    }


def check_store_path(out: str | os.PathLike) -> Path:
    """``out`` as a Path; it must end in ``.zarr`` and, if it exists, be a directory.

    Parameters
    ----------
    out : str or os.PathLike
        The store path asked for.

    Returns
    -------
    pathlib.Path
        ``out`` as a Path.

    Raises
    ------
    ValueError
        If ``out`` does not end in ``.zarr`` or names an existing file.
    """
    path = Path(out)
    if path.suffix != ".zarr":
        raise ValueError(f"out must be a path ending in '.zarr', got {str(out)!r}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"out={str(path)!r} exists and is a file, not a zarr store (directory)")
    return path


class EnsembleStore:
    """A rollout ensemble on disk; see the module docstring for the layout.

    Use :meth:`open_or_create` (every process calls it; only rank 0 creates), then
    :meth:`pending` / :meth:`write` for this process's chunks, then :meth:`result`.

    Parameters
    ----------
    path : pathlib.Path
        An existing store, opened for reading and writing.

    Attributes
    ----------
    path : pathlib.Path
        The store.
    chunk_size : int
        Samples per zarr chunk along ``sample``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._group = zarr.open_group(path, mode="r+")
        self._state = self._group["state"]
        self._done = self._group[DONE]
        self.chunk_size = int(self._state.chunks[0])

    @classmethod
    def open_or_create(
        cls,
        out: str | os.PathLike,
        template: xr.DataArray,
        chunk_size: int,
        fingerprint: Mapping[str, object],
    ) -> EnsembleStore:
        """Open the store at ``out`` for resuming, or create it from ``template``.

        Collective under torch.distributed: every rank validates an existing store the
        same way, rank 0 creates a missing one.

        Parameters
        ----------
        out : str or os.PathLike
            The store path, ending in ``.zarr``.
        template : xarray.DataArray
            The ensemble ``(sample, time, channel, *grid)`` with placeholder values
            (dims, coords, attrs are used, values never read).
        chunk_size : int
            Samples per zarr chunk (used only when the store is created).
        fingerprint : Mapping[str, object]
            What identifies the generation (:func:`fingerprint`); stored on creation,
            compared with the stored one on resumption.

        Returns
        -------
        EnsembleStore
            The store, open for writing.

        Raises
        ------
        ValueError
            If ``out`` is not a ``.zarr`` path, or exists but is not a rollout store of
            the same generation.
        """
        path = check_store_path(out)
        existed = path.exists()
        if existed:
            _check_fingerprint(path, dict(fingerprint))
        barrier()  # nobody looks at the path while rank 0 creates it
        if not existed and is_main_process():
            _create(path, template, chunk_size, dict(fingerprint))
        barrier()
        return cls(path)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        """Samples ``[lo, hi)`` of one zarr chunk.

        Parameters
        ----------
        index : int
            Chunk index along ``sample``.

        Returns
        -------
        tuple of int
            ``(lo, hi)``; the last chunk may be shorter.
        """
        n = self._state.shape[0]
        return index * self.chunk_size, min(n, (index + 1) * self.chunk_size)

    def pending(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Bounds of the chunks in samples ``[lo, hi)`` not yet marked done.

        Parameters
        ----------
        lo, hi : int
            The sample range; ``lo`` must be a chunk boundary (a process writes whole
            zarr chunks only).

        Returns
        -------
        list of tuple of int
            ``(lo, hi)`` of each chunk still to generate, in order.

        Raises
        ------
        ValueError
            If ``lo`` is not a multiple of the chunk size.
        """
        if lo >= hi:
            return []
        if lo % self.chunk_size:
            raise ValueError(f"lo={lo} is not a multiple of the chunk size {self.chunk_size}")
        done = self._done[:]
        first, stop = lo // self.chunk_size, -(-hi // self.chunk_size)
        return [self.chunk_bounds(i) for i in range(first, stop) if not done[i]]

    def write(self, lo: int, hi: int, values: Tensor) -> None:
        """Write samples ``[lo, hi)`` (one whole chunk), then mark it done.

        Parameters
        ----------
        lo, hi : int
            The bounds of one whole chunk (:meth:`chunk_bounds`).
        values : Tensor
            Host tensor ``(hi - lo, n_steps + 1, C, *grid)``.

        Raises
        ------
        ValueError
            If ``[lo, hi)`` is not exactly one chunk.
        """
        if (lo, hi) != self.chunk_bounds(lo // self.chunk_size):
            raise ValueError(f"[{lo}, {hi}) is not one chunk of size {self.chunk_size}")
        self._state[lo:hi] = values.numpy()
        self._done[lo // self.chunk_size] = True  # only after the data is in place

    def missing(self) -> list[int]:
        """Indices of the chunks not marked done.

        Returns
        -------
        list of int
            Chunk indices along ``sample``, ascending.
        """
        return [int(i) for i in np.flatnonzero(~self._done[:])]

    def result(self) -> xr.DataArray:
        """The stored ensemble, opened lazily (dask-backed if dask is installed).

        Returns
        -------
        xarray.DataArray
            ``(sample, time, channel, *grid)`` with the ensemble's coords.

        Raises
        ------
        RuntimeError
            If some chunk was never written.
        """
        missing = self.missing()
        if missing:
            raise RuntimeError(
                f"{self.path}: chunks {missing[:10]}{'...' if len(missing) > 10 else ''} "
                f"({len(missing)} of {self._done.shape[0]}) were never written"
            )
        return xr.open_zarr(self.path, consolidated=False)["state"]


def _check_fingerprint(path: Path, expected: dict[str, object]) -> None:
    """Raise unless ``path`` is a rollout store written by the same generation."""
    try:
        found = zarr.open_group(path, mode="r").attrs.get(FINGERPRINT_ATTR)
    except Exception as exc:  # not a zarr group at all
        raise ValueError(
            f"out={str(path)!r} exists but is not a zarr store written by rollout() ({exc}); "
            "refusing to write into it"
        ) from exc
    if not isinstance(found, Mapping):
        raise ValueError(
            f"out={str(path)!r} is a zarr store without a rollout fingerprint "
            f"('{FINGERPRINT_ATTR}' attribute); refusing to write into it"
        )
    diff = [
        f"{k}: store has {found.get(k)!r}, this call has {expected.get(k)!r}"
        for k in sorted(set(found) | set(expected))
        if not _same(found.get(k), expected.get(k))
    ]
    if diff:
        raise ValueError(
            f"out={str(path)!r} holds a different rollout and cannot be resumed by this one "
            f"(delete it or choose another path): " + "; ".join(diff)
        )


def _same(a: object, b: object) -> bool:
    """Equality of JSON attribute values, with NaN equal to NaN and lists as tuples."""
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _create(path: Path, template: xr.DataArray, chunk_size: int, fp: dict[str, object]) -> None:
    """Build the empty store in a temporary directory, then rename it into place.

    The rename is atomic, so a store either exists complete (metadata, coords, all
    flags false) or not at all.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        n_chunks = -(-template.sizes["sample"] // chunk_size)
        skeleton = template.to_dataset(name="state").drop_vars("state")
        skeleton[DONE] = (DONE_DIM, np.zeros(n_chunks, dtype=bool))
        skeleton.attrs[FINGERPRINT_ATTR] = fp
        # mode "w": mkdtemp made the directory; encoding: one zarr chunk per flag
        skeleton.to_zarr(tmp, mode="w", consolidated=False, encoding={DONE: {"chunks": (1,)}})
        group = zarr.open_group(tmp, mode="r+")
        coords = [str(k) for k in template.coords if k not in template.dims]
        # xarray reads dims from dimension_names and non-index coords from "coordinates"
        group.create_array(
            "state",
            shape=template.shape,
            chunks=(chunk_size, *template.shape[1:]),
            dtype=template.dtype,
            fill_value=np.nan,
            dimension_names=template.dims,
            attributes={**template.attrs, **({"coordinates": " ".join(coords)} if coords else {})},
        )
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
