"""Zarr stores of rollout ensembles: written chunk by chunk, resumable, shardable, verified.

Layout of ``<name>.zarr`` (zarr format 3 with consolidated metadata, so that
``xarray.open_zarr(path)`` opens it without a warning and finds the ensemble only):

``state``
    ``(sample, time, channel, *grid)``, zarr-chunked along ``sample`` by the rollout's
    ``chunk_size`` (whole trajectories per zarr chunk). Every chunk is stored as a file,
    even one equal to the fill value (NaN), so a missing file is always a lost chunk.
``time``, grid coords, ``mu_<name>`` ``(sample,)``
    the coords of the in-memory ensemble (:func:`slift_plugin.tensor_to_ensemble`).
``slift_chunks/done``, ``slift_chunks/blake2b``
    per zarr chunk of ``state``, one zarr chunk each: a flag ``(sample_chunk,)`` bool and
    the BLAKE2b checksum ``(sample_chunk, 32)`` uint8 of its values as written, of its
    index and bounds too (a chunk copied over another fails it). They live in a subgroup,
    outside the dataset xarray opens. The checksum is written after the data and the
    flag after the checksum, so an interrupted generation resumes by skipping the chunks
    marked done, and a chunk whose write was cut short is not marked and is redone.

Nothing marked done is trusted blindly. On resume (:meth:`EnsembleStore.open_or_create`)
the array metadata is compared with the fingerprint (shape, chunks, dtype, dims, coords;
altered metadata raises) and every chunk marked done is read back and compared with its
checksum: a lost, damaged or swapped chunk is unmarked and generated again, with a
warning. :func:`load_store` (what :func:`slift_plugin.load_ensemble` uses for such a
store) makes the same checks and raises :class:`StoreIntegrityError` on any failure.

The group attributes are CF's ``Conventions``, ``source`` (that of the ensemble) and
``history`` (when the store was created), and ``slift_rollout``, which fingerprints the
generation (seed, sizes, dtype and autocast dtype, stepper type and weights, initial
states, ``mu``, coords and parameter names, array layout): a store is only ever resumed
by the same generation. One flag and one checksum per zarr chunk let processes that own
disjoint chunks write without touching each other's files.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr
from torch import Tensor, nn

from .data.io import CONVENTIONS, remove_orphan_temps, sibling_temp
from .distributed import fail_together, is_main_process

if int(zarr.__version__.split(".")[0]) < 3:
    raise ImportError(f"rollout(out=...) needs zarr>=3 (zarr format 3), found {zarr.__version__}")

__all__ = [
    "CHECKSUM",
    "CHECKSUM_BYTES",
    "DIGEST_PIECE_BYTES",
    "DONE",
    "DONE_DIM",
    "FINGERPRINT_ATTR",
    "FORMAT",
    "EnsembleStore",
    "StoreIntegrityError",
    "check_store_path",
    "coords_digest",
    "fingerprint",
    "load_store",
    "tensor_digest",
]

FINGERPRINT_ATTR = "slift_rollout"
CHUNKS_GROUP = "slift_chunks"
DONE = f"{CHUNKS_GROUP}/done"
CHECKSUM = f"{CHUNKS_GROUP}/blake2b"
DONE_DIM = "sample_chunk"
FORMAT = "slift-rollout-zarr/2"

#: Bytes of the BLAKE2b checksum of each chunk.
CHECKSUM_BYTES = 32

#: Bytes hashed per piece by :func:`tensor_digest`: what it copies at a time.
DIGEST_PIECE_BYTES = 1 << 24

# What zarr's LocalStore names a chunk file while writing it; a kill leaves it behind.
_ZARR_PARTIAL = re.compile(r".+\.[0-9a-f]{32}\.partial")


class StoreIntegrityError(ValueError):
    """A rollout store whose metadata or chunks do not match what was written.

    Raised by :func:`load_store` (and so :func:`slift_plugin.load_ensemble`) for a chunk
    that is missing, was never written, cannot be decoded or fails its checksum, and by
    both :func:`load_store` and :meth:`EnsembleStore.open_or_create` for array metadata
    that does not match the fingerprint.
    """


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

    Use :meth:`open_or_create` (every process calls it; only rank 0 creates or repairs),
    then :meth:`pending` / :meth:`write` for this process's chunks, then :meth:`result`.

    Parameters
    ----------
    path : pathlib.Path
        An existing store.
    mode : str
        ``"r+"`` (read and write) or ``"r"`` (read only).

    Attributes
    ----------
    path : pathlib.Path
        The store.
    chunk_size : int
        Samples per zarr chunk along ``sample``.
    n_chunks : int
        Zarr chunks along ``sample``.
    """

    def __init__(self, path: Path, mode: str = "r+") -> None:
        self.path = path
        self._group = zarr.open_group(path, mode=mode)
        # Every chunk becomes a file, even one equal to the fill value, so that a missing
        # file always means a lost chunk (and a NaN chunk keeps its bytes, NaN payloads
        # included, as its checksum saw them).
        with zarr.config.set({"array.write_empty_chunks": True}):
            self._state = self._group["state"]
        self._done = self._group[DONE]
        self._checksum = self._group[CHECKSUM]
        self.chunk_size = int(self._state.chunks[0])
        self.n_chunks = int(self._done.shape[0])

    @classmethod
    def open_or_create(
        cls,
        out: str | os.PathLike,
        template: xr.DataArray,
        chunk_size: int,
        fingerprint: Mapping[str, object],
    ) -> EnsembleStore:
        """Open the store at ``out`` for resuming, or create it from ``template``.

        Collective under torch.distributed: every rank validates an existing store's
        fingerprint and metadata the same way; rank 0 then removes what killed runs left
        (temporary copies of ``out`` beside it, partial chunk files inside it), verifies
        the chunks marked done against their checksums and unmarks those that fail (with
        a :class:`RuntimeWarning`: they are generated again), or creates a missing store.
        Verification reads each chunk marked done once: about the cost of loading them.

        Parameters
        ----------
        out : str or os.PathLike
            The store path, ending in ``.zarr``.
        template : xarray.DataArray
            The ensemble ``(sample, time, channel, *grid)`` with placeholder values
            (dims, coords, attrs are used, values never read).
        chunk_size : int
            Samples per zarr chunk.
        fingerprint : Mapping[str, object]
            What identifies the generation (:func:`fingerprint`); stored on creation with
            the array layout, compared with the stored one on resumption.

        Returns
        -------
        EnsembleStore
            The store, open for writing.

        Raises
        ------
        ValueError
            If ``out`` is not a ``.zarr`` path, or exists but is not a rollout store of
            the same generation.
        StoreIntegrityError
            If the store's array metadata does not match its fingerprint.
        """
        path = check_store_path(out)
        fp = {**fingerprint, "layout": _layout(template, chunk_size)}
        existed = path.exists()
        # fail_together: a rank that finds the store wrong, or rank 0 failing to create or
        # repair it, fails every rank with the cause instead of leaving them at a barrier.
        with fail_together(f"checking the zarr store {path}"):
            if existed:
                _check_fingerprint(path, fp)
                _check_layout(path, fp)
        with fail_together(f"creating or repairing the zarr store {path}"):
            if is_main_process():
                remove_orphan_temps(path)
                if existed:
                    cls(path)._repair()
                else:
                    _create(path, template, chunk_size, fp)
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
        done, _ = self._flags()
        first, stop = lo // self.chunk_size, -(-hi // self.chunk_size)
        return [self.chunk_bounds(i) for i in range(first, stop) if not done[i]]

    def write(self, lo: int, hi: int, values: Tensor) -> None:
        """Write samples ``[lo, hi)`` (one whole chunk), its checksum, then its done flag.

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
        index = lo // self.chunk_size
        if (lo, hi) != self.chunk_bounds(index):
            raise ValueError(f"[{lo}, {hi}) is not one chunk of size {self.chunk_size}")
        data = np.asarray(values.numpy(), dtype=self._state.dtype)  # the bytes zarr stores
        self._state[lo:hi] = data
        self._checksum[index] = _chunk_checksum(data, index, lo, hi)
        self._done[index] = True  # only after the data and its checksum are in place

    def missing(self) -> list[int]:
        """Indices of the chunks not marked done.

        Returns
        -------
        list of int
            Chunk indices along ``sample``, ascending.
        """
        done, _ = self._flags()
        return [int(i) for i in np.flatnonzero(~done)]

    def result(self) -> xr.DataArray:
        """The stored ensemble, opened lazily (dask-backed if dask is installed).

        Its chunks were verified when the store was opened or written by this run;
        :func:`load_store` verifies a store read later.

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
            raise RuntimeError(f"{self.path}: {_never_written(missing, self.n_chunks)}")
        return xr.open_zarr(self.path, consolidated=True)["state"]

    def _flags(self) -> tuple[np.ndarray, np.ndarray]:
        """Done flags ``(n_chunks,)`` and checksums ``(n_chunks, CHECKSUM_BYTES)``; a flag
        or checksum whose file cannot be decoded counts as not done (nor checksummed)."""
        try:
            return self._done[:], self._checksum[:]
        except Exception:  # one damaged file: read them one by one
            done = np.zeros(self.n_chunks, dtype=bool)
            sums = np.zeros((self.n_chunks, CHECKSUM_BYTES), dtype=np.uint8)
            for i in range(self.n_chunks):
                try:
                    sums[i] = self._checksum[i]
                    done[i] = self._done[i]
                except Exception:  # only on the damaged path
                    done[i] = False
            return done, sums

    def _verify(self, indices: Iterable[int], into: np.ndarray | None = None) -> dict[int, str]:
        """What is wrong with each of the chunks ``indices`` (those that pass are left
        out); the values of those that pass are copied into ``into`` when given."""
        _, sums = self._flags()
        problems = {}
        for index in indices:
            problem = self._chunk_problem(int(index), sums[index], into)
            if problem is not None:
                lo, hi = self.chunk_bounds(int(index))
                problems[int(index)] = f"chunk {index} (samples [{lo}, {hi})): {problem}"
        return problems

    def _chunk_problem(
        self, index: int, expected: np.ndarray, into: np.ndarray | None
    ) -> str | None:
        """Why chunk ``index`` is not what was written with checksum ``expected``, or None."""
        lo, hi = self.chunk_bounds(index)
        key = "state/" + self._state.metadata.encode_chunk_key(
            (index,) + (0,) * (self._state.ndim - 1)
        )
        if not (self.path / key).is_file():
            return f"its file {key} is missing"
        try:
            values = self._state[lo:hi]
        except Exception as exc:  # bytes the codecs cannot decode
            return f"its file {key} cannot be decoded ({type(exc).__name__}: {exc})"
        if not np.array_equal(_chunk_checksum(values, index, lo, hi), expected):
            return f"its file {key} does not hold the values written (checksum mismatch)"
        if into is not None:
            into[lo:hi] = values
        return None

    def _repair(self) -> None:
        """Remove partial chunk files of killed writes; unmark the chunks marked done
        that fail verification, so that they are generated again."""
        for leftover in self.path.rglob("*.partial"):
            if _ZARR_PARTIAL.fullmatch(leftover.name):
                leftover.unlink(missing_ok=True)
        done, _ = self._flags()
        problems = self._verify(np.flatnonzero(done))
        for index in problems:
            self._done[index] = False  # first the flag: a kill now leaves it to be redone
            self._checksum[index] = 0
        if problems:
            warnings.warn(
                f"{self.path}: {len(problems)} chunk(s) marked done failed verification and "
                f"will be generated again: " + "; ".join(problems.values()),
                RuntimeWarning,
                stacklevel=3,
            )


def load_store(path: str | os.PathLike) -> xr.DataArray:
    """Read a store written by ``rollout(out=...)`` into memory, every chunk verified.

    Parameters
    ----------
    path : str or os.PathLike
        The store.

    Returns
    -------
    xarray.DataArray
        The ensemble ``(sample, time, channel, *grid)`` with its coords, in memory.

    Raises
    ------
    ValueError
        If ``path`` is not a rollout store.
    StoreIntegrityError
        If it was written by another store format, its array metadata does not match
        its fingerprint, or a chunk was never written, is missing, cannot be decoded or
        fails its checksum (each named, with its samples).
    """
    path = Path(path)
    fp = _read_fingerprint(path)
    if fp.get("format") != FORMAT:
        raise StoreIntegrityError(
            f"{path} was written in the store format {fp.get('format')!r}; this version reads "
            f"{FORMAT!r} only: generate it again"
        )
    _check_layout(path, fp)
    store = EnsembleStore(path, mode="r")
    missing = store.missing()
    if missing:
        raise StoreIntegrityError(
            f"{path}: {_never_written(missing, store.n_chunks)}: the generation was "
            "interrupted; run the same rollout(out=...) again to finish it"
        )
    values = np.empty(store._state.shape, dtype=store._state.dtype)
    problems = store._verify(range(store.n_chunks), into=values)
    if problems:
        raise StoreIntegrityError(
            f"{path}: {len(problems)} chunk(s) do not hold what was written: "
            + "; ".join(problems.values())
            + ". Run the same rollout(out=...) again to regenerate them"
        )
    ensemble = xr.open_zarr(path, consolidated=True)["state"]
    return ensemble.copy(data=values).load()


def _never_written(missing: list[int], n_chunks: int) -> str:
    listed = f"{missing[:10]}{'...' if len(missing) > 10 else ''}"
    return f"chunks {listed} ({len(missing)} of {n_chunks}) were never written"


def _chunk_checksum(values: np.ndarray, index: int, lo: int, hi: int) -> np.ndarray:
    """BLAKE2b of chunk ``index``'s bounds, dtype, shape and values (little-endian bytes)."""
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    h = hashlib.blake2b(digest_size=CHECKSUM_BYTES)
    h.update(f"{index}:{lo}:{hi}:{values.dtype.str}:{values.shape}".encode())
    h.update(values.reshape(-1).view(np.uint8))
    return np.frombuffer(h.digest(), dtype=np.uint8)


def _layout(template: xr.DataArray, chunk_size: int) -> dict[str, object]:
    """The ``state`` array the store holds for ``template`` (JSON values)."""
    return {
        "shape": [int(s) for s in template.shape],
        "chunks": [int(chunk_size), *(int(s) for s in template.shape[1:])],
        "dtype": str(np.dtype(template.dtype)),
        "dims": [str(d) for d in template.dims],
    }


def _expected_arrays(layout: Mapping[str, object]) -> dict[str, tuple[object, ...]]:
    """``(shape, chunks, dtype, dims)`` of every array of the store, from its layout."""
    shape, chunks = tuple(layout["shape"]), tuple(layout["chunks"])
    n_chunks = -(-shape[0] // chunks[0])
    per_chunk = (DONE_DIM, "checksum_byte")
    return {
        "state": (shape, chunks, np.dtype(layout["dtype"]), tuple(layout["dims"])),
        DONE: ((n_chunks,), (1,), np.dtype(bool), per_chunk[:1]),
        CHECKSUM: ((n_chunks, CHECKSUM_BYTES), (1, CHECKSUM_BYTES), np.dtype(np.uint8), per_chunk),
    }


def _check_layout(path: Path, fp: Mapping[str, object]) -> None:
    """Raise unless the arrays of ``path`` are what the fingerprint ``fp`` says, both in
    each array's own metadata (what zarr writes through) and in the consolidated copy
    (what xarray reads), and the coords hash to the fingerprint's digest."""
    layout = fp.get("layout")
    if not isinstance(layout, Mapping):
        raise StoreIntegrityError(f"{path}: its fingerprint has no array layout ({FORMAT})")
    fields = ("shape", "chunks", "dtype", "dims")
    problems = []
    for consolidated, view in ((False, "array metadata"), (True, "consolidated metadata")):
        try:
            group = zarr.open_group(path, mode="r", use_consolidated=consolidated)
            for name, expected in _expected_arrays(layout).items():
                array = group[name]
                dims = tuple(array.metadata.dimension_names or ())
                found = (array.shape, array.chunks, np.dtype(array.dtype), dims)
                problems += [
                    f"{name} {field} is {_shown(f)} in the {view}, expected {_shown(e)}"
                    for field, f, e in zip(fields, found, expected, strict=True)
                    if f != e
                ]
        except Exception as exc:  # unreadable or missing metadata
            problems.append(f"the {view} cannot be read ({type(exc).__name__}: {exc})")
    if not problems:  # the coords can only be read through metadata that makes sense
        coords = xr.open_zarr(path, consolidated=True)["state"].coords
        if coords_digest(coords) != fp.get("coords_sha256"):
            problems.append("the coords differ from those written (coords_sha256)")
    if problems:
        raise StoreIntegrityError(
            f"{path}: the store's metadata does not match its fingerprint: "
            + "; ".join(problems)
            + ". It was altered or damaged; delete it and generate it again"
        )


def _shown(value: object) -> str:
    """A metadata value as the message shows it: dtypes by name, tuples as they are."""
    return repr(str(value)) if isinstance(value, np.dtype) else repr(value)


def _read_fingerprint(path: Path) -> dict[str, object]:
    """The fingerprint stored at ``path``; ValueError unless it is a rollout store."""
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
    return dict(found)


def _check_fingerprint(path: Path, expected: dict[str, object]) -> None:
    """Raise unless ``path`` is a rollout store written by the same generation."""
    found = _read_fingerprint(path)
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
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _global_attrs(template: xr.DataArray) -> dict[str, str]:
    """CF global attributes of a new store: what :func:`slift_plugin.save_netcdf` writes."""
    from . import __version__  # at call time, when the package is fully imported

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs = {"Conventions": CONVENTIONS}
    if "source" in template.attrs:
        attrs["source"] = str(template.attrs["source"])
    attrs["history"] = f"{now} created by slift_plugin {__version__} (rollout out=...)"
    return attrs


def _create(path: Path, template: xr.DataArray, chunk_size: int, fp: dict[str, object]) -> None:
    """Build the empty store in a temporary directory, then rename it into place.

    The rename is atomic, so a store either exists complete (metadata, coords, all
    flags false) or not at all; a kill before it leaves the temporary directory, which
    the next :meth:`EnsembleStore.open_or_create` of ``path`` removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_temp(path)
    tmp.mkdir()  # 0o777 less the umask, like any new directory (mkdtemp would give 0o700)
    try:
        skeleton = template.to_dataset(name="state").drop_vars("state")
        skeleton.attrs.update(_global_attrs(template))
        skeleton.attrs[FINGERPRINT_ATTR] = fp
        skeleton.to_zarr(tmp, mode="w", consolidated=False)  # the coords
        group = zarr.open_group(tmp, mode="r+")
        coords = [str(k) for k in template.coords if k not in template.dims]
        expected = _expected_arrays(fp["layout"])
        # xarray reads dims from dimension_names and non-index coords from "coordinates"
        group.create_array(
            "state",
            shape=template.shape,
            chunks=expected["state"][1],
            dtype=template.dtype,
            fill_value=np.nan,
            dimension_names=template.dims,
            attributes={**template.attrs, **({"coordinates": " ".join(coords)} if coords else {})},
        )
        flags = group.create_group(CHUNKS_GROUP)
        for name, fill in ((DONE, False), (CHECKSUM, 0)):
            shape, chunks, dtype, dims = expected[name]
            flags.create_array(
                name.rpartition("/")[2],
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=fill,
                compressors=None,  # a few raw bytes per file
                dimension_names=dims,
            )
        with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not")
            zarr.consolidate_metadata(tmp)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
