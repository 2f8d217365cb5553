"""CF-style attributes of every ensemble, in memory, in netCDF and in zarr (issue 14).

Attribute values must be what netCDF (h5netcdf) and zarr 3 both store: strings, numbers
and lists of numbers, never None, bools, dicts or NaN. A stepper without a physical step
(``dt`` nan) counts time in steps and says so; :func:`slift_plugin.evaluate` never matches
those steps with physical times.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import slift_plugin
from slift_plugin import (
    MLP,
    Stepper,
    StochasticLifting,
    evaluate,
    load_ensemble,
    rollout,
    save_netcdf,
    tensor_to_ensemble,
)
from slift_plugin.data.ensemble import STEP_TIME_ATTRS, time_counts_steps
from slift_plugin.store import FINGERPRINT_ATTR
from slift_plugin.systems import (
    allen_cahn,
    double_well,
    lorenz63,
    lorenz96,
    ornstein_uhlenbeck,
    vlasov_two_stream,
)

VERSION = slift_plugin.__version__
ROLLOUT = dict(n_steps=3, n_samples=6, seed=1, chunk_size=4)


def tiny_stepper(dt: float = math.nan) -> StochasticLifting:
    """An untrained SL stepper with identity normalisation; nan dt: no physical step."""
    torch.manual_seed(0)  # weights only
    sl = StochasticLifting(MLP(1, 1, label_dim=4, hidden=8), (1,), dt=dt)
    sl.set_normalization({"state_mean": [0.0], "state_std": [1.0], "delta_std": [1.0]})
    return sl


def assert_storable(attrs: dict, where: str) -> None:
    """Strings, finite numbers and lists (arrays) of finite numbers only."""
    for key, value in attrs.items():
        name = f"{where}.attrs[{key!r}]"
        assert not isinstance(value, bool | np.bool_ | dict) and value is not None, name
        if isinstance(value, str):
            continue
        values = np.asarray(value)
        assert values.ndim <= 1 and values.dtype.kind in "iuf", (name, value)
        assert np.isfinite(values).all(), (name, value)


def assert_all_storable(da: xr.DataArray) -> None:
    """The DataArray's attrs, every coord's attrs, and no NaN in a numeric coord."""
    assert_storable(da.attrs, str(da.name))
    for name, coord in da.coords.items():
        assert_storable(coord.attrs, str(name))
        if coord.dtype.kind == "f":
            assert np.isfinite(coord.values).all(), name


def plain(attrs: dict) -> dict:
    """Attrs as Python values (netCDF reads numbers as numpy scalars, lists as arrays)."""
    return {k: v if isinstance(v, str) else np.asarray(v).tolist() for k, v in attrs.items()}


def open_quietly(path) -> xr.Dataset:
    """``xarray.open_dataset`` with CF decoding on and every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_dataset(path, engine="h5netcdf").load()


# -- rollout in memory --------------------------------------------------------------------------
def test_rollout_attrs_record_the_generation():
    ens = rollout(tiny_stepper(dt=0.25), torch.zeros(1), t0=1.0, **ROLLOUT)
    attrs = dict(ens.attrs)
    config = json.loads(attrs.pop("stepper_config"))  # what a checkpoint records
    assert config["stepper"]["class"] == "StochasticLifting"
    assert config["stepper"]["args"]["dt"] == 0.25
    assert config["stepper"]["modules"]["backbone"]["args"]["label_dim"] == 4
    assert attrs == {
        "long_name": "state",
        "source": f"slift_plugin {VERSION} rollout",
        "stepper": "StochasticLifting",
        "seed": 1,
        "n_steps": 3,
        "t0": 1.0,
        "dt": 0.25,
        "dtype": "float32",
        "device": "cpu",
        "autocast_dtype": "none",
        "slift_plugin_version": VERSION,
    }
    assert ens["time"].attrs == {"long_name": "time"}  # the unit of dt is not known here
    assert time_counts_steps(ens) is False
    np.testing.assert_allclose(ens["time"].values, 1.0 + 0.25 * np.arange(4))
    assert_all_storable(ens)


def test_autocast_dtype_and_parameters_are_labelled():
    sl = StochasticLifting(MLP(1, 1, label_dim=4, n_cond=1, hidden=8), (1,), n_params=1, dt=0.5)
    sl.set_normalization(
        {
            "state_mean": [0.0],
            "state_std": [1.0],
            "delta_std": [1.0],
            "param_mean": [0.0],
            "param_std": [1.0],
        }
    )
    ens = rollout(
        sl,
        torch.zeros(1),
        mu=[0.3],
        param_names=["a"],
        autocast_dtype=torch.bfloat16,
        **ROLLOUT,
    )
    assert ens.attrs["autocast_dtype"] == "bfloat16"
    assert ens["mu_a"].attrs == {"long_name": "physics parameter a"}
    assert_all_storable(ens)


def test_a_stepper_without_dt_counts_steps_and_writes_no_nan():
    ens = rollout(tiny_stepper(), torch.zeros(1), t0=2.0, **ROLLOUT)
    np.testing.assert_array_equal(ens["time"].values, 2.0 + np.arange(4))
    assert ens["time"].attrs == STEP_TIME_ATTRS
    assert ens["time"].attrs["long_name"] == "step" and ens["time"].attrs["units"] == "1"
    assert time_counts_steps(ens) is True
    assert "dt" not in ens.attrs
    assert_all_storable(ens)
    # a physical step given to rollout turns the steps into times
    timed = rollout(tiny_stepper(), torch.zeros(1), dt=0.5, **ROLLOUT)
    assert timed.attrs["dt"] == 0.5 and time_counts_steps(timed) is False
    np.testing.assert_allclose(timed["time"].values, 0.5 * np.arange(4))


class Field(Stepper):
    """A field stepper ``(C=1, grid=8)``: smoothing plus noise."""

    def __init__(self):
        super().__init__((1, 8), dt=0.01)
        self.register_buffer("weight", torch.tensor(0.3))

    def noise_shape(self, grid_shape):
        return (1, *grid_shape)

    def step(self, window, noise=None, *, mu=None, t=None):
        return window + self.weight * (window.roll(1, -1) - window) + 0.1 * noise

    def loss(self, batch):
        raise TypeError("a fixed test stepper: nothing to train")


def test_coords_of_a_reference_keep_their_attrs():
    ref = allen_cahn(n_samples=2, n_steps=1, dt=0.01, dt_internal=0.01, n_grid=8)
    ens = rollout(Field(), torch.zeros(1, 8), coords=ref.coords, **ROLLOUT)
    assert "not_describable" in json.loads(ens.attrs["stepper_config"])  # a test's own class
    assert ens["x"].attrs == {"long_name": "position", "units": "1"}
    assert ens["channel"].attrs == ref["channel"].attrs
    assert ens["time"].attrs == {"long_name": "time"}  # rollout's own, not the reference's


# -- files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", [0.25, math.nan])
def test_netcdf_round_trip_keeps_attrs_and_decodes_without_warnings(tmp_path, dt):
    ens = rollout(tiny_stepper(dt), torch.zeros(1), **ROLLOUT)
    before = ens.copy(deep=True)
    path = save_netcdf(ens, tmp_path / "ens.nc")
    xr.testing.assert_identical(ens, before)  # the caller's attrs are left alone
    ds = open_quietly(path)
    assert ds["time"].dtype == np.float64  # units "1": no datetime or timedelta decoding
    assert plain(ds["state"].attrs) == ens.attrs
    assert ds["time"].attrs == ens["time"].attrs
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert ds.attrs["source"] == f"slift_plugin {VERSION} rollout"
    assert f"slift_plugin {VERSION} (save_netcdf)" in ds.attrs["history"]
    xr.testing.assert_identical(load_ensemble(path), ens)
    # written again, the history grows by a line
    again = open_quietly(save_netcdf(ds, tmp_path / "again.nc"))
    assert again.attrs["history"].count("save_netcdf") == 2


@pytest.mark.parametrize("dt", [0.25, math.nan])
def test_zarr_store_carries_the_attrs_and_still_resumes(tmp_path, dt):
    path = tmp_path / "ens.zarr"
    in_memory = rollout(tiny_stepper(dt), torch.zeros(1), **ROLLOUT)
    streamed = rollout(tiny_stepper(dt), torch.zeros(1), out=path, **ROLLOUT)
    xr.testing.assert_identical(streamed.load(), in_memory)  # attrs and coord attrs too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no chunk regenerated, no metadata refused
        resumed = rollout(tiny_stepper(dt), torch.zeros(1), out=path, **ROLLOUT)
        ds = xr.open_zarr(path)
    xr.testing.assert_identical(resumed.load(), in_memory)
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert ds.attrs["source"] == f"slift_plugin {VERSION} rollout"
    assert f"slift_plugin {VERSION}" in ds.attrs["history"]
    assert plain(ds["state"].attrs) == in_memory.attrs
    # the group metadata is strict JSON: no NaN, also in the fingerprint
    meta = (path / "zarr.json").read_text()
    json.loads(meta, parse_constant=lambda c: pytest.fail(f"{c} in zarr.json"))
    assert zarr.open_group(path, mode="r").attrs[FINGERPRINT_ATTR]["dt"] == (
        None if math.isnan(dt) else dt
    )
    # the store opened as a Dataset goes to netCDF too (the fingerprint as a JSON string)
    nc = open_quietly(save_netcdf(ds, tmp_path / "from_zarr.nc"))
    assert json.loads(nc.attrs[FINGERPRINT_ATTR])["n_steps"] == 3


# -- reference systems --------------------------------------------------------------------------
SYSTEMS = {
    "ornstein_uhlenbeck": lambda: ornstein_uhlenbeck(
        4, 2, 0.1, theta=np.array([1.0, 2.0, 1.5, 0.5]), dt_internal=0.05
    ),
    "double_well": lambda: double_well(4, 2, 0.5, dt_internal=0.05),
    "lorenz63": lambda: lorenz63(4, 2, 0.01, dt_internal=0.005),
    "lorenz96": lambda: lorenz96(4, 2, dim=4, forcing=[8.0, 8.5, 9.0, 7.5]),
    "allen_cahn": lambda: allen_cahn(3, 2, dt=0.01, dt_internal=0.01, n_grid=8),
}


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_reference_systems_carry_units_and_long_names(system, tmp_path):
    da = SYSTEMS[system]()
    assert da.attrs["long_name"] and da.attrs["units"] == "1"
    assert da.attrs["source"] == f"slift_plugin {VERSION} slift_plugin.systems.{system}"
    assert da.attrs["system"] == system
    assert da["time"].attrs == {"long_name": "time", "units": "1"}
    assert time_counts_steps(da) is False
    assert da["channel"].attrs["long_name"]
    for name in da.coords:
        if str(name).startswith("mu_"):
            assert da[name].attrs == {"long_name": f"physics parameter {name[3:]}", "units": "1"}
    if system in ("ornstein_uhlenbeck", "lorenz96"):  # per-sample parameters
        assert any(str(name).startswith("mu_") for name in da.coords)
    if system == "allen_cahn":
        assert da["x"].attrs == {"long_name": "position", "units": "1"}
    assert_all_storable(da)
    ds = open_quietly(save_netcdf(da, tmp_path / f"{system}.nc"))
    assert plain(ds["state"].attrs) == plain(da.attrs)
    for name in da.coords:
        assert plain(ds[name].attrs) == plain(da[name].attrs), name
    assert ds.attrs["Conventions"] == "CF-1.10" and ds.attrs["source"] == da.attrs["source"]


def test_vlasov_dataset_is_labelled(tmp_path):
    ds = vlasov_two_stream(64, 2, n_grid=8, dt=0.5, dt_internal=0.25)
    state = ds["state"]
    assert state.attrs["units"] == "1" and state.attrs["long_name"]
    assert ds.attrs["source"] == state.attrs["source"]
    for name in ("field_energy", "field_energy_fine", "kinetic_energy_fine", "momentum_fine"):
        assert ds[name].attrs["long_name"] and ds[name].attrs["units"] == "1", name
    assert ds["time_fine"].attrs == {"long_name": "time", "units": "1"}
    assert ds["beam"].attrs["flag_meanings"].split() == [
        "drifting_at_plus_v0",
        "drifting_at_minus_v0",
    ]
    assert_all_storable(state)
    back = open_quietly(save_netcdf(ds, tmp_path / "vlasov.nc"))
    assert plain(back["beam"].attrs) == plain(ds["beam"].attrs)
    assert back["beam"].attrs["flag_values"].dtype == back["beam"].dtype  # CF: same type
    assert back.attrs["Conventions"] == "CF-1.10"


# -- evaluate -----------------------------------------------------------------------------------
def test_steps_are_never_matched_with_physical_times():
    ref = double_well(16, 8, 0.25, dt_internal=0.05)  # times 0, 0.25, ..., 2: 1.0, 2.0 too
    steps = rollout(tiny_stepper(), torch.zeros(1), n_steps=2, n_samples=6, seed=1)
    assert set(steps["time"].values) <= set(ref["time"].values)  # a match by value alone
    with pytest.raises(ValueError, match="generated ensemble counts time in steps"):
        evaluate(steps, ref)
    with pytest.raises(ValueError, match="reference ensemble counts time in steps"):
        evaluate(ref, steps.isel(sample=[0, 1, 2, 3, 4, 5, 0, 1]))
    # with the physical step, the same rollout evaluates, and the result keeps the labels
    timed = rollout(tiny_stepper(), torch.zeros(1), n_steps=2, n_samples=6, seed=1, dt=0.25)
    scores = evaluate(timed, ref)
    assert scores["time"].attrs == {"long_name": "time"}
    np.testing.assert_allclose(scores["time"].values, [0.0, 0.25, 0.5])


def test_steps_match_steps_and_unmarked_times():
    steps = rollout(tiny_stepper(), torch.zeros(1), n_steps=2, n_samples=6, seed=1)
    other = rollout(tiny_stepper(), torch.zeros(1), n_steps=2, n_samples=8, seed=2)
    scores = evaluate(steps, other)
    assert scores["time"].attrs == STEP_TIME_ATTRS
    # times given by hand say nothing about what they count: matched by value, as before
    plain_ref = tensor_to_ensemble(other.values, np.arange(3.0))
    assert time_counts_steps(plain_ref) is None
    evaluate(steps, plain_ref)
