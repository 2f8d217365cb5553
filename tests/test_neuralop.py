"""neuraloperator integration: Trainer, get_model registry, checkpoints, injections, traps."""

import warnings

import pytest
import torch
from neuralop import LpLoss, Trainer, get_model
from neuralop.models import FNO, TFNO, UNO
from neuralop.training.training_state import load_training_state
from torch.utils.data import DataLoader, Dataset

from slift_plugin import (
    StochasticLifting,
    WithFixedLabels,
    fit,
    load_stepper,
    rollout,
    save_stepper,
)
from slift_plugin.adapters.neuralop import SLFNO, lift, lifted_operator

GRID = 32


class Config(dict):
    """neuraloperator's configs allow attribute access (config.model[...])."""

    __getattr__ = dict.__getitem__


class NoisyShift(Dataset):
    """A user's deterministic FNO dataset: dict items {"x", "y"} on a periodic grid."""

    def __init__(self, n=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        grid = torch.linspace(0, 2 * torch.pi, GRID + 1)[:-1]
        phase = torch.rand(n, 1, 1, generator=g) * 2 * torch.pi
        self.x = torch.sin(grid + phase)
        self.y = torch.roll(self.x, 1, dims=-1) + 0.2 * torch.randn(n, 1, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def slfno_config(**extra):
    model = dict(
        model_arch="slfno",
        data_channels=1,
        n_modes=(8,),
        hidden_channels=16,
        n_layers=2,
        label_dim=4,
        label_injection="channels",
    )
    return Config(model=Config({**model, **extra}))


def test_get_model_builds_registered_slfno():
    model = get_model(slfno_config(label_injection="embedding"))
    assert isinstance(model, SLFNO) and isinstance(model, StochasticLifting)
    assert model.label_dim == 4 and model.backbone.injection == "embedding"
    assert model.backbone.operator.in_channels == 1  # embedding adds no input channel
    wide = get_model(slfno_config(n_params=2))
    assert wide.backbone.operator.in_channels == 1 + 4 + 2


def test_training_through_neuralop_trainer_and_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = get_model(slfno_config())
    data = WithFixedLabels(NoisyShift(), model.fixed_labels(seed=0))
    model.prepare(data)  # per-channel normalisation from the user's dataset
    loader = DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    lp = LpLoss(d=1, p=2)
    trainer = Trainer(model=model, n_epochs=25, device="cpu", verbose=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LpLoss warns about the extra dict keys
        before = trainer.evaluate({"l2": lp}, DataLoader(data, batch_size=48), log_prefix="t")
        trainer.train(
            loader,
            {"t": DataLoader(data, batch_size=48)},
            optimizer,
            scheduler,
            training_loss=lp,
            save_every=24,
            save_dir=tmp_path,
        )
        after = trainer.evaluate({"l2": lp}, DataLoader(data, batch_size=48), log_prefix="t")
    assert after["t_l2"] < 0.75 * before["t_l2"]
    # the Trainer resumes from its own checkpoint (our atomic, tensor-only files)
    resumed, *_ = load_training_state(tmp_path, "model", model=get_model(slfno_config()))

    # neuraloperator's own checkpoint format round-trips (metadata + state dict)
    restored = SLFNO.from_checkpoint(tmp_path, "model")
    for k, v in restored.state_dict().items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(resumed.state_dict()[k], v)
    batch = next(iter(DataLoader(data, batch_size=5)))
    with torch.no_grad():
        torch.testing.assert_close(restored(**batch), model(**batch))
    torch.testing.assert_close(restored.delta_std, model.delta_std)
    # and the trained model is a stepper: rollout works on it directly
    ens = rollout(model, data[0]["x"], n_steps=2, n_samples=6, seed=1)
    assert ens.shape == (6, 3, 1, GRID)


def net_state(module):
    return module.state_dict()


def test_state_dict_metadata_trap_handled(tmp_path):
    """A plain wrapper around a BaseModel must not carry neuraloperator's '_metadata'."""

    def make():
        net = lifted_operator("fno", state_channels=1, label_dim=2, n_modes=(8,), hidden_channels=8)
        return StochasticLifting(net, (1, None))

    sl = make()
    assert "_metadata" in net_state(sl.backbone.operator)  # the trap is real
    assert "_metadata" not in sl.state_dict()
    save_stepper(tmp_path / "sl.pt", sl)  # weights_only-safe file
    other = make()
    load_stepper(tmp_path / "sl.pt", other)
    for (k, a), b in zip(sl.state_dict().items(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    # the registered model keeps its own metadata (for neuraloperator's from_checkpoint)
    meta = get_model(slfno_config()).state_dict()["_metadata"]
    assert meta["_name"] == "SLFNO" and meta["label_dim"] == 4


@pytest.mark.parametrize("cast", ["double", "half", "to64", "to32"])
def test_dtype_casts_are_refused(cast):
    model = get_model(slfno_config())
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(TypeError, match="refusing to cast"):
        if cast.startswith("to"):  # even float32: Module.to(dtype) also casts complex weights
            model.to(torch.float64 if cast == "to64" else torch.float32)
        else:
            getattr(model, cast)()
    after = model.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k


@pytest.mark.parametrize("injection", ["channels", "noise_field", "embedding"])
@pytest.mark.parametrize("kind", ["fno", "tfno", "uno"])
def test_every_injection_makes_the_output_depend_on_the_label(kind, injection):
    torch.manual_seed(0)
    if kind == "uno":
        kw = dict(
            hidden_channels=8,
            n_layers=2,
            uno_out_channels=[8, 8],
            uno_n_modes=[[8], [8]],
            uno_scalings=[[1.0], [1.0]],
            lifting_channels=8,
            projection_channels=8,
            horizontal_skips_map={},
        )
    else:
        kw = dict(n_modes=(8,), hidden_channels=8, n_layers=2)
    net = lifted_operator(
        kind, state_channels=2, history=2, label_dim=3, injection=injection, n_cond=1, **kw
    )
    sl = StochasticLifting(net, (2, None), history=2, n_params=1)
    x, mu = torch.randn(4, 4, GRID), torch.randn(4, 1)
    shape = sl.noise_shape((GRID,))
    assert shape == ((3, GRID) if injection == "noise_field" else (3,))
    with torch.no_grad():
        a = sl.step(x, torch.randn(4, *shape), mu=mu)
        b = sl.step(x, torch.randn(4, *shape), mu=mu)
        c = sl.step(x, torch.randn(4, *shape), mu=mu + 1)
    assert a.shape == (4, 2, GRID)
    assert (a - b).abs().mean() > 1e-4  # the label changes the prediction
    assert not torch.allclose(a, c)  # so do the physics parameters


@pytest.mark.parametrize("injection", ["channels", "noise_field", "embedding"])
def test_without_positional_embedding_the_lifted_fno_commutes_with_circular_shifts(injection):
    # The demo's FNOs drop neuraloperator's grid embedding: on a periodic, homogeneous
    # field the learned law must not depend on where a cell is (BENCHMARKS.md). A noise
    # field label shifts with the state; a vector label is the same everywhere.
    torch.manual_seed(0)
    kw = dict(n_modes=(GRID,), hidden_channels=8, n_layers=2)
    sl = {
        pe: StochasticLifting(
            lifted_operator(
                "fno",
                state_channels=1,
                label_dim=2,
                injection=injection,
                positional_embedding=pe,
                **kw,
            ),
            (1, None),
        )
        for pe in (None, "grid")
    }
    x = torch.randn(3, 1, GRID)
    label = torch.randn(3, *sl[None].noise_shape((GRID,)))
    shifted_label = torch.roll(label, 5, dims=-1) if injection == "noise_field" else label
    with torch.no_grad():
        for pe, stepper in sl.items():
            a = torch.roll(stepper.step(x, label), 5, dims=-1)
            b = stepper.step(torch.roll(x, 5, dims=-1), shifted_label)
            if pe is None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            else:  # the coordinates are inputs: a shifted state is a different input
                assert (a - b).abs().max() > 1e-3


def test_lift_keeps_the_user_architecture(tmp_path):
    user = TFNO(n_modes=(6,), in_channels=1, out_channels=1, hidden_channels=12, n_layers=3)
    sl = lift(user, label_dim=5, n_params=1)
    assert isinstance(sl, SLFNO)
    op = sl.backbone.operator
    assert type(op) is TFNO and op.hidden_channels == 12 and op.n_layers == 3
    assert op.in_channels == 1 + 5 + 1 and op.factorization == user.factorization
    # positional constructor arguments are understood too
    positional = lift(FNO((8,), 2, 2, 10), label_dim=3)
    assert positional.backbone.operator.hidden_channels == 10 and positional.n_channels == 2
    # and the result checkpoints the neuraloperator way, safely (weights_only loads)
    positional.save_checkpoint(tmp_path, "m")
    restored = SLFNO.from_checkpoint(tmp_path, "m")
    x, lab = torch.randn(2, 2, GRID), torch.randn(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(restored(x, lab), positional(x, lab))
    with pytest.raises(TypeError, match="FNO, TFNO or UNO"):
        lift(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        lift(FNO(n_modes=(8,), in_channels=3, out_channels=1, hidden_channels=8))


def test_embedding_injection_survives_deepcopy():
    import copy

    net = lifted_operator(
        "fno",
        state_channels=1,
        label_dim=3,
        injection="embedding",
        n_modes=(8,),
        hidden_channels=8,
        n_layers=2,
    )
    sl = StochasticLifting(net, (1, None))
    twin = copy.deepcopy(sl)  # e.g. torch.optim.swa_utils.AveragedModel does this
    x, lab = torch.randn(2, 1, GRID), torch.randn(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(twin(x, lab), sl(x, lab))
        twin.backbone.label_embedding[-1].bias.add_(1.0)  # the copy's own embedding is used
        assert not torch.allclose(twin(x, lab), sl(x, lab))


def test_operator_stepper_is_resolution_agnostic_and_trains_with_fit():
    torch.manual_seed(0)
    sl = lift(FNO(n_modes=(8,), in_channels=1, out_channels=1, hidden_channels=8), label_dim=2)
    data = NoisyShift()
    states = torch.stack([data.x, data.y], dim=1)  # (n, 2 times, 1, GRID)
    from slift_plugin import TransitionDataset

    res = fit(
        sl,
        TransitionDataset(states, labels=sl.fixed_labels(0, (GRID,))),
        epochs=3,
        batch_size=16,
        progress=False,
    )
    assert all(map(torch.isfinite, map(torch.tensor, res.losses)))
    ens = rollout(sl, torch.zeros(1, 64), n_steps=1, n_samples=2)  # twice the training grid
    assert ens.shape == (2, 2, 1, 64)
    with pytest.raises(ValueError, match="window must have shape"):
        sl.step(torch.zeros(2, 3, GRID), torch.zeros(2, 2))  # 3 channels, expected 1


def test_bad_injection_and_channels():
    with pytest.raises(ValueError, match="injection must be one of"):
        lifted_operator("fno", state_channels=1, injection="film", n_modes=(4,), hidden_channels=4)
    with pytest.raises(ValueError, match="operator must be one of"):
        lifted_operator("gino", state_channels=1)
    with pytest.raises(ValueError, match="in_channels"):
        from slift_plugin.adapters.neuralop import LiftedOperator

        LiftedOperator(
            UNO(1, 1, 4, uno_out_channels=[4], uno_n_modes=[[4]], uno_scalings=[[1.0]], n_layers=1),
            window_channels=1,
            label_dim=2,
        )


def test_noise_field_labels_on_a_mismatched_grid_are_rejected():
    sl = lift(
        FNO(n_modes=(8,), in_channels=1, out_channels=1, hidden_channels=8),
        label_dim=2,
        injection="noise_field",
    )
    labels = sl.fixed_labels(seed=0, grid_shape=(GRID,))
    from slift_plugin import TransitionDataset

    states = torch.zeros(2, 3, 1, 2 * GRID)  # data on a 64-point grid, labels for 32 points
    batch = TransitionDataset(states, labels=labels).get_batch(torch.arange(2))
    with pytest.raises(ValueError, match=r"label must have shape \(2, 2, 64\)"):
        sl.loss(batch)


def test_from_checkpoint_of_a_model_built_with_positional_arguments(tmp_path):
    """BaseModel records positional arguments under 'args' *and* fills the defaults of
    the same names in as keywords: the positional values must win, not clash."""
    model = SLFNO(2, (6,), 10, 2, 3)  # in_channels, n_modes, hidden, n_layers, label_dim
    model.save_checkpoint(tmp_path, "p")
    restored = SLFNO.from_checkpoint(tmp_path, "p")
    assert restored.backbone.operator.hidden_channels == 10 and restored.label_dim == 3
    x, lab = torch.randn(2, 2, GRID), torch.randn(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(restored(x, lab), model(x, lab))


def test_lift_takes_a_uno_too():
    # neuraloperator 2.0's UNO is no BaseModel: its arguments are read back from it.
    user = UNO(
        1,
        1,
        hidden_channels=8,
        n_layers=2,
        uno_out_channels=[8, 8],
        uno_n_modes=[[4], [4]],
        uno_scalings=[[1.0], [1.0]],
        horizontal_skips_map={},
    )
    sl = lift(user, label_dim=3, dt=0.1)
    op = sl.backbone.operator
    assert type(op) is UNO and op.in_channels == 1 + 3 and op.out_channels == 1
    assert op.uno_n_modes == [[4], [4]] and op.uno_out_channels == [8, 8]
    assert op.horizontal_skips_map == {}
    sl.eval()
    assert sl.step(torch.randn(2, 1, GRID), torch.randn(2, 3)).shape == (2, 1, GRID)
