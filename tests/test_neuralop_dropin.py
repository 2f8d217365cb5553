"""The neuraloperator drop-in: a Trainer script made stochastic by three added lines.

``examples/neuralop_trainer_deterministic.py`` is a user's script in neuraloperator's
documented style; ``examples/neuralop_trainer_sl.py`` is the same script after the README's
changes. The diff is counted; the SL script trains with the user's ``DefaultDataProcessor``,
eval losses, ``save_every`` and ``resume_from_dir`` and rolls out a diverse ensemble in
physical units. The pieces that make it work are checked against independent formulas:
content-keyed labels (fixed per transition, fresh in evaluation), normalisation from the
first batch, and the data processor applied around every rolled-out step.
"""

from __future__ import annotations

import difflib
import runpy
import sys
from pathlib import Path

import pytest
import torch
from neuralop.data.transforms.data_processors import DefaultDataProcessor
from neuralop.data.transforms.normalizers import UnitGaussianNormalizer
from neuralop.models import FNO

from slift_plugin import ContentLabels, ProcessedStepper, rollout
from slift_plugin.adapters.neuralop import SLFNO, lift
from slift_plugin.checkpoint import tensor_state

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DETERMINISTIC = EXAMPLES / "neuralop_trainer_deterministic.py"
STOCHASTIC = EXAMPLES / "neuralop_trainer_sl.py"


def changed_lines(a: Path, b: Path) -> list[str]:
    """The ``+``/``-`` lines of the unified diff of two files (headers excluded)."""
    diff = difflib.unified_diff(a.read_text().splitlines(), b.read_text().splitlines(), n=0)
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_the_sl_script_differs_from_the_deterministic_one_by_three_lines():
    changed = changed_lines(DETERMINISTIC, STOCHASTIC)
    assert len(changed) <= 3, "\n".join(changed)
    assert all(line.startswith("+") for line in changed), changed  # nothing removed


def test_the_readme_shows_the_diff_of_the_two_scripts():
    readme = (EXAMPLES.parent / "README.md").read_text()
    for line in changed_lines(DETERMINISTIC, STOCHASTIC):
        assert line in readme, f"README's diff block lacks {line!r}"


def run_script(path: Path, tmp_path: Path, monkeypatch, *args: str) -> dict:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [path.name, "--quick", "--save-dir", "ckpt", *args])
    return runpy.run_path(str(path), run_name="__main__")


@pytest.fixture(scope="module")
def sl_run(tmp_path_factory):
    """The SL script at quick sizes: its globals after the run."""
    tmp = tmp_path_factory.mktemp("sl_script")
    with pytest.MonkeyPatch.context() as mp:
        torch.set_num_threads(1)
        return run_script(STOCHASTIC, tmp, mp, "--epochs", "8") | {"tmp": tmp}


def test_the_sl_script_rolls_out_a_diverse_ensemble_in_physical_units(sl_run):
    ensemble = sl_run["ensemble"]
    assert ensemble.dims == ("sample", "time", "channel", "x")
    assert ensemble.sizes["sample"] == 256 and ensemble.sizes["time"] == 21
    assert float(abs(ensemble.isel(time=0)).max()) == 0.0  # u0 = 0, mapped back exactly
    spread = ensemble.isel(time=-1).std("sample").mean()
    assert 0.02 < float(spread) < 5.0, float(spread)  # diverse, and not blown up
    # The data processor's statistics were used: the same model rolled out in its own
    # (normalised) coordinates from u = 0 gives another ensemble.
    model = sl_run["model"]
    raw = rollout(model, torch.zeros(1, 128), 20, 256, seed=0)
    assert not torch.allclose(torch.as_tensor(raw.values), torch.as_tensor(ensemble.values))


def test_the_trainer_evaluated_and_checkpointed_the_sl_model(sl_run):
    metrics = sl_run["metrics"]
    assert {"128_h1", "128_l2"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(float(metrics[k]))) for k in ("128_h1", "128_l2"))
    folder = sl_run["tmp"] / "ckpt"
    assert (folder / "model_state_dict.pt").is_file()
    loaded = SLFNO.from_checkpoint(folder, "model")
    model = sl_run["model"]
    assert bool(loaded.normalized)
    stored = tensor_state(loaded)
    for name, value in tensor_state(model).items():
        assert torch.equal(value.cpu(), stored[name]), name


def test_resume_from_dir_continues_the_sl_model(sl_run, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in (sl_run["tmp"] / "ckpt").iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    saved = tensor_state(SLFNO.from_checkpoint(ckpt, "model"))
    resumed = run_script(STOCHASTIC, tmp_path, monkeypatch, "--epochs", "8", "--resume")
    assert "resuming from epoch" in capsys.readouterr().out
    # neuraloperator records the last finished epoch (7 of 0..7) and runs it again.
    assert resumed["trainer"].start_epoch == 7
    # It went on from the saved weights: one more epoch at the cosine schedule's tail moves
    # them far less than they moved from the initial weights the script starts from.
    torch.manual_seed(0)
    fno = FNO(n_modes=(16,), in_channels=1, out_channels=1, hidden_channels=32, n_layers=4)
    initial = tensor_state(lift(fno, dt=0.4))
    now = tensor_state(resumed["model"])

    def distance(state):
        keys = [k for k, v in saved.items() if v.is_floating_point() or v.is_complex()]
        return sum(float((state[k].cpu() - saved[k]).abs().pow(2).sum()) for k in keys) ** 0.5

    assert distance(now) < 0.2 * distance(initial), (distance(now), distance(initial))


# -- the pieces ---------------------------------------------------------------------------
def small_model(**kwargs) -> SLFNO:
    torch.manual_seed(0)
    fno = FNO(n_modes=(4,), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
    return lift(fno, label_dim=4, dt=0.5, **kwargs)


def batch(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, generator=g)
    return x, x + 0.1 * torch.randn(n, 1, 16, generator=g)


def test_training_labels_are_fixed_per_transition_and_fresh_in_eval(monkeypatch):
    model = small_model()
    seen = []
    original = model.standardized_output
    monkeypatch.setattr(
        model,
        "standardized_output",
        lambda x, label, mu: seen.append(label) or original(x, label, mu),
    )
    x, y = batch(0)
    model.train()
    model(x=x, y=y)
    order = torch.tensor([5, 3, 1, 0, 2, 4])
    model(x=x[order], y=y[order])  # another batch order, another epoch
    assert torch.equal(seen[1], seen[0][order])
    expected = ContentLabels((4,), seed=0)(x, y)
    assert torch.equal(seen[0], expected)
    model.eval()
    model(x=x, y=y)
    assert not torch.allclose(seen[2], seen[0])  # evaluation scores fresh samples
    same = x[:1].expand(6, -1, -1)
    model(same)  # no label, no y: one sample per row, different rows differ
    assert len({tuple(row.tolist()) for row in seen[3]}) == 6


def test_training_without_label_or_target_is_refused():
    model = small_model()
    model.train()
    with pytest.raises(ValueError, match="needs a label or the next state y"):
        model(batch(0)[0])


def test_the_first_training_batch_normalises_an_unprepared_model():
    model = small_model()
    x, y = batch(1, n=32)
    model.train()
    model(x=x, y=y)
    assert bool(model.normalized)
    torch.testing.assert_close(model.state_mean, x.mean((0, 2)))
    torch.testing.assert_close(model.state_std, x.std((0, 2)))
    torch.testing.assert_close(model.delta_std, (y - x).std((0, 2)))
    x2, y2 = batch(2, n=32)
    model(x=x2, y=y2)  # later batches do not move the statistics
    torch.testing.assert_close(model.delta_std, (y - x).std((0, 2)))


def test_a_model_prepared_in_other_coordinates_is_refused():
    model = small_model()
    x, y = batch(3, n=32)
    model.set_normalization(
        {"state_mean": [300.0], "state_std": [20.0], "delta_std": [1.0]}
    )  # e.g. prepared on raw temperatures while a DataProcessor standardises batches
    model.train()
    with pytest.raises(ValueError, match="other\\s+coordinates"):
        model(x=x, y=y)


def test_a_batch_without_spread_cannot_normalise():
    model = small_model()
    model.train()
    zeros = torch.zeros(4, 1, 16)
    with pytest.raises(ValueError, match="no spread"):
        model(x=zeros, y=zeros + 1.0)


def processor(seed: int) -> DefaultDataProcessor:
    g = torch.Generator().manual_seed(seed)
    xs, ys = (
        2.0 + 3.0 * torch.randn(40, 1, 16, generator=g),
        -1.0 + 0.5 * torch.randn(40, 1, 16, generator=g),
    )
    inn, out = UnitGaussianNormalizer(dim=[0, 2]), UnitGaussianNormalizer(dim=[0, 2])
    inn.fit(xs)
    out.fit(ys)
    return DefaultDataProcessor(inn, out)


def test_a_processed_step_is_preprocess_then_step_then_postprocess():
    model = small_model().eval()
    model.set_normalization({"state_mean": [0.1], "state_std": [1.2], "delta_std": [0.3]})
    p = processor(0)
    p.train()  # the Trainer leaves it in training mode; the step must map back anyway
    window, noise = torch.randn(5, 1, 16), torch.randn(5, 4)
    got = ProcessedStepper(model, p).step(window, noise)
    inn, out = p.in_normalizer, p.out_normalizer
    expected = (
        model.step((window - inn.mean) / (inn.std + inn.eps), noise) * (out.std + out.eps)
        + out.mean
    )
    torch.testing.assert_close(got, expected)
    assert p.training  # its mode is left as it was


def test_rollout_with_a_processor_steps_in_its_coordinates():
    model = small_model().eval()
    model.set_normalization({"state_mean": [0.1], "state_std": [1.2], "delta_std": [0.3]})
    p = processor(1)
    u0 = torch.full((1, 16), 0.7)
    with_p = rollout(model, u0, 3, 8, seed=4, data_processor=p)
    assert with_p.attrs["data_processor"] == "DefaultDataProcessor"
    assert with_p.attrs["stepper"] == "SLFNO"
    inn, out = p.in_normalizer, p.out_normalizer
    state = torch.as_tensor(with_p.isel(time=0).values)
    x1 = torch.as_tensor(with_p.isel(time=1).values)
    # The first step is out^-1(model(in(u0), xi)), with the noise xi of the same seed as a
    # rollout of the model itself from in(u0) draws.
    direct = rollout(model, (u0 - inn.mean[0]) / (inn.std[0] + inn.eps), 1, 8, seed=4)
    mapped = torch.as_tensor(direct.isel(time=1).values) * (out.std[0] + out.eps) + out.mean[0]
    torch.testing.assert_close(x1, mapped)
    assert state.equal(u0.expand(8, 1, 16))


def test_rollout_refuses_a_processor_without_the_interface():
    model = small_model().eval()
    with pytest.raises(TypeError, match="preprocess"):
        rollout(model, torch.zeros(1, 16), 2, 4, data_processor=object())


def test_a_processed_stepper_only_rolls_out():
    model = small_model()
    wrapped = ProcessedStepper(model, processor(2))
    with pytest.raises(TypeError, match="only rolls out"):
        wrapped.loss({"x": torch.zeros(2, 1, 16), "y": torch.zeros(2, 1, 16)})
    with pytest.raises(TypeError, match="must be a slift_plugin.Stepper"):
        ProcessedStepper(torch.nn.Linear(2, 2), processor(2))
    assert wrapped.noise_shape((16,)) == model.noise_shape((16,))
    wrapped.eval()
    assert not model.training and not wrapped.training


def test_every_rolled_out_step_goes_through_the_processor():
    # A deterministic SL-FNO (no label): the whole rollout must be the composition
    # x_{k+1} = out^-1(model(in(x_k))) applied step after step on physical states.
    torch.manual_seed(0)
    fno = FNO(n_modes=(4,), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
    model = lift(fno, label_dim=0, dt=0.5).eval()
    model.set_normalization({"state_mean": [0.1], "state_std": [1.2], "delta_std": [0.3]})
    p = processor(4)
    u0 = 0.5 * torch.randn(3, 1, 16, generator=torch.Generator().manual_seed(1))
    got = torch.as_tensor(rollout(model, u0, 4, data_processor=p).values)
    inn, out = p.in_normalizer, p.out_normalizer
    state = u0
    with torch.no_grad():
        for k in range(1, 5):
            normalised = (state - inn.mean) / (inn.std + inn.eps)
            state = model.step(normalised, None) * (out.std + out.eps) + out.mean
            torch.testing.assert_close(got[:, k], state)


def test_content_labels_are_standard_normal_and_independent_of_neighbours():
    from scipy import stats

    x = torch.randn(4000, 1, 8, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 0, 3] = torch.nextafter(y[:, 0, 3], torch.tensor(10.0))  # one ulp from x
    labels = ContentLabels((5,), seed=3)
    a, b = labels(x, x), labels(x, y)
    assert stats.kstest(a.flatten().numpy(), "norm").pvalue > 1e-3
    assert stats.kstest(b.flatten().numpy(), "norm").pvalue > 1e-3
    r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert abs(float(r)) < 0.03  # one ulp apart: independent labels
    keys = labels.keys(x, y)
    assert keys.dtype.name == "int64" and keys.min() >= 0 and len(set(keys.tolist())) == 4000


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.bool, torch.complex64]
)
def test_content_labels_take_every_dtype_and_see_every_value(dtype):
    g = torch.Generator().manual_seed(1)
    x = (10 * torch.randn(6, 2, 5, generator=g)).to(dtype)
    labels = ContentLabels((3,))
    base = labels(x)
    changed = x.clone()
    changed[2, 1, 4] = (changed[2, 1, 4] == 0) if dtype == torch.bool else changed[2, 1, 4] + 1
    other = labels(changed)
    assert torch.equal(other[[0, 1, 3, 4, 5]], base[[0, 1, 3, 4, 5]])
    assert not torch.equal(other[2], base[2])


def test_both_zeros_give_one_label():
    labels = ContentLabels((4,))
    assert torch.equal(labels(torch.zeros(1, 3)), labels(-torch.zeros(1, 3)))


def test_a_trainer_checkpoint_rebuilds_without_code(tmp_path):
    from slift_plugin import load_stepper

    model = small_model().eval()
    model.set_normalization({"state_mean": [0.1], "state_std": [1.2], "delta_std": [0.3]})
    model.save_checkpoint(tmp_path, "model")  # what the Trainer's save_every calls
    rebuilt = load_stepper(tmp_path / "model_state_dict.pt").eval()
    assert type(rebuilt) is SLFNO
    window, noise = torch.randn(3, 1, 16), torch.randn(3, 4)
    assert torch.equal(rebuilt.step(window, noise), model.step(window, noise))
