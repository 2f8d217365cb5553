"""Stores of rollout(out=...) checked against what was written: chunks lost, damaged or
swapped and metadata altered are caught on resume (regenerated, or refused) and on load
(refused); a finished store reads back without warnings; atomic writes keep modes."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from test_rollout_store import CHUNK, STEPS, N, generate, make_stepper

from slift_plugin import evaluate, load_ensemble
from slift_plugin.cli import main as slift
from slift_plugin.data import atomic_write
from slift_plugin.data.io import sibling_temp
from slift_plugin.store import DONE, EnsembleStore, StoreIntegrityError

CHUNK_1 = "state/c/1/0/0"  # the zarr chunk of samples [CHUNK, 2 CHUNK): (sample, time, channel)
CHUNK_1_AT = rf"chunk 1 \(samples \[{CHUNK}, {2 * CHUNK}\)\): its file {CHUNK_1}"


@pytest.fixture(scope="module")
def expected():
    """The ensemble in memory: the independent truth every store must equal."""
    return generate()


def counting_stepper():
    """The stepper of ``generate``, recording the batch size of every backbone call."""
    stepper, calls = make_stepper(), []
    stepper.backbone.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return stepper, calls


# -- damaged chunks -------------------------------------------------------------------------
def garbage_bytes(path):
    data = (path / CHUNK_1).read_bytes()
    (path / CHUNK_1).write_bytes(data[:20] + bytes(reversed(data[20:])))


def other_values_validly_encoded(path):
    state = zarr.open_array(path / "state", mode="r+")
    state[CHUNK : 2 * CHUNK] = state[CHUNK : 2 * CHUNK] + 1.0  # zarr writes proper zstd


def truncated(path):
    data = (path / CHUNK_1).read_bytes()
    (path / CHUNK_1).write_bytes(data[: len(data) // 2])


def deleted(path):
    (path / CHUNK_1).unlink()


def chunk_0_copied_over_chunk_1(path):
    shutil.copyfile(path / "state/c/0/0/0", path / CHUNK_1)


def chunk_0_and_its_checksum_copied_over_chunk_1(path):
    chunk_0_copied_over_chunk_1(path)
    sums = path / "slift_chunks/blake2b/c"
    shutil.copyfile(sums / "0/0", sums / "1/0")


DAMAGE = {
    garbage_bytes: "(cannot be decoded|does not hold the values written)",
    other_values_validly_encoded: r"does not hold the values written \(checksum mismatch\)",
    truncated: "(cannot be decoded|does not hold the values written)",
    deleted: "is missing",
    chunk_0_copied_over_chunk_1: r"does not hold the values written \(checksum mismatch\)",
    chunk_0_and_its_checksum_copied_over_chunk_1: "does not hold the values written",
}


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_chunk_is_refused_on_load_and_regenerated_on_resume(tmp_path, expected, damage):
    path = tmp_path / "ens.zarr"
    generate(path)
    damage(path)
    with pytest.raises(
        StoreIntegrityError, match=f"1 chunk\\(s\\) .*{CHUNK_1_AT} {DAMAGE[damage]}"
    ):
        load_ensemble(path)

    stepper, calls = counting_stepper()
    with pytest.warns(RuntimeWarning, match=f"failed verification .*{CHUNK_1_AT}"):
        resumed = generate(path, stepper)
    assert calls == [CHUNK] * STEPS  # chunk 1 only, generated again
    xr.testing.assert_identical(resumed.load(), expected)
    xr.testing.assert_identical(load_ensemble(path), expected)


def test_a_store_never_finished_is_refused_on_load(tmp_path, monkeypatch, expected):
    path = tmp_path / "ens.zarr"
    write = EnsembleStore.write

    def dies_at_chunk_2(self, lo, hi, values):
        if lo == 2 * CHUNK:
            raise KeyboardInterrupt
        write(self, lo, hi, values)

    monkeypatch.setattr(EnsembleStore, "write", dies_at_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        generate(path)
    monkeypatch.undo()
    never = r"chunks \[2, 3, 4, 5\] \(4 of 6\) were never written: the generation was interrupted"
    with pytest.raises(StoreIntegrityError, match=never):
        load_ensemble(path)
    xr.testing.assert_identical(generate(path).load(), expected)


# -- altered metadata -----------------------------------------------------------------------
def edit_state_metadata(path, where, key, value):
    """Set ``key`` of the ``state`` array's metadata, in its own ``zarr.json`` and/or in the
    copy the root group consolidates."""
    files = {"array": path / "state/zarr.json", "consolidated": path / "zarr.json"}
    for name in ["array", "consolidated"] if where == "both" else [where]:
        doc = json.loads(files[name].read_text())
        meta = doc["consolidated_metadata"]["metadata"]["state"] if name == "consolidated" else doc
        if key == "chunks":
            meta["chunk_grid"]["configuration"]["chunk_shape"] = value
        else:
            meta[key] = value
        files[name].write_text(json.dumps(doc))


@pytest.mark.parametrize("where", ["array", "consolidated", "both"])
@pytest.mark.parametrize(
    "key, value, found",
    [
        ("shape", [2 * N, STEPS + 1, 2], f"state shape is {(2 * N, STEPS + 1, 2)}"),
        ("shape", [N - 60, STEPS + 1, 2], f"state shape is {(N - 60, STEPS + 1, 2)}"),
        ("data_type", "float64", "state dtype is 'float64'"),
        ("chunks", [CHUNK // 2, STEPS + 1, 2], f"state chunks is {(CHUNK // 2, STEPS + 1, 2)}"),
    ],
)
def test_altered_array_metadata_is_refused_on_resume_and_load(tmp_path, where, key, value, found):
    path = tmp_path / "ens.zarr"
    generate(path)
    edit_state_metadata(path, where, key, value)
    view = "consolidated metadata" if where == "consolidated" else "array metadata"
    message = (
        f"metadata does not match its fingerprint: .*{re.escape(found)} in the {view}, expected"
    )
    with pytest.raises(StoreIntegrityError, match=message):
        generate(path)
    with pytest.raises(StoreIntegrityError, match=message):
        load_ensemble(path)


def test_altered_coords_are_refused(tmp_path):
    path = tmp_path / "ens.zarr"
    generate(path)
    time = zarr.open_array(path / "time", mode="r+")
    time[1] = 0.15
    with pytest.raises(StoreIntegrityError, match="coords differ from those written"):
        load_ensemble(path)
    with pytest.raises(StoreIntegrityError, match="coords differ from those written"):
        generate(path)


def test_a_store_whose_fingerprint_was_lost_is_not_read_as_plain_zarr(tmp_path):
    # Without its root attributes, the store must still be recognised by its chunk flags:
    # read as plain zarr, a never-written chunk would come back as NaN without a word.
    path = tmp_path / "ens.zarr"
    generate(path)
    zarr.open_group(path, mode="r+").attrs.pop("slift_rollout")
    zarr.consolidate_metadata(path)
    with pytest.raises(ValueError, match="without a rollout fingerprint"):
        load_ensemble(path)


# -- reading a finished store ---------------------------------------------------------------
def test_a_finished_store_reads_back_without_warnings(tmp_path, expected):
    path = tmp_path / "ens.zarr"
    generate(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_ensemble(path)
        dataset = xr.open_zarr(path)
        plain = xr.open_dataset(path, engine="zarr")
    xr.testing.assert_identical(loaded, expected)
    assert loaded.variable._in_memory
    for opened in (dataset, plain):
        assert list(opened.data_vars) == ["state"]  # flags and checksums live elsewhere
        xr.testing.assert_identical(opened["state"].load(), expected)


def test_slift_evaluate_reads_rollout_stores(tmp_path, capsys):
    generated, reference = tmp_path / "gen.zarr", tmp_path / "ref.zarr"
    generate(generated)
    generate(reference, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            slift(["evaluate", str(generated), str(reference), "--out", str(tmp_path / "m.csv")])
            == 0
        )
    table = pd.read_csv(tmp_path / "m.csv", index_col=0)
    truth = evaluate(generate(), generate(seed=11), seed=0).to_dataframe()
    np.testing.assert_allclose(table.to_numpy(), truth.to_numpy(), rtol=1e-6)
    assert list(table.columns) == list(truth.columns)


def test_an_incomplete_store_opens_without_warnings(tmp_path):
    """Consolidated at creation: xarray never falls back (and warns) mid-generation."""
    path = tmp_path / "ens.zarr"
    stepper = make_stepper()

    def stop(module, args):
        raise KeyboardInterrupt  # at the first step of the first chunk

    stepper.backbone.register_forward_pre_hook(stop)
    with pytest.raises(KeyboardInterrupt):
        generate(path, stepper)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(xr.open_zarr(path).data_vars) == ["state"]
    assert not zarr.open_array(path / DONE)[:].any()


# -- atomic writes: modes and the leftovers of killed writers --------------------------------
def current_umask():
    """The umask as the kernel reports it (read without setting it, unlike os.umask)."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    found = [int(line.split()[1], 8) for line in lines if line.startswith("Umask:")]
    if not found:
        pytest.skip("no /proc/self/status Umask line on this system")
    return found[0]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_an_atomic_overwrite_keeps_the_file_mode(tmp_path, monkeypatch, mode):
    def no_umask(*args):
        raise AssertionError("atomic_write changed the process-wide umask")

    target = tmp_path / "secret.csv"
    target.write_text("old")
    target.chmod(mode)
    monkeypatch.setattr(os, "umask", no_umask)
    atomic_write(target, lambda p: p.write_text("new"))
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_a_new_file_and_a_new_store_get_the_umask_mode(tmp_path, monkeypatch):
    umask = current_umask()
    monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("the umask was set"))
    atomic_write(tmp_path / "new.csv", lambda p: p.write_text("x"))
    assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o666 & ~umask
    generate(tmp_path / "ens.zarr", n_samples=10)
    assert stat.S_IMODE((tmp_path / "ens.zarr").stat().st_mode) == 0o777 & ~umask


def killed_while_writing(target):
    """Run ``atomic_write(target, ...)`` in a process that SIGKILLs itself mid-write."""
    code = f"""
        import os, signal
        from slift_plugin.data import atomic_write
        atomic_write({str(target)!r}, lambda p: (p.write_text("half"), os.kill(os.getpid(), 9)))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def test_the_next_write_removes_what_a_killed_write_left_for_that_target_only(tmp_path):
    target, other = tmp_path / "metrics.csv", tmp_path / "metrics.csv.bak"
    killed_while_writing(target)
    killed_while_writing(other)
    orphans = sorted(p.name for p in tmp_path.iterdir())
    assert len(orphans) == 2 and all(n.endswith(".tmp") for n in orphans)
    assert all(n.startswith((".metrics.csv.", ".metrics.csv.bak.")) for n in orphans)
    in_progress = sibling_temp(target)  # this live process's: not an orphan
    in_progress.write_text("mine")

    atomic_write(target, lambda p: p.write_text("done"))
    left = {p.name for p in tmp_path.iterdir()}
    other_orphan = [n for n in orphans if n.startswith(".metrics.csv.bak.")]
    assert left == {"metrics.csv", in_progress.name, *other_orphan}
    assert target.read_text() == "done"
