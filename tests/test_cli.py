"""The command line, the demo pipeline and the example scripts (CI-sized runs)."""

import json
import runpy
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from slift_plugin import load_ensemble
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


@pytest.mark.parametrize(
    "script", ["fno_allen_cahn.py", "dice_vlasov.py", "replace_sdeint_lorenz.py"]
)
def test_example_quick_mode(script, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(sys, "argv", [script, "--quick"])
    namespace = runpy.run_path(str(ROOT / "examples" / script), run_name="example")
    uses_out = "fno" not in script
    args = ["--quick"] + (["--out", str(tmp_path), "--threads", "1"] if uses_out else [])
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
