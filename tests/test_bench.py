"""The benchmark machinery: memory accounting, method names, seed handling, aggregation,
problem scores, and a quick end-to-end run whose result files are checked."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from slift_plugin import MeanRegression, evaluate
from slift_plugin.adapters import neuralop as neuralop_adapter
from slift_plugin.bench import BenchConfig, BenchResult, aggregate, run_bench, runs_frame
from slift_plugin.bench import methods as M
from slift_plugin.bench.memory import TensorMemoryTracker, peak_memory
from slift_plugin.bench.methods import parse_method
from slift_plugin.bench.problems import (
    LORENZ96_INIT_STD,
    LORENZ96_TEST_FORCING,
    PROBLEM_KINDS,
    PROBLEMS,
    autocorrelation,
    build_problem,
    lorenz96_runs,
    spatial_autocovariance,
    spatial_autocovariance_error,
    spectrum_error,
    well_occupancy_error,
)
from slift_plugin.bench.report import RUN_SCHEMA, markdown_report, markdown_table
from slift_plugin.bench.runner import DATA_SEED
from slift_plugin.cli import main
from slift_plugin.labels import hash_seed

# -- peak memory ---------------------------------------------------------------------------


def test_peak_memory_counts_live_storage_exactly():
    n = 1000

    def transient():  # one buffer at a time: the peak is two (old and new) at the rebind
        x = torch.zeros(n)
        for _ in range(5):
            x = x + 1
        return x

    def hoarding():  # every buffer stays alive
        return [torch.zeros(n) + k for k in range(5)]

    _, peak_transient = peak_memory(transient)
    _, peak_hoarding = peak_memory(hoarding)
    assert peak_transient == 2 * 4 * n
    # zeros + (zeros + k) per item: the zeros die right after the add, the sums stay
    assert peak_hoarding == 5 * 4 * n + 4 * n


def test_views_keep_their_storage_alive():
    with TensorMemoryTracker() as tracker:
        big = torch.ones(10_000)
        view = big[:10]
        del big
        alive = tracker.current
        del view
        after = tracker.current
    assert alive == 40_000  # the view holds the whole storage
    assert after == 0


# -- method names and configuration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family", "label", "injection", "k"),
    [
        ("sl", "sl", 32, "channels", 0),
        ("sl-l8", "sl", 8, "channels", 0),
        ("sl-noise_field", "sl", 32, "noise_field", 0),
        ("sl-embedding-l16", "sl", 16, "embedding", 0),
        ("cfm5", "cfm", 32, "channels", 5),
        ("dice", "dice", 32, "channels", 0),
    ],
)
def test_parse_method(name, family, label, injection, k):
    spec = parse_method(name)
    assert (spec.family, spec.label_dim, spec.injection, spec.n_euler) == (
        family,
        label,
        injection,
        k,
    )


def test_cfm_variants_share_one_training():
    assert parse_method("cfm5").training_key == parse_method("cfm20").training_key


def test_bf16_variants_share_the_float32_training():
    spec = parse_method("sl-noise_field-l8-bf16")
    assert spec.bf16 and (spec.injection, spec.label_dim) == ("noise_field", 8)
    assert spec.training_key == "sl-noise_field-l8"
    assert parse_method("cfm5-bf16").training_key == "cfm"
    assert not parse_method("sl").bf16


@pytest.mark.parametrize(
    "name", ["gan", "sl-l0", "cfm0", "sl-foo", "sl-l", "dice-bf16", "sl-bf16-bf16", "sl\n"]
)
def test_bad_method_names_are_refused(name):
    with pytest.raises(ValueError, match="method|label|Euler"):
        parse_method(name)


def test_an_unknown_name_is_told_what_the_registry_accepts():
    with pytest.raises(ValueError) as err:
        parse_method("gan")
    message = str(err.value)
    assert "sl[-<injection>][-l<L>] (<injection>: channels, noise_field, embedding)" in message
    assert "mse, cfm<K>, es, dice;" in message
    assert "the sl, sl-coupled, mse, cfm, es methods also take a -bf16 suffix" in message


def test_default_methods_follow_from_the_families():
    assert list(M.FAMILIES) == ["solver", "sl", "sl-coupled", "mse", "cfm", "es", "dice"]
    assert set(PROBLEM_KINDS) == set(PROBLEMS)
    vector = (
        "solver",
        "sl",
        "sl-l8",
        "sl-l128",
        "sl-coupled",
        "mse",
        "cfm5",
        "cfm20",
        "es",
        "dice",
    )
    assert M.default_methods("double_well") == vector
    # DICE's point start on Lorenz-63 is outside its regime: not run there
    assert M.default_methods("lorenz63") == vector[:-1]
    assert M.default_methods("allen_cahn") == (
        "solver",
        "sl-channels",
        "sl-noise_field",
        "sl-embedding",
        "sl-coupled",
        "mse",
        "cfm5",
        "cfm20",
        "es",
        "dice",
    )
    assert M.default_methods("vlasov") == ("solver", "dice")
    assert M.default_methods("lorenz96") == ("solver", "cfm5", "cfm20", "dice")


def test_dice_is_not_run_outside_its_regime():
    lorenz96 = build_problem("lorenz96", quick=True, seed=0)
    lorenz63 = dataclasses.replace(lorenz96, name="lorenz63", kind="vector")
    dice, cfm = parse_method("dice"), parse_method("cfm5")
    assert not M.applies(dice, lorenz63) and M.applies(cfm, lorenz63)
    assert M.not_applicable_reason(dice, lorenz63).startswith("outside DICE's regime")
    assert M.applies(dice, lorenz96) and M.not_applicable_reason(dice, lorenz96) == ""
    assert M.not_applicable_reason(parse_method("sl"), lorenz96) == (
        "not applicable to population problems"
    )
    # the runner records the reason with the skipped pair
    config = BenchConfig(problems=["lorenz63"], methods=["dice"], seeds=(0,), quick=True)
    result = run_bench(config, progress=False)
    assert not result.runs
    assert result.skipped == [
        {
            "problem": "lorenz63",
            "method": "dice",
            "reason": M.FAMILIES["dice"].outside_regime["lorenz63"],
        }
    ]


def test_sl_injections_are_the_adapters(monkeypatch):
    injections = neuralop_adapter.INJECTIONS
    field_sl = [parse_method(n) for n in M.default_methods("allen_cahn")]
    assert tuple(s.injection for s in field_sl if s.family == "sl") == injections
    assert M.DEFAULT_INJECTION in injections
    # read from the adapter at parse time, not copied
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("sl-film")
    monkeypatch.setattr(neuralop_adapter, "INJECTIONS", (*injections, "film"))
    assert parse_method("sl-film-l4").injection == "film"


class _Ridge(type(M.FAMILIES["mse"])):
    """A new family: the MSE regression under another name, on vectors only."""

    name = "ridge"
    kinds = ("vector",)


def test_adding_a_method_is_one_family(monkeypatch):
    monkeypatch.setattr(M, "FAMILIES", dict(M.FAMILIES))  # restored after the test
    with pytest.raises(ValueError, match="unknown method 'ridge'"):
        parse_method("ridge")
    M.register_family(_Ridge())
    with pytest.raises(ValueError, match="registered already"):
        M.register_family(_Ridge())

    spec = parse_method("ridge-bf16")
    assert (spec.family, spec.bf16, spec.training_key) == ("ridge", True, "ridge")
    assert M.default_methods("double_well")[-2:] == ("dice", "ridge")
    assert "ridge" not in M.default_methods("allen_cahn")
    with pytest.raises(ValueError, match=r"dice, ridge;.* mse, cfm, es, ridge methods"):
        parse_method("gan")

    problem = build_problem("double_well", quick=True, seed=0)
    assert M.applies(parse_method("ridge"), problem)
    assert not M.applies(parse_method("ridge"), dataclasses.replace(problem, kind="field"))
    torch.manual_seed(0)
    ridge = M.build_stepper(parse_method("ridge"), problem, True, 0)
    torch.manual_seed(0)
    mse = M.build_stepper(parse_method("mse"), problem, True, 0)
    assert type(ridge) is MeanRegression
    assert ridge.state_dict().keys() == mse.state_dict().keys()
    for key, value in mse.state_dict().items():
        assert torch.equal(ridge.state_dict()[key], value), key

    config = BenchConfig(problems=["double_well"], methods=["ridge"], seeds=(0,), quick=True)
    (row,) = run_bench(config, progress=False).runs
    assert (row["method"], row["family"]) == ("ridge", "ridge")
    assert row["std_rel_error_final"] > 0.9  # collapses to the mean, like mse


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"problems": ["navier_stokes"]}, "unknown problems"),
        ({"problems": []}, "no problems"),
        ({"seeds": (0, 0)}, "distinct"),
        ({"seeds": ()}, "at least one"),
        ({"methods": ["sl", "gan"]}, "unknown method"),
        ({"threads": 0}, "threads"),
        ({"floor_splits": 0}, "floor_splits"),
    ],
)
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BenchConfig(**kwargs)


def test_floor_splits_reach_the_scores_and_the_report():
    small = dict(problems=["double_well"], methods=["solver"], seeds=(0,), quick=True)
    one = run_bench(BenchConfig(**small), progress=False)
    four = run_bench(BenchConfig(floor_splits=4, **small), progress=False)
    problem = build_problem("double_well", quick=True, seed=DATA_SEED)
    # the solver row's own draw (seeded like the runner's)
    ens = problem.solve(problem.n_generate, hash_seed(DATA_SEED, 0, 11))
    ens = ens.assign_coords(time=problem.reference["time"].values)
    for result, n_splits in ((one, 1), (four, 4)):
        expected = evaluate(ens, problem.reference, seed=0, n_splits=n_splits)["ed_ratio"]
        (row,) = result.runs
        k = problem.horizons[-1]
        assert row["ed_ratio_final"] == pytest.approx(float(expected[k]), rel=1e-12)
    report = markdown_report(four, aggregate(runs_frame(four)))
    assert "means over 4 reference splits" in report
    assert "reference splits" not in markdown_report(one, aggregate(runs_frame(one)))


# -- seeds: each training seed is its own, reproducible experiment -------------------------


def _accuracy(result: BenchResult, method: str, seed: int) -> dict:
    (row,) = [r for r in result.runs if r["method"] == method and r["seed"] == seed]
    return {k: v for k, v in row.items() if not k.endswith(("seconds", "_1k", "memory_mb"))}


def test_seed_handling_is_reproducible_and_independent_of_the_seed_list():
    small = dict(problems=["double_well"], methods=["sl"], quick=True)
    alone = run_bench(BenchConfig(seeds=(1,), **small), progress=False)
    again = run_bench(BenchConfig(seeds=(1,), **small), progress=False)
    listed = run_bench(BenchConfig(seeds=(0, 1), **small), progress=False)
    assert _accuracy(alone, "sl", 1) == _accuracy(again, "sl", 1)
    assert _accuracy(alone, "sl", 1) == _accuracy(listed, "sl", 1)
    assert _accuracy(listed, "sl", 0)["train_loss"] != _accuracy(listed, "sl", 1)["train_loss"]


# -- aggregation -----------------------------------------------------------------------------


def _synthetic_result(rng: np.random.Generator) -> BenchResult:
    result = BenchResult()
    for seed in range(3):
        for method, family in (("sl", "sl"), ("mse", "mse"), ("cfm20", "cfm")):
            row = {c: float(rng.uniform(0.5, 2.0)) for c in RUN_SCHEMA[4:]}
            row.update(problem="p", method=method, family=family, seed=seed)
            result.runs.append(row)
    return result


def test_aggregate_is_median_min_max_over_seeds():
    result = _synthetic_result(np.random.default_rng(0))
    runs = runs_frame(result)
    summary = aggregate(runs)
    for method in ("sl", "mse", "cfm20"):
        values = np.array(
            [r["ed_ratio_final"] for r in result.runs if r["method"] == method], dtype=float
        )
        row = summary.loc[("p", method)]
        assert row[("median", "ed_ratio_final")] == pytest.approx(np.median(values))
        assert row[("min", "ed_ratio_final")] == values.min()
        assert row[("max", "ed_ratio_final")] == values.max()
        assert row[("n_seeds", "")] == 3


def test_cost_ratio_pairs_each_seed_with_its_own_sl_run():
    result = _synthetic_result(np.random.default_rng(1))
    runs = runs_frame(result)
    for seed in range(3):
        sl = next(
            r["sample_ms_per_1k"] for r in result.runs if r["method"] == "sl" and r["seed"] == seed
        )
        cfm = next(
            r["sample_ms_per_1k"]
            for r in result.runs
            if r["method"] == "cfm20" and r["seed"] == seed
        )
        got = runs[(runs["method"] == "cfm20") & (runs["seed"] == seed)]["cost_vs_sl"].item()
        assert got == pytest.approx(cfm / sl)
    assert (runs[runs["method"] == "sl"]["cost_vs_sl"] == 1.0).all()


def test_markdown_table_shows_median_and_spread():
    result = BenchResult(
        runs=[
            {c: 1.0 for c in RUN_SCHEMA[4:]}
            | {"problem": "p", "method": "sl", "family": "sl", "seed": s, "ed_ratio_final": v}
            for s, v in enumerate((2.0, 3.0, 7.0))
        ]
    )
    table = markdown_table(aggregate(runs_frame(result)), "p")
    assert "| sl | 3 |" in table
    assert "3 [2, 7]" in table


# -- problem scores against independent computations ---------------------------------------


def test_autocorrelation_of_an_ar1_process():
    rng = np.random.default_rng(0)
    phi, n, steps = 0.8, 4000, 400
    x = np.zeros((n, steps))
    x[:, 0] = rng.normal(size=n) / math.sqrt(1 - phi**2)
    for k in range(1, steps):
        x[:, k] = phi * x[:, k - 1] + rng.normal(size=n)
    acf = autocorrelation(x, 5)
    # stationary AR(1): rho(lag) = phi**lag (the per-sample mean removal biases it by O(1/T))
    np.testing.assert_allclose(acf, phi ** np.arange(5), atol=0.03)


def _ensemble(values: np.ndarray, channel: str = "x") -> xr.DataArray:
    return xr.DataArray(
        values[:, :, None],
        dims=("sample", "time", "channel"),
        coords={"time": np.arange(values.shape[1]), "channel": [channel]},
    )


def test_well_occupancy_error():
    ref = _ensemble(np.array([[0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [0.0, -1.0]]))
    gen = _ensemble(np.array([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert well_occupancy_error(ref, ref) == 0.0
    assert well_occupancy_error(gen, ref) == pytest.approx(0.25)  # 1/4 against 2/4


def test_spectrum_error_sees_a_smoother_field():
    rng = np.random.default_rng(0)
    rough = rng.normal(size=(256, 2, 1, 64))
    smooth = np.fft.irfft(np.fft.rfft(rough, axis=-1) * (np.arange(33) < 8), n=64, axis=-1)
    dims = ("sample", "time", "channel", "x")
    ref = xr.DataArray(rough, dims=dims)
    other = xr.DataArray(rng.normal(size=rough.shape), dims=dims)
    assert spectrum_error(other, ref) < 0.05  # same law, other draw
    assert spectrum_error(xr.DataArray(smooth, dims=dims), ref) > 0.5


def test_spatial_autocovariance_of_a_ring_moving_average():
    # x_i = z_i + a z_{i+1} on a ring, z iid N(0, 1): C(0) = 1 + a^2, C(1) = a, C(r > 1) = 0
    rng = np.random.default_rng(1)
    a = 0.6
    z = rng.normal(size=(4000, 3, 16))
    c = spatial_autocovariance(z + a * np.roll(z, -1, axis=2) + 5.0)
    assert c.shape == (3, 9)
    expected = np.r_[1 + a**2, a, np.zeros(7)]
    np.testing.assert_allclose(c, np.broadcast_to(expected, (3, 9)), atol=0.03)


def test_spatial_autocovariance_error_sees_lost_correlations():
    rng = np.random.default_rng(2)
    dims = ("sample", "time", "channel")

    def ring(n):
        z = rng.normal(size=(n, 2, 16))
        return xr.DataArray(
            z + 0.8 * np.roll(z, -1, axis=2) + 0.5 * np.roll(z, 1, axis=2), dims=dims
        )

    ref = ring(2000)
    assert spatial_autocovariance_error(ring(2000), ref) < 0.05  # same law, other draw
    # the same marginal at every site, the sites shuffled in each sample: no correlations
    shuffled = np.take_along_axis(
        ring(2000).values, rng.permuted(np.tile(np.arange(16), (2000, 2, 1)), axis=2), axis=2
    )
    assert spatial_autocovariance_error(xr.DataArray(shuffled, dims=dims), ref) > 0.5
    # dims in another order are read by name
    assert spatial_autocovariance_error(ref.transpose("channel", "sample", "time"), ref) == 0.0


def test_lorenz96_problem_holds_out_the_forcing():
    problem = build_problem("lorenz96", quick=True, seed=0)
    assert (problem.kind, problem.mu, problem.param_names) == (
        "population",
        [LORENZ96_TEST_FORCING],
        ["forcing"],
    )
    trained_on = set(np.unique(problem.train["mu_forcing"].values))
    assert (
        trained_on == set(problem.extras["train_forcing"])
        and LORENZ96_TEST_FORCING not in trained_on
    )
    np.testing.assert_array_equal(problem.reference["mu_forcing"].values, LORENZ96_TEST_FORCING)
    # the learned methods start from a population (one state per trajectory)
    assert problem.x0.shape == (problem.n_generate, *problem.state_shape)
    assert problem.solver_evals_per_step == 4 * 5  # RK4 with 5 internal steps per output step
    # the population relaxes from its broad start near F towards the attractor, whose mean
    # is far below F: the marginals are not stationary
    mean = problem.reference.mean(["sample", "channel"]).values
    spread = problem.reference.isel(time=0).std("sample").values
    assert mean[0] > 2 * mean[-1] and (spread > 0.8 * LORENZ96_INIT_STD).all()
    assert problem.period is None


def test_lorenz96_runs_saved_more_often_are_the_same_trajectories():
    runs = lorenz96_runs(16, (7.0, 9.0), 3, quick=True)
    finer = lorenz96_runs(16, (7.0, 9.0), 3, quick=True, snapshot_dt=0.01)
    assert finer.sizes["time"] == 5 * (runs.sizes["time"] - 1) + 1
    np.testing.assert_allclose(finer.isel(time=slice(None, None, 5)).values, runs.values, atol=1e-4)
    np.testing.assert_array_equal(runs["mu_forcing"].values, np.repeat([7.0, 9.0], 16))
    with pytest.raises(ValueError, match="snapshot_dt must divide 0.05"):
        lorenz96_runs(16, (7.0,), 3, quick=True, snapshot_dt=0.03)


# -- the quick suite end to end ---------------------------------------------------------------


def test_quick_double_well_run_writes_a_complete_finite_result(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--problems", "double_well", "--out", str(out)]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["meta"]["quick"] is True
    assert payload["meta"]["seeds"] == [0, 1, 2]
    runs = pd.DataFrame(payload["runs"])
    assert set(RUN_SCHEMA) <= set(runs.columns)
    methods = {"solver", "sl", "sl-l8", "sl-l128", "sl-coupled", "mse", "cfm5", "cfm20", "es"}
    methods |= {"dice"}
    assert set(runs["method"]) == methods
    assert len(runs) == 3 * len(methods)
    numbers = runs[[c for c in RUN_SCHEMA[4:] if c not in ("train_loss", "cost_vs_sl")]]
    assert np.isfinite(numbers.to_numpy(dtype=float)).all()
    learned = runs[runs["family"] != "solver"]
    assert np.isfinite(learned[["train_loss", "cost_vs_sl"]].to_numpy(dtype=float)).all()
    cfm = runs[runs["family"] == "cfm"].set_index(["method", "seed"])["evals_per_step"]
    assert (cfm.loc["cfm5"] == 5).all() and (cfm.loc["cfm20"] == 20).all()
    # the collapse-to-the-mean baseline has no spread (std error 1); SL keeps some, per seed
    by_seed = runs.set_index(["method", "seed"])["std_rel_error_final"]
    assert (by_seed.loc["mse"] > 0.9).all()
    assert (by_seed.loc["sl"] < by_seed.loc["mse"] - 0.1).all()
    # only sl-coupled builds a teacher with its data; the label has the state's shape
    data_seconds = runs.set_index(["method", "seed"])["data_seconds"]
    assert (data_seconds.loc["sl-coupled"] > 10 * data_seconds.loc["sl"]).all()
    for name in ("runs.csv", "over_time.csv", "summary.csv", "summary.md", "double_well.png"):
        assert (out / name).stat().st_size > 0
    assert "| sl | 3 |" in (out / "summary.md").read_text()
    assert "### double_well" in capsys.readouterr().out


def test_sl_coupled_trains_on_its_teachers_labels_of_the_state_shape():
    spec = parse_method("sl-coupled")
    assert (spec.family, spec.injection, spec.training_key) == (
        "sl-coupled",
        "noise_field",
        spec.name,
    )
    problem = build_problem("double_well", quick=True, seed=0)
    stepper = M.build_stepper(spec, problem, quick=True, seed=0)
    assert stepper.noise_shape(()) == problem.state_shape  # label = one state
    data = M.training_data(spec, stepper, problem, seed=0)
    labels = data.get_batch(torch.arange(len(data)))["label"]
    assert labels.shape == (len(data), *problem.state_shape)
    # the teacher's backward flow: about standard normal, and a function of the data
    assert abs(float(labels.mean())) < 0.2 and 0.8 < float(labels.std()) < 1.2
    again = M.training_data(spec, M.build_stepper(spec, problem, True, 0), problem, seed=0)
    assert torch.equal(again.get_batch(torch.arange(len(data)))["label"], labels)
    other = M.training_data(spec, stepper, problem, seed=1)  # another teacher
    assert not torch.equal(other.get_batch(torch.arange(len(data)))["label"], labels)
    # vectors are inverted with INVERSION_STEPS["vector"] Euler steps (the recipe study:
    # 20 steps shrink the labels, 160 do not), not with the teacher's sampling steps
    from slift_plugin import TransitionDataset, teacher_labels

    transitions = TransitionDataset.from_xarray(problem.train)
    teacher = M.FAMILIES["sl-coupled"]._trained_teacher(problem, transitions, 0)
    steps = M.INVERSION_STEPS["vector"]
    assert steps > M.COUPLING_STEPS
    assert torch.equal(teacher_labels(teacher, transitions, n_steps=steps).values, labels)
    assert not torch.equal(teacher_labels(teacher, transitions, n_steps=20).values, labels)


def test_sl_coupled_teacher_trains_for_the_budgets_teacher_epochs(monkeypatch):
    from slift_plugin import TransitionDataset, fit

    problem = build_problem("double_well", quick=True, seed=0)
    small = M.Budget(epochs=2, batch_size=128, lr=3e-3, hidden=64, teacher_epochs=3)
    monkeypatch.setitem(M.BUDGETS, ("double_well", True), small)
    transitions = TransitionDataset.from_xarray(problem.train)
    teacher = M.FAMILIES["sl-coupled"]._trained_teacher(problem, transitions, 0)

    def cfm_trained(epochs: int):
        cfm = M.MethodSpec("cfm", "cfm", n_euler=M.COUPLING_STEPS)
        model = M.build_seeded(cfm, problem, True, 0, key="sl-coupled teacher")
        fit(model, transitions, epochs=epochs, batch_size=128, lr=3e-3, weight_decay=0.0, seed=0)
        return model.state_dict()

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    trained = teacher.state_dict()
    assert same(trained, cfm_trained(3))
    assert not same(trained, cfm_trained(2))  # not the budget's epochs
    # without teacher_epochs the teacher gets the budget's epochs
    monkeypatch.setitem(
        M.BUDGETS, ("double_well", True), dataclasses.replace(small, teacher_epochs=None)
    )
    plain = M.FAMILIES["sl-coupled"]._trained_teacher(problem, transitions, 0)
    assert same(plain.state_dict(), cfm_trained(2))


@pytest.mark.parametrize(
    "method", ["sl-channels", "sl-embedding", "es", "mse", "sl-noise_field", "sl-coupled", "cfm5"]
)
def test_every_field_method_leaves_the_homogeneous_start(method):
    # Allen-Cahn starts from u0 = 0. A shift-equivariant operator (no positional
    # embedding) fed a label that is constant in space returns uniform fields for ever;
    # such methods get the grid embedding, noise-field inputs break the symmetry themselves.
    from slift_plugin import rollout

    problem = build_problem("allen_cahn", quick=True, seed=0)
    spec = parse_method(method)
    stepper = M.build_stepper(spec, problem, quick=True, seed=0)
    stepper.set_normalization(M.training_data(spec, stepper, problem, seed=0).statistics())
    fields = rollout(stepper, problem.x0, 1, 4, seed=0).isel(time=-1).values
    assert float(np.abs(problem.x0).max()) == 0.0
    assert fields.std(axis=-1).min() > 1e-6, f"{method} returned spatially uniform fields"


def test_quick_dice_and_cfm_runs_on_lorenz96_and_dice_on_allen_cahn_fields():
    config = BenchConfig(
        problems=["lorenz96"], methods=["solver", "dice", "cfm5"], seeds=(0,), quick=True
    )
    result = run_bench(config, progress=False)
    fields = run_bench(
        BenchConfig(problems=["allen_cahn"], methods=["dice"], seeds=(0,), quick=True),
        progress=False,
    )
    assert not result.skipped and not fields.skipped
    rows = {r["method"]: r for r in result.runs}
    rows["dice on fields"] = fields.runs[0]
    # cost: DICE's gradient evaluations (its Euler sub-steps) against the solver's drift
    # evaluations (RK4: 4 per internal step) and CFM's Euler steps
    steps = {name: row["evals_per_step"] for name, row in rows.items()}
    assert steps == {"solver": 20, "dice": 4, "cfm5": 5, "dice on fields": 4}
    for name, row in rows.items():
        numbers = [v for k, v in row.items() if k.startswith(("ed_ratio", "sliced_w2"))]
        assert np.isfinite(numbers).all(), name
        assert math.isfinite(row["quantity_error"]), name
    assert math.isfinite(rows["dice"]["train_loss"]) and math.isfinite(rows["cfm5"]["train_loss"])
    # the solver against an independent reference of the same law: at the noise floor
    assert max(rows["solver"][f"ed_ratio_{h}"] for h in ("short", "middle", "final")) < 5


def test_dice_scales_its_potential_by_the_marginal_speed_where_the_budget_says():
    """Lorenz-96's budget sets ``scale_potential``: the bench's DICE gets the training
    populations' marginal speed (tens: the first half time unit moves fast); the double
    well's does not, and keeps 1."""
    spec = parse_method("dice")
    scaled = {}
    for name in ("lorenz96", "double_well"):
        problem = build_problem(name, quick=True, seed=0)
        stepper = M.build_stepper(spec, problem, quick=True, seed=0)
        data = M.training_data(spec, stepper, problem, seed=0)
        scaled[name] = (stepper.potential_scale, data.marginal_speed())
        # Lorenz-96 samples with 2 Heun sub-steps, elsewhere 4 Euler: 4 evaluations both
        assert (stepper.scheme, stepper.evals_per_step) == (
            "heun" if name == "lorenz96" else "euler",
            4,
        )
    assert scaled["lorenz96"][0] == scaled["lorenz96"][1] > 10
    assert scaled["double_well"][0] == 1.0 != scaled["double_well"][1]
    assert M.budget(build_problem("lorenz96", quick=True, seed=0), True).scale_potential
