"""``slift train``, ``slift sample`` and ``slift --version`` (issue 14, item 4).

End to end without Python: ``slift generate`` -> ``slift train`` -> ``slift sample`` ->
``slift evaluate``. The Ornstein-Uhlenbeck case checks the sampled law at the last time
against the closed-form transition law (an independent truth), and that a model trained
with MSE fails the same check; the field case (a tiny FNO) checks dims, coords and spread.
Bad input is one line on stderr, exit status 2 and no file written, as in
tests/test_bad_input_cli.py.
"""

import argparse
import math
import shutil
from importlib.metadata import version

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from slift_plugin import StochasticLifting, load_ensemble, save_netcdf
from slift_plugin.cli import build_parser, main
from slift_plugin.systems import allen_cahn, ornstein_uhlenbeck

# The OU problem: x0 = 1, theta = 1, sigma = 0.5 (the generator's defaults), 4 steps of
# 0.25 up to t = 1. Its law at t: N(x0 e^{-theta t}, sigma^2 (1 - e^{-2 theta t}) / 2 theta).
OU_PARAMS = '{"dt": 0.25}'
OU_MEAN = math.exp(-1.0)
OU_STD = math.sqrt(0.5**2 * (1 - math.exp(-2.0)) / 2)
# Measured with training seeds 0, 1, 2 (this size, 2,000 transitions, 40 epochs): mean
# within 0-4% and std within 3-9% of the closed form; the tolerances leave room for
# another platform's round-off. The sampling error of 4,000 samples is about 1%.
MEAN_TOL, STD_TOL = 0.10, 0.20
QUIET = ["--quiet"]


def run(*argv):
    """``slift argv...`` in this process; its exit status."""
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def ou(tmp_path_factory):
    """Training data (500 trajectories) and a reference (4,000), by name."""
    root = tmp_path_factory.mktemp("ou")
    for name, n, seed in (("train.nc", 500, 0), ("reference.nc", 4000, 1)):
        generate = ["generate", "ornstein_uhlenbeck", "--out", root / name, "--seed", seed]
        assert run(*generate, "--n-samples", n, "--n-steps", 4, "--params", OU_PARAMS) == 0
    return root


def train_and_sample(root, method, epochs):
    """Train ``method`` on the OU data, sample 4,000 paths from x0 = 1; the ensemble."""
    ckpt, ens = root / f"ckpt-{method}", root / f"{method}.nc"
    sizes = ["--hidden", 128, "--label-dim", 32, "--batch-size", 64, "--lr", 3e-3]
    train = ["train", root / "train.nc", "--out", ckpt, "--method", method, *sizes]
    assert run(*train, "--epochs", epochs, "--weight-decay", 0, *QUIET) == 0
    sample = ["sample", ckpt, "--data", root / "train.nc", "--sample-index", 0, "--n-steps", 4]
    assert run(*sample, "--n-samples", 4000, "--out", ens, "--seed", 5, *QUIET) == 0
    return load_ensemble(ens)


def law_at_last_time(ens):
    """Relative errors of the mean and std at t = 1 against the closed form."""
    assert float(ens["time"][-1]) == pytest.approx(1.0)
    x = ens.isel(time=-1).values.ravel()
    return abs(x.mean() / OU_MEAN - 1), abs(x.std() / OU_STD - 1)


def test_ou_sl_reproduces_the_closed_form_law_and_mse_does_not(ou, capsys):
    sl = train_and_sample(ou, "sl", epochs=40)
    assert "trained sl on a mlp backbone: 2000 transitions, dt 0.25" in capsys.readouterr().out
    assert dict(sl.sizes) == {"sample": 4000, "time": 5, "channel": 1}
    np.testing.assert_allclose(sl["time"], [0, 0.25, 0.5, 0.75, 1.0])
    assert (sl.isel(time=0) == 1.0).all()  # every path starts at the chosen x0
    mean_error, std_error = law_at_last_time(sl)
    assert mean_error < MEAN_TOL and std_error < STD_TOL, (mean_error, std_error)

    table = ou / "metrics.csv"
    assert run("evaluate", ou / "sl.nc", ou / "reference.nc", "--out", table) == 0
    final = pd.read_csv(table).iloc[-1]
    assert final["std_rel_error"] < STD_TOL and final["mean_rel_error"] < MEAN_TOL

    # The deterministic baseline puts every path on the mean: its std fails the check.
    mse = train_and_sample(ou, "mse", epochs=5)
    mean_error, std_error = law_at_last_time(mse)
    assert std_error > 0.9, std_error


def test_field_fno_train_sample_evaluate(tmp_path, capsys):
    data = tmp_path / "ac.nc"
    params = '{"n_grid": 16}'
    generate = ["generate", "allen_cahn", "--out", data, "--n-samples", 32, "--n-steps", 4]
    assert run(*generate, "--params", params) == 0
    sizes = ["--n-modes", 4, "--hidden-channels", 8, "--n-layers", 2, "--label-dim", 4]
    train = ["train", data, "--out", tmp_path / "ckpt", "--backbone", "fno", *sizes]
    assert run(*train, "--epochs", 3, *QUIET) == 0
    out = tmp_path / "ens.zarr"
    sample = ["sample", tmp_path / "ckpt", "--data", data, "--time-index", 1, "--n-steps", 3]
    assert run(*sample, "--n-samples", 64, "--chunk-size", 32, "--out", out, *QUIET) == 0
    assert "wrote" in capsys.readouterr().out
    ens, ref = load_ensemble(out), load_ensemble(data)
    assert ens.dims == ("sample", "time", "channel", "x")
    assert dict(ens.sizes) == {"sample": 64, "time": 4, "channel": 1, "x": 16}
    np.testing.assert_allclose(ens["time"], ref["time"][1:])  # starts at time index 1
    np.testing.assert_array_equal(ens["x"], ref["x"])
    assert list(ens["channel"].values) == list(ref["channel"].values)
    # sample i starts from data sample i mod 32, at time index 1
    np.testing.assert_array_equal(ens.isel(time=0)[33], ref.isel(time=1)[1])
    spread = ens.std("sample").mean(("channel", "x")).values
    assert (spread[1:] > 1e-4).all(), spread  # fresh labels: the paths differ
    assert run("evaluate", out, data, "--out", tmp_path / "m.csv") == 0
    assert len(pd.read_csv(tmp_path / "m.csv")) == 4


def round_trip_data(kind):
    """Tiny training data: vectors, vectors with a physics parameter, or a 1-D field."""
    if kind == "field":
        return allen_cahn(n_samples=8, n_steps=3, n_grid=8, seed=0)
    theta = np.linspace(0.5, 2.0, 32) if kind == "params" else 1.0
    return ornstein_uhlenbeck(n_samples=32, n_steps=3, theta=theta, seed=0)


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("vectors", ["--method", "cfm", "--n-euler", 2]),
        ("vectors", ["--method", "es"]),
        ("vectors", ["--method", "dice", "--n-substeps", 2]),
        ("vectors", ["--history", 2]),
        ("params", ["--method", "sl"]),
        ("params", ["--method", "cfm", "--n-euler", 2]),
        ("field", ["--backbone", "uno", "--injection", "noise_field"]),
        ("field", ["--backbone", "tfno", "--method", "cfm", "--n-euler", 2]),
    ],
    ids=["cfm", "es", "dice", "history-2", "sl-mu", "cfm-mu", "uno-noise-field", "tfno-cfm"],
)
def test_every_method_and_backbone_round_trips(tmp_path, kind, extra):
    data = tmp_path / "data.nc"
    save_netcdf(round_trip_data(kind), data)
    field = kind == "field"
    sizes = ["--n-modes", 2, "--hidden-channels", 4, "--n-layers", 1] if field else ["--hidden", 8]
    ckpt = tmp_path / "ckpt"
    train = ["train", data, "--out", ckpt, "--epochs", 1, "--label-dim", 2, *sizes, *extra]
    assert run(*train, *QUIET) == 0
    out = tmp_path / "ens.nc"
    sample = ["sample", ckpt, "--data", data, "--time-index", -2, "--n-steps", 2, "--out", out]
    assert run(*sample, "--n-samples", 64, *QUIET) == 0
    result, source = load_ensemble(out), load_ensemble(data)
    assert result.sizes["sample"] == 64 and result.sizes["time"] == 3
    assert np.isfinite(result.values).all()
    np.testing.assert_allclose(result["time"][0], source["time"][-2])
    if kind == "params":  # sample i has the parameter of data sample i mod 32
        np.testing.assert_allclose(result["mu_theta"], np.tile(source["mu_theta"], 2))


# -- resume ---------------------------------------------------------------------------------
class Stop(Exception):
    """Raised out of training, as a crash would."""


def test_resume_continues_the_epochs_and_refuses_other_data(tmp_path, monkeypatch, capsys):
    data, other = tmp_path / "a.nc", tmp_path / "b.nc"
    save_netcdf(ornstein_uhlenbeck(n_samples=32, n_steps=2, seed=0), data)
    save_netcdf(ornstein_uhlenbeck(n_samples=32, n_steps=2, seed=1), other)
    ckpt = tmp_path / "ckpt"
    # 64 transitions in batches of 16: 4 steps per epoch; crash in epoch 3 of 4
    train = ["--out", ckpt, "--epochs", 4, "--batch-size", 16, "--hidden", 8, "--label-dim", 2]
    train += ["--checkpoint-every", 1, *QUIET]
    loss, calls = StochasticLifting.loss, [0]

    def crashing_loss(self, batch):
        calls[0] += 1
        if calls[0] > 9:
            raise Stop
        return loss(self, batch)

    monkeypatch.setattr(StochasticLifting, "loss", crashing_loss)
    with pytest.raises(Stop):
        run("train", data, *train)
    monkeypatch.undo()
    assert torch.load(ckpt / "last.pt", weights_only=True)["epoch"] == 2
    capsys.readouterr()

    assert run("train", data, *train) == 2  # neither --resume nor --overwrite
    assert "holds a checkpoint (last.pt); pass --resume" in capsys.readouterr().err
    assert run("train", other, *train, "--resume") == 2  # the checkpoint is of other data
    assert "cannot resume this run: it was trained on other data" in capsys.readouterr().err

    assert run("train", data, *train, "--resume") == 0
    assert "4 epochs (resumed after epoch 2)" in capsys.readouterr().out
    assert torch.load(ckpt / "last.pt", weights_only=True)["epoch"] == 4
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"]  # no lock left behind

    assert run("train", other, *train, "--overwrite") == 0  # afresh, on the other data
    assert "resumed" not in capsys.readouterr().out


def test_resume_without_a_checkpoint_starts_afresh(tmp_path, capsys):
    data = tmp_path / "a.nc"
    save_netcdf(ornstein_uhlenbeck(n_samples=8, n_steps=2, seed=0), data)
    assert run("train", data, "--out", tmp_path / "new", "--epochs", 1, "--resume", *QUIET) == 0
    assert "no checkpoint in" in capsys.readouterr().err
    assert (tmp_path / "new" / "last.pt").is_file()


# -- version and help -----------------------------------------------------------------------
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"slift {version('slift-plugin')}\n"


def subcommands():
    """``{name: parser}`` of every ``slift`` sub-command."""
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_explains_every_argument_with_its_default_and_choices(name, capsys):
    parser = subcommands()[name]
    assert main([name, "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        label = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help, f"{name} {label} has no help text"
        if action.choices is not None and not isinstance(action.default, list):
            assert "{" + ",".join(map(str, action.choices)) + "}" in shown, label
        if action.default is None or action.default is False or action.required:
            continue  # no default to show: a flag, a required one, or named in the help
        assert f"(default: {action.default})" in shown or "default" in action.help, label


def test_train_and_sample_help_name_their_options(capsys):
    assert main(["train", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for text in ("{sl,mse,cfm,es,dice}", "{auto,mlp,fno,tfno,uno}", "(default: 100)"):
        assert text in shown
    assert "{channels,noise_field,embedding}" in shown
    assert main(["sample", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "(--x0 FILE | --data FILE)" in shown and "(default: 1024)" in shown


# -- bad input ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Input files of each kind, by name, and a tiny trained checkpoint folder."""
    root = tmp_path_factory.mktemp("inputs")
    ou_data = ornstein_uhlenbeck(n_samples=32, n_steps=2, seed=0)
    save_netcdf(ou_data, root / "ou.nc")
    ou_data.to_dataset(name="state").to_zarr(root / "ou.zarr", consolidated=False)
    save_netcdf(ou_data.isel(time=[0]), root / "one_step.nc")
    nan = ou_data.copy(deep=True)
    nan[3, 1, 0] = np.nan
    save_netcdf(nan, root / "nan.nc")
    save_netcdf(ou_data.assign_coords(mu_theta=("sample", np.ones(32))), root / "with_mu.nc")
    save_netcdf(allen_cahn(n_samples=4, n_steps=2, n_grid=8, seed=0), root / "field.nc")
    (root / "empty.nc").write_bytes(b"")
    (root / "corrupt.pt").write_bytes(b"not a checkpoint")
    tiny = ["--epochs", 1, "--hidden", 8, "--label-dim", 2, *QUIET]
    assert run("train", root / "ou.nc", "--out", root / "ckpt", *tiny) == 0
    return root


T = ["train", "ou.nc", "--out", "new_ckpt"]
S = ["sample", "ckpt", "--data", "ou.nc", "--n-steps", "2", "--out", "ens.nc"]
POSITIVE = "expected a positive integer, got"

CASES = {
    # -- train
    "train-missing-data": (
        ["train", "none.nc", "--out", "c"],
        "train",
        "no ensemble file at none.nc",
    ),
    "train-unreadable": (
        ["train", "empty.nc", "--out", "c"],
        "train",
        "could not read an ensemble from empty.nc",
    ),
    "train-one-time-step": (
        ["train", "one_step.nc", "--out", "c"],
        "train",
        "one_step.nc has 1 time step(s); training with --history 1 needs at least 2",
    ),
    "train-nan": (
        ["train", "nan.nc", "--out", "c"],
        "train",
        "nan.nc holds NaN or Inf (first at sample 3, time index 1)",
    ),
    "train-mlp-on-fields": (
        ["train", "field.nc", "--out", "c", "--backbone", "mlp"],
        "train",
        "--backbone mlp takes vector data with dims (sample, time, channel); field.nc has the "
        "grid dims ('x',)",
    ),
    "train-fno-on-vectors": (
        [*T, "--backbone", "fno"],
        "train",
        "--backbone fno takes fields with grid dims after channel",
    ),
    "train-modes-per-dim": (
        ["train", "field.nc", "--out", "c", "--n-modes", "2", "2"],
        "train",
        "--n-modes takes one count or one per grid dim (1), got 2",
    ),
    "train-dice-history": (
        [*T, "--method", "dice", "--history", "2"],
        "train",
        "--method dice is Markov: --history must be 1",
    ),
    "train-out-is-input": (
        ["train", "ou.nc", "--out", "./ou.nc", "--overwrite"],
        "train",
        "--out ./ou.nc is the input ou.nc",
    ),
    "train-out-in-input-store": (
        ["train", "ou.zarr", "--out", "ou.zarr/ckpt"],
        "train",
        "--out ou.zarr/ckpt is the input ou.zarr or inside it",
    ),
    "train-out-holds-checkpoint": (
        ["train", "ou.nc", "--out", "ckpt"],
        "train",
        "--out ckpt holds a checkpoint (last.pt); pass --resume to continue its training, or "
        "--overwrite to start afresh",
    ),
    "train-out-is-a-file": (
        ["train", "ou.nc", "--out", "field.nc"],
        "train",
        "--out field.nc exists and is not a directory",
    ),
    "train-resume-and-overwrite": (
        [*T, "--resume", "--overwrite"],
        "train",
        "argument --overwrite: not allowed with argument --resume",
    ),
    "train-epochs-0": ([*T, "--epochs", "0"], "train", f"--epochs: {POSITIVE} '0'"),
    "train-lr-negative": ([*T, "--lr", "-1"], "train", "--lr: expected a finite number > 0"),
    "train-lr-nan": ([*T, "--lr", "nan"], "train", "--lr: expected a finite number > 0"),
    "train-unknown-method": ([*T, "--method", "gan"], "train", "invalid choice: 'gan'"),
    # -- sample
    "sample-missing-checkpoint": (
        ["sample", "none.pt", "--data", "ou.nc", "--n-steps", "2", "--out", "e.nc"],
        "sample",
        "no checkpoint file at none.pt",
    ),
    "sample-corrupt-checkpoint": (
        ["sample", "corrupt.pt", "--data", "ou.nc", "--n-steps", "2", "--out", "e.nc"],
        "sample",
        "checkpoint corrupt.pt is corrupt or not a slift checkpoint",
    ),
    "sample-missing-x0": (
        ["sample", "ckpt", "--x0", "none.nc", "--n-steps", "2", "--out", "e.nc"],
        "sample",
        "no ensemble file at none.nc",
    ),
    "sample-no-start": (
        ["sample", "ckpt", "--n-steps", "2", "--out", "e.nc"],
        "sample",
        "one of the arguments --x0 --data is required",
    ),
    "sample-time-index-out-of-range": (
        [*S, "--time-index", "3"],
        "sample",
        "--time-index 3 is out of range: ou.nc's time axis has 3 (0 to 2)",
    ),
    "sample-time-index-negative": (
        [*S, "--time-index", "-4"],
        "sample",
        "--time-index -4 is out of range",
    ),
    "sample-time-index-with-x0": (
        ["sample", "ckpt", "--x0", "ou.nc", "--time-index", "1", "--n-steps", "2", "--out", "e.nc"],
        "sample",
        "--time-index picks a time of --data; --x0 starts from its last time",
    ),
    "sample-sample-index-out-of-range": (
        [*S, "--sample-index", "32"],
        "sample",
        "--sample-index 32 is out of range: ou.nc has 32 (0 to 31)",
    ),
    "sample-n-samples-not-a-multiple": (
        [*S, "--n-samples", "48"],
        "sample",
        "--n-samples 48 is not a multiple of the 32 initial states",
    ),
    "sample-field-for-a-vector-model": (
        ["sample", "ckpt", "--data", "field.nc", "--n-steps", "2", "--out", "e.nc"],
        "sample",
        "x0 must have shape (1,)",
    ),
    "sample-params-the-model-lacks": (
        ["sample", "ckpt", "--data", "with_mu.nc", "--n-steps", "2", "--out", "e.nc"],
        "sample",
        "the model takes 0 physics parameter(s), but with_mu.nc has 1 (mu_<name> coords: "
        "['theta'])",
    ),
    "sample-nan-start": (
        [
            "sample",
            "ckpt",
            "--data",
            "nan.nc",
            "--time-index",
            "1",
            "--n-steps",
            "2",
            "--out",
            "e.nc",
        ],
        "sample",
        "the initial states taken from nan.nc hold NaN or Inf",
    ),
    "sample-n-euler-not-cfm": (
        [*S, "--n-euler", "4"],
        "sample",
        "--n-euler applies to flow-matching models; ckpt/last.pt holds a StochasticLifting",
    ),
    "sample-out-is-input": (
        ["sample", "ckpt", "--data", "ou.nc", "--n-steps", "2", "--out", "ou.nc", "--overwrite"],
        "sample",
        "--out ou.nc is the input ou.nc",
    ),
    "sample-out-is-input-store": (
        [
            "sample",
            "ckpt",
            "--data",
            "ou.zarr",
            "--n-steps",
            "2",
            "--out",
            "ou.zarr",
            "--overwrite",
        ],
        "sample",
        "--out ou.zarr is, holds or lies in the input ou.zarr",
    ),
    "sample-out-exists": (
        ["sample", "ckpt", "--data", "ou.nc", "--n-steps", "2", "--out", "nan.nc"],
        "sample",
        "--out nan.nc already exists; pass --overwrite to replace it",
    ),
    "sample-out-suffix": (
        ["sample", "ckpt", "--data", "ou.nc", "--n-steps", "2", "--out", "e.csv"],
        "sample",
        "--out e.csv must end in .zarr (a zarr store, written chunk by chunk) or .nc",
    ),
    "sample-n-steps-0": ([*S[:4], "--n-steps", "0", "--out", "e.nc"], "sample", POSITIVE),
}


@pytest.mark.parametrize("argv, command, message", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_clear_error_and_exit_2(
    inputs, tmp_path, monkeypatch, capsys, argv, command, message
):
    for source in inputs.iterdir():  # links: a refused write would show as a changed target
        (tmp_path / source.name).symlink_to(source)
    before = {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()}
    ckpt_before = (inputs / "ckpt" / "last.pt").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"slift {command}: error: "), err
    assert message in last, (message, err)
    if not err.startswith("usage:"):  # errors past argparse are one line, no traceback
        assert err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in inputs.iterdir())
    assert {p.name: p.read_bytes() for p in inputs.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (inputs / "ckpt").iterdir()) == ["last.pt"]
    assert (inputs / "ckpt" / "last.pt").read_bytes() == ckpt_before


def test_sample_overwrite_replaces_a_store_and_a_rerun_resumes_it(inputs, tmp_path, capsys):
    out = tmp_path / "ens.zarr"
    sample = ["sample", inputs / "ckpt", "--data", inputs / "ou.nc", "--n-steps", 2, "--out", out]
    assert run(*sample, "--chunk-size", 16, *QUIET) == 0
    first = load_ensemble(out)
    assert run(*sample, "--chunk-size", 16, *QUIET) == 0  # the same generation: resumed
    xr.testing.assert_identical(load_ensemble(out), first)
    assert run(*sample, "--seed", 1, *QUIET) == 2  # another generation: refused
    assert "holds a different rollout" in capsys.readouterr().err
    # --overwrite whose sampling fails keeps the old store (it is only moved aside)
    other_data = ["sample", inputs / "ckpt", "--data", inputs / "field.nc", "--n-steps", 2]
    assert run(*other_data, "--out", out, "--overwrite", *QUIET) == 2
    assert "x0 must have shape" in capsys.readouterr().err
    xr.testing.assert_identical(load_ensemble(out), first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.zarr"]
    assert run(*sample, "--seed", 1, "--overwrite", *QUIET) == 0
    assert not np.array_equal(load_ensemble(out).values, first.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.zarr"]
    shutil.rmtree(out)
