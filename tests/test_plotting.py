"""The figures: real matplotlib output, and no side effects on the user's matplotlib."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from slift_plugin import evaluate
from slift_plugin.systems import allen_cahn


def test_import_and_plot_keep_the_users_backend(tmp_path):
    # A user who picked a backend (here svg, chosen before our import) keeps it, and pyplot
    # holds no figure of ours afterwards.
    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
import numpy as np, xarray as xr
from slift_plugin.plotting import field_ensemble_figure
from slift_plugin.systems import allen_cahn
from slift_plugin import evaluate
ref = allen_cahn(n_samples=8, n_steps=3, dt=0.4, n_grid=16, seed=0)
gen = allen_cahn(n_samples=4, n_steps=3, dt=0.4, n_grid=16, seed=1)
field_ensemble_figure(ref, {{"g": gen}}, {{"g": evaluate(gen, ref)}}, r"{tmp_path / "f.png"}")
assert matplotlib.get_backend().lower() == "svg", matplotlib.get_backend()
assert plt.get_fignums() == [], plt.get_fignums()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.fixture(scope="module")
def ensembles():
    ref = allen_cahn(n_samples=8, n_steps=3, dt=0.4, n_grid=16, seed=0)
    gen = allen_cahn(n_samples=4, n_steps=3, dt=0.4, n_grid=16, seed=1)
    return ref, {"g": gen}, {"g": evaluate(gen, ref)}


def test_returns_a_figure_and_writes_only_when_asked(ensembles, tmp_path):
    from matplotlib.figure import Figure

    from slift_plugin.plotting import field_ensemble_figure

    fig = field_ensemble_figure(*ensembles)
    assert isinstance(fig, Figure)
    assert list(tmp_path.iterdir()) == []
    # The energy-distance panel holds one line per model plus the noise floor, with the
    # values evaluate() computed.
    ed_axes = [ax for ax in fig.axes if ax.get_title() == "energy distance to reference"]
    assert len(ed_axes) == 1
    lines = ed_axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), ensembles[2]["g"]["energy_distance"])
    np.testing.assert_allclose(lines[1].get_ydata(), ensembles[2]["g"]["noise_floor"])

    path = tmp_path / "fig.png"
    field_ensemble_figure(*ensembles, path, title="t")
    image = matplotlib.image.imread(path)
    width, height = fig.get_size_inches() * 90
    assert image.shape[:2] == (round(height), round(width))
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temp file left


def test_bad_inputs_are_clear_errors(ensembles):
    from slift_plugin.plotting import field_ensemble_figure

    ref, models, metrics = ensembles
    with pytest.raises(ValueError, match="keyed like models"):
        field_ensemble_figure(ref, models, {})
    with pytest.raises(ValueError, match="keyed like models"):
        field_ensemble_figure(ref, models, {"other": metrics["g"]})
    with pytest.raises(ValueError, match="fewer than n_trajectories=5"):
        field_ensemble_figure(ref, models, metrics, n_trajectories=5)
    with pytest.raises(ValueError, match="needs dims"):
        field_ensemble_figure(ref.rename(time="t"), models, metrics)
