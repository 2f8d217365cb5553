"""Bad input to every ``slift`` sub-command: a clear message, exit status 2, no file written.

Each case runs ``slift_plugin.cli.main`` in a fresh, empty working directory that holds
only links to the input files below; after the call that directory must hold nothing new.
The expected messages are written out here, so a case that starts crashing with a
traceback, exits 0 or 1, or words the error differently fails.
"""

import pytest
import xarray as xr

from slift_plugin import save_netcdf
from slift_plugin.cli import main
from slift_plugin.systems import lorenz63, ornstein_uhlenbeck

OUT = ["--out", "x.nc"]
GEN = ["generate", "ornstein_uhlenbeck", *OUT]
POSITIVE = "expected a positive integer, got"
SEED = "expected an integer seed in [0, 2**63), got"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Input files of each kind, by name."""
    root = tmp_path_factory.mktemp("inputs")
    ou = ornstein_uhlenbeck(n_samples=32, n_steps=2, seed=0)
    save_netcdf(ou, root / "ou.nc")
    save_netcdf(lorenz63(n_samples=32, n_steps=2, seed=0), root / "lorenz.nc")
    save_netcdf(xr.Dataset({"a": ou, "b": ou}), root / "two_vars.nc")
    save_netcdf(xr.DataArray([1.0, 2.0], dims="x", name="v"), root / "not_ensemble.nc")
    (root / "table.csv").write_text("time,ed\n0,1\n")
    (root / "empty.nc").write_bytes(b"")
    (root / "plain_folder").mkdir()
    (root / "plain_folder" / "notes.txt").write_text("not a zarr store")
    return root


# (argv, the sub-command named in the error, what the message must say)
CASES = {
    # -- no or unknown sub-command
    "no-command": ([], "", "the following arguments are required: command"),
    "unknown-command": (["fly"], "", "invalid choice: 'fly'"),
    # -- generate
    "gen-no-out": (["generate", "lorenz63"], "generate", "required: --out"),
    "gen-no-system": (["generate", *OUT], "generate", "required: system"),
    "gen-unknown-system": (["generate", "heat", *OUT], "generate", "invalid choice: 'heat'"),
    "gen-n-samples-0": ([*GEN, "--n-samples", "0"], "generate", f"--n-samples: {POSITIVE} '0'"),
    "gen-n-samples--1": (
        [*GEN, "--n-samples", "-1"],
        "generate",
        f"--n-samples: {POSITIVE} '-1'",
    ),
    "gen-n-samples-1.5": (
        [*GEN, "--n-samples", "1.5"],
        "generate",
        f"--n-samples: {POSITIVE} '1.5'",
    ),
    "gen-n-samples-text": (
        [*GEN, "--n-samples", "many"],
        "generate",
        f"--n-samples: {POSITIVE} 'many'",
    ),
    "gen-n-steps-0": ([*GEN, "--n-steps", "0"], "generate", f"--n-steps: {POSITIVE} '0'"),
    "gen-n-steps-2.5": ([*GEN, "--n-steps", "2.5"], "generate", f"--n-steps: {POSITIVE} '2.5'"),
    "gen-seed-text": ([*GEN, "--seed", "abc"], "generate", f"--seed: {SEED} 'abc'"),
    "gen-seed-negative": ([*GEN, "--seed", "-1"], "generate", f"--seed: {SEED} '-1'"),
    "gen-seed-float": ([*GEN, "--seed", "1.5"], "generate", f"--seed: {SEED} '1.5'"),
    "gen-seed-2**63": (
        [*GEN, "--seed", str(2**63)],
        "generate",
        f"--seed: {SEED} '{2**63}'",
    ),
    "gen-params-not-json": (
        [*GEN, "--params", "{sigma: 1}"],
        "generate",
        "--params is not valid JSON",
    ),
    "gen-params-list": (
        [*GEN, "--params", "[1, 2]"],
        "generate",
        "--params must be a JSON object such as",
    ),
    "gen-params-unknown": (
        [*GEN, "--params", '{"sigmaa": 0.1}'],
        "generate",
        "ornstein_uhlenbeck has no parameter 'sigmaa'; it takes dt, x0, theta",
    ),
    "gen-params-flagged": (
        [*GEN, "--params", '{"n_samples": 3, "seed": 1}'],
        "generate",
        "--params cannot set n_samples, seed; use --n-samples, --seed",
    ),
    "gen-params-bad-value": (
        [*GEN, "--params", '{"sigma": "big"}'],
        "generate",
        "sigma must be a real number; got 'big'",
    ),
    "gen-params-bad-dt": ([*GEN, "--params", '{"dt": 0}'], "generate", "dt must be > 0"),
    # -- evaluate
    "eval-missing-generated": (
        ["evaluate", "nowhere.nc", "ou.nc"],
        "evaluate",
        "no ensemble file at nowhere.nc",
    ),
    "eval-missing-reference": (
        ["evaluate", "ou.nc", "nowhere.nc"],
        "evaluate",
        "no ensemble file at nowhere.nc",
    ),
    "eval-one-file": (["evaluate", "ou.nc"], "evaluate", "required: reference"),
    "eval-csv-input": (
        ["evaluate", "table.csv", "ou.nc"],
        "evaluate",
        "could not read an ensemble from table.csv",
    ),
    "eval-empty-file": (
        ["evaluate", "ou.nc", "empty.nc"],
        "evaluate",
        "could not read an ensemble from empty.nc",
    ),
    "eval-folder-not-zarr": (
        ["evaluate", "plain_folder", "ou.nc"],
        "evaluate",
        "could not read an ensemble from plain_folder",
    ),
    "eval-two-variables": (
        ["evaluate", "two_vars.nc", "ou.nc"],
        "evaluate",
        "two_vars.nc holds ['a', 'b']; expected one ensemble variable",
    ),
    "eval-not-an-ensemble": (
        ["evaluate", "not_ensemble.nc", "ou.nc"],
        "evaluate",
        "not_ensemble.nc must have dims ('sample', 'time', 'channel', *grid), got ('x',)",
    ),
    "eval-mismatched-channels": (
        ["evaluate", "ou.nc", "lorenz.nc"],
        "evaluate",
        "generated and reference must have the same non-sample dims",
    ),
    "eval-seed-text": (["evaluate", "ou.nc", "ou.nc", "--seed", "x"], "evaluate", SEED),
    "eval-seed-negative": (["evaluate", "ou.nc", "ou.nc", "--seed", "-3"], "evaluate", SEED),
    "eval-out-is-input": (
        ["evaluate", "ou.nc", "lorenz.nc", "--out", "./lorenz.nc", "--overwrite"],
        "evaluate",
        "--out ./lorenz.nc is the input lorenz.nc",
    ),
    "eval-out-exists": (
        ["evaluate", "ou.nc", "ou.nc", "--out", "table.csv"],
        "evaluate",
        "--out table.csv already exists; pass --overwrite to replace it",
    ),
    # -- bench (all refused before any run starts)
    "bench-seeds-0": (["bench", "--seeds", "0"], "bench", f"--seeds: {POSITIVE} '0'"),
    "bench-seeds--1": (["bench", "--seeds", "-1"], "bench", f"--seeds: {POSITIVE} '-1'"),
    "bench-seeds-1.5": (["bench", "--seeds", "1.5"], "bench", f"--seeds: {POSITIVE} '1.5'"),
    "bench-threads-0": (["bench", "--threads", "0"], "bench", f"--threads: {POSITIVE} '0'"),
    "bench-device-unknown": (
        ["bench", "--device", "gpu"],
        "bench",
        "--device: expected a torch device such as cpu, cuda or cuda:1, got 'gpu'",
    ),
    "bench-unknown-problem": (
        ["bench", "--problems", "heat"],
        "bench",
        "--problems: invalid choice: 'heat'",
    ),
    "bench-unknown-method": (
        ["bench", "--quick", "--methods", "sl", "nope"],
        "bench",
        "unknown method 'nope'",
    ),
    "bench-out-is-a-file": (
        ["bench", "--quick", "--out", "ou.nc", "--overwrite"],
        "bench",
        "--out ou.nc exists and is not a directory",
    ),
    "bench-out-non-empty": (
        ["bench", "--quick", "--out", "plain_folder"],
        "bench",
        "--out plain_folder is a non-empty folder (holds notes.txt)",
    ),
    # -- demo
    "demo-epochs-0": (["demo", "--epochs", "0"], "demo", f"--epochs: {POSITIVE} '0'"),
    "demo-epochs--1": (["demo", "--epochs", "-1"], "demo", f"--epochs: {POSITIVE} '-1'"),
    "demo-epochs-1.5": (["demo", "--epochs", "1.5"], "demo", f"--epochs: {POSITIVE} '1.5'"),
    "demo-out-is-a-file": (
        ["demo", "--quick", "--out", "table.csv"],
        "demo",
        "--out table.csv exists and is not a directory",
    ),
    "demo-out-non-empty": (
        ["demo", "--quick", "--out", "plain_folder"],
        "demo",
        "--out plain_folder is a non-empty folder (holds notes.txt)",
    ),
}


@pytest.mark.parametrize("argv, command, message", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_clear_error_and_exit_2(
    inputs, tmp_path, monkeypatch, capsys, argv, command, message
):
    for source in inputs.iterdir():  # links: a refused write would show as a changed target
        (tmp_path / source.name).symlink_to(source)
    before = {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()}
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]
    prog = f"slift {command}" if command else "slift"
    assert last.startswith(f"{prog}: error: "), err
    assert message in last, (message, err)
    if not err.startswith("usage:"):  # errors past argparse are one line, no traceback
        assert err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in inputs.iterdir())
    assert {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()} == before


def test_help_exits_0(capsys):
    assert main(["generate", "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out
