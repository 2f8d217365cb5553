"""The command line, the demo pipeline and the example scripts (CI-sized runs)."""

import json
import os
import runpy
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slift_plugin import evaluate, load_ensemble
from slift_plugin.cli import main
from slift_plugin.demo import DemoConfig, run_demo

ROOT = Path(__file__).resolve().parents[1]


def test_generate_and_evaluate_two_reference_ensembles(tmp_path, capsys):
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    assert (
        main(
            [
                "generate",
                "ornstein_uhlenbeck",
                "--out",
                str(a),
                "--n-samples",
                "400",
                "--n-steps",
                "3",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "generate",
                "ornstein_uhlenbeck",
                "--out",
                str(b),
                "--n-samples",
                "800",
                "--n-steps",
                "3",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    ens = load_ensemble(a)
    assert ens.dims == ("sample", "time", "channel") and ens.shape == (400, 4, 1)
    assert ens.attrs["seed"] == 0
    csv = tmp_path / "m.csv"
    assert main(["evaluate", str(a), str(b), "--out", str(csv)]) == 0
    import pandas as pd

    table = pd.read_csv(csv)
    # two ensembles of the same law: energy distance at the noise floor
    assert table["ed_ratio"].iloc[1:].between(0.2, 5).all()
    # --splits averages over reference splits: the same as evaluate(n_splits=...)
    csv4 = tmp_path / "m4.csv"
    assert main(["evaluate", str(a), str(b), "--splits", "4", "--out", str(csv4)]) == 0
    expected = evaluate(load_ensemble(a), load_ensemble(b), n_splits=4)
    np.testing.assert_allclose(pd.read_csv(csv4)["noise_floor"], expected["noise_floor"])
    assert not np.allclose(table["noise_floor"].iloc[1:], expected["noise_floor"][1:])


def test_cli_bad_input_is_a_clear_error_and_leaves_no_file(tmp_path, capsys):
    out = tmp_path / "x.nc"
    code = main(["generate", "double_well", "--out", str(out), "--params", '{"sigma": -1}'])
    assert code == 2 and not out.exists() and list(tmp_path.iterdir()) == []
    assert "sigma" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(b"not a netcdf file")
    assert main(["evaluate", str(corrupt), str(corrupt)]) == 2
    assert "could not read an ensemble" in capsys.readouterr().err


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_quick_demo_writes_every_output(tmp_path):
    table = run_demo(tmp_path, DemoConfig.quick())
    for name in (
        "reference.nc",
        "train.nc",
        "sl.nc",
        "mse.nc",
        "metrics.csv",
        "metrics.json",
        "demo.png",
        "sl.pt",
        "mse.pt",
    ):
        assert (tmp_path / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files
    width, height = png_size(tmp_path / "demo.png")
    assert width > 500 and height > 400
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert set(summary["train_loss"]) == {"SL", "MSE"}
    assert all(np.isfinite(r["ed_ratio"]) for r in summary["horizons"])
    sl, mse = load_ensemble(tmp_path / "sl.nc"), load_ensemble(tmp_path / "mse.nc")
    assert sl.shape == (32, 7, 1, 128)
    # from the shared u0 = 0 the MSE model gives one trajectory: zero spread, std error 1
    assert float(mse.std("sample").max()) < 1e-6
    mse_rows = table[table.model == "MSE"]
    np.testing.assert_allclose(mse_rows["std_rel_error"], 1.0, atol=1e-5)
    assert float(sl.isel(time=-1).std("sample").mean()) > 0.0


@pytest.mark.parametrize("script", ["dice_vlasov.py", "replace_sdeint_lorenz.py"])
def test_example_quick_mode(script, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(sys, "argv", [script, "--quick"])
    namespace = runpy.run_path(str(ROOT / "examples" / script), run_name="example")
    args = ["--quick", "--out", str(tmp_path), "--threads", "1"]
    try:
        result = namespace["main"](args)
    finally:
        torch.set_num_threads(1)
    numbers = [v for v in result.values() if isinstance(v, float)]
    assert numbers and all(np.isfinite(v) for v in numbers)
    if "dice" in script:
        assert (tmp_path / "dice_vlasov.png").is_file() and (tmp_path / "metrics.csv").is_file()
    if "lorenz" in script:
        assert (tmp_path / "lorenz.png").is_file() and result["speedup"] > 0


# -- outputs: never replaced silently, never an input, checked before the work --------------
def small_ensemble(path, seed=0):
    argv = ["generate", "ornstein_uhlenbeck", "--out", str(path), "--n-samples", "64"]
    assert main([*argv, "--n-steps", "2", "--seed", str(seed)]) == 0
    return path.read_bytes()


def one_line_error(capsys, command, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"slift {command}: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_generate_refuses_an_existing_file_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "existing.nc"
    out.write_bytes(b"user data")
    argv = ["generate", "ornstein_uhlenbeck", "--out", str(out), "--n-samples", "64"]
    assert main(argv) == 2
    one_line_error(capsys, "generate", "already exists", "--overwrite")
    assert out.read_bytes() == b"user data"
    assert main([*argv, "--overwrite", "--n-steps", "2"]) == 0
    assert load_ensemble(out).shape == (64, 3, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.nc"]  # no temp files


def test_output_is_checked_before_the_work(tmp_path, capsys):
    # sigma = -1 fails inside the generator: the error names the output, so it came first
    out = tmp_path / "existing.nc"
    out.write_bytes(b"user data")
    argv = ["generate", "double_well", "--out", str(out), "--params", '{"sigma": -1}']
    assert main(argv) == 2
    one_line_error(capsys, "generate", "already exists")
    # with --overwrite the generator runs, fails, and the old file is still whole
    assert main([*argv, "--overwrite"]) == 2
    one_line_error(capsys, "generate", "sigma")
    assert out.read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.nc"]
    # evaluate: missing inputs are never read when the output is refused
    assert main(["evaluate", "missing1.nc", "missing2.nc", "--out", str(out)]) == 2
    one_line_error(capsys, "evaluate", "already exists")


@pytest.mark.parametrize("form", ["same", "relative", "symlink", "hardlink", "dotdot"])
def test_evaluate_never_writes_over_its_input(tmp_path, capsys, monkeypatch, form):
    gen, ref = tmp_path / "gen.nc", tmp_path / "ref.nc"
    small_ensemble(gen, seed=0)
    ref_bytes = small_ensemble(ref, seed=1)
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    if form == "symlink":
        (tmp_path / "link.nc").symlink_to(ref)
    if form == "hardlink":
        (tmp_path / "hard.nc").hardlink_to(ref)
    (tmp_path / "sub").mkdir()
    out = {
        "same": str(ref),
        "relative": "ref.nc",
        "symlink": "link.nc",
        "hardlink": "hard.nc",
        "dotdot": "sub/../ref.nc",
    }[form]
    for extra in ([], ["--overwrite"]):  # --overwrite does not make an input writable
        assert main(["evaluate", str(gen), str(ref), "--out", out, *extra]) == 2
        one_line_error(capsys, "evaluate", "is the input", "refusing to overwrite an input")
        assert ref.read_bytes() == ref_bytes
    assert load_ensemble(ref).shape == (64, 3, 1)


def test_evaluate_refuses_a_csv_inside_a_zarr_input(tmp_path, capsys):
    gen = tmp_path / "gen.nc"
    small_ensemble(gen)
    store = tmp_path / "ref.zarr"
    load_ensemble(gen).to_dataset(name="x").to_zarr(store)
    capsys.readouterr()
    assert main(["evaluate", str(gen), str(store), "--out", str(store / "m.csv")]) == 2
    one_line_error(capsys, "evaluate", "is the input")
    assert not (store / "m.csv").exists()


def test_evaluate_overwrite_replaces_an_old_csv(tmp_path, capsys):
    gen, ref, csv = tmp_path / "gen.nc", tmp_path / "ref.nc", tmp_path / "m.csv"
    small_ensemble(gen, seed=0)
    small_ensemble(ref, seed=1)
    csv.write_text("old")
    assert main(["evaluate", str(gen), str(ref), "--out", str(csv)]) == 2
    assert csv.read_text() == "old"
    assert main(["evaluate", str(gen), str(ref), "--out", str(csv), "--overwrite"]) == 0
    assert csv.read_text().startswith("time,")


@pytest.mark.parametrize("command", ["generate", "evaluate"])
@pytest.mark.parametrize("case", ["directory", "under-a-file", "trailing-slash", "fifo"])
def test_unusable_output_file_is_one_line_and_exit_2(tmp_path, capsys, command, case):
    gen = tmp_path / "gen.nc"
    gen_bytes = small_ensemble(gen)
    capsys.readouterr()
    (tmp_path / "plain.txt").write_text("keep")
    # a fifo stands for /dev/null & co.; never test on /dev/null itself: a regression run
    # as root would replace the system's /dev/null with a regular file
    os.mkfifo(tmp_path / "pipe")
    out, message = {
        "directory": (str(tmp_path), "is a directory"),
        "under-a-file": (str(tmp_path / "plain.txt" / "x.nc"), "which is not a directory"),
        "trailing-slash": (str(tmp_path / "new") + "/", "is a directory"),
        "fifo": (str(tmp_path / "pipe"), "is not a regular file"),
    }[case]
    argv = {
        "generate": ["generate", "ornstein_uhlenbeck", "--n-steps", "2"],
        "evaluate": ["evaluate", str(gen), str(gen)],
    }[command]
    for extra in ([], ["--overwrite"]):
        assert main([*argv, "--out", out, *extra]) == 2
        one_line_error(capsys, command, message)
    assert (tmp_path / "plain.txt").read_text() == "keep" and gen.read_bytes() == gen_bytes
    assert (tmp_path / "pipe").is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.nc", "pipe", "plain.txt"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_output_folder_is_refused_even_for_root(capsys):
    # /proc takes no new files whatever the permissions: a check root cannot bypass
    assert main(["generate", "ornstein_uhlenbeck", "--out", "/proc/slift_x.nc"]) == 2
    one_line_error(capsys, "generate", "cannot write in /proc")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anyway")
def test_read_only_folder_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        assert main(["generate", "lorenz63", "--out", str(locked / "x.nc")]) == 2
        one_line_error(capsys, "generate", f"cannot write in {locked}")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_folder_outputs_refuse_a_file_or_a_non_empty_folder(tmp_path, capsys, command):
    # refused at once: without the check a full demo or benchmark would run first
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    (tmp_path / "plain.txt").write_text("keep")
    assert main([command, "--quick", "--out", str(full)]) == 2
    one_line_error(capsys, command, "non-empty folder", "notes.txt", "--overwrite")
    for extra in ([], ["--overwrite"]):
        assert main([command, "--quick", "--out", str(tmp_path / "plain.txt"), *extra]) == 2
        one_line_error(capsys, command, "is not a directory")
    assert main([command, "--quick", "--out", str(tmp_path / "plain.txt" / "sub")]) == 2
    one_line_error(capsys, command, "which is not a directory")
    assert (full / "notes.txt").read_text() == "mine"
    assert (tmp_path / "plain.txt").read_text() == "keep"


def test_bench_overwrite_replaces_its_files_and_keeps_others(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "runs.csv").write_text("old")
    argv = ["bench", "--quick", "--problems", "double_well", "--methods", "solver"]
    assert main([*argv, "--seeds", "1", "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "runs.csv").read_text().startswith("problem,")


def test_installed_slift_command_exits_2_and_keeps_the_file(tmp_path):
    script = Path(sys.executable).with_name("slift")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "slift_plugin.cli"]
    out = tmp_path / "existing.nc"
    out.write_bytes(b"user data")
    done = subprocess.run(
        [*command, "generate", "ornstein_uhlenbeck", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"slift generate: error: --out {out} already exists; " + (
        "pass --overwrite to replace it\n"
    )
    assert out.read_bytes() == b"user data"


def test_evaluate_period_is_the_library_periodic_energy_distance(tmp_path, capsys):
    import pandas as pd
    import xarray as xr

    from slift_plugin import evaluate

    # Two populations on a circle of length 1 that sit across the wrap point: plain and
    # periodic energy distances differ, and the CLI must give the periodic one.
    coords = {"time": [0.0], "channel": ["x", "v"]}

    def population(n, seed):
        g = np.random.default_rng(seed)
        x = np.mod(g.normal(0.0, 0.05, n), 1.0)[:, None]
        v = g.normal(0.0, 1.0, n)[:, None]
        values = np.stack([x, v], axis=-1)  # (sample, time, channel)
        return xr.DataArray(values, dims=("sample", "time", "channel"), coords=coords)

    gen, ref = tmp_path / "gen.nc", tmp_path / "ref.nc"
    population(200, 1).to_netcdf(gen)
    population(400, 2).to_netcdf(ref)
    for args, period in ((["--period", "1.0", "none"], [1.0, None]), ([], None)):
        out = tmp_path / f"m{len(args)}.csv"
        assert main(["evaluate", str(gen), str(ref), "--out", str(out), *args]) == 0
        expected = evaluate(load_ensemble(gen), load_ensemble(ref), period=period)
        got = pd.read_csv(out)
        np.testing.assert_allclose(got["energy_distance"], expected["energy_distance"].values)
    plain, periodic = (pd.read_csv(tmp_path / f"m{n}.csv") for n in (0, 3))
    assert not np.isclose(periodic["energy_distance"][0], plain["energy_distance"][0], rtol=0.05)
    capsys.readouterr()
    assert main(["evaluate", str(gen), str(ref), "--period", "-1"]) == 2
    assert "expected a positive period length or 'none', got '-1'" in capsys.readouterr().err
