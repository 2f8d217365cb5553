"""Hostile, broken and misplaced checkpoints: every loading path refuses them clearly.

* a pickle that runs code on load is never run, by any loading path;
* broken states (non-tensor values, non-positive spreads, NaN) and broken SLFNO metadata
  (wrong types, unknown keys, absurd sizes) fail with a CheckpointError before anything
  is built or copied;
* a recorded stepper configuration (``load_stepper(path)`` with no stepper) that is not
  JSON, names a class outside the table, holds wrong types or absurd sizes, or describes
  a model the weights do not fit fails with a CheckpointError naming what was expected,
  before anything large is allocated;
* a bad ``checkpoint_dir`` fails before the first training step;
* the atomic writer cleans up after a killed writer of the same file only, keeps an
  overwritten file's mode, and never touches the process-wide umask.
"""

import json
import os
import re
import resource
import signal
import stat
import time
from pathlib import Path

import pytest
import torch

from slift_plugin import (
    MLP,
    CheckpointError,
    StochasticLifting,
    TransitionDataset,
    fit,
    load_stepper,
    save_stepper,
)
from slift_plugin.adapters.neuralop import SLFNO, lifted_operator
from slift_plugin.checkpoint import CONFIG_KEY, load_checkpoint, save_checkpoint
from slift_plugin.data import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def make():
    torch.manual_seed(0)
    return StochasticLifting(MLP(2, 2, label_dim=2, hidden=16, depth=2), (2,))


def data_for(stepper):
    g = torch.Generator().manual_seed(0)
    states = torch.randn(16, 4, 2, generator=g).cumsum(1)
    return TransitionDataset(states, labels=stepper.fixed_labels(0))


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    after = module.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# -- a pickle that runs code on load --------------------------------------------------------
class RunsCodeOnLoad:
    """Unpickling calls ``exec(code)``: here, creating a marker file."""

    def __init__(self, marker):
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return exec, (self.code,)


def write_hostile(path, marker, fmt):
    payload = {"model": {"weight": RunsCodeOnLoad(marker)}}
    # the zip format of torch.save, and the legacy pickle stream torch.load also reads
    torch.save(payload, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_pickle_that_runs_code_is_never_run(tmp_path, fmt):
    marker = tmp_path / "pwned"
    evil = write_hostile(tmp_path / "evil.pt", marker, fmt)
    # the payload is live: an unrestricted load runs it
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="corrupt or not a slift checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="corrupt or not a slift checkpoint"):
        load_stepper(evil, make())
    with pytest.raises(CheckpointError, match="corrupt or not a slift checkpoint"):
        load_stepper(evil)  # rebuilding from a recorded configuration reads it the same way

    good = make()
    folder = tmp_path / "slfno"
    model = SLFNO(1, n_modes=(4,), hidden_channels=4, n_layers=1, label_dim=2)
    model.save_checkpoint(folder, "m")
    state_file = folder / "m_state_dict.pt"
    state_file.rename(folder / "kept.pt")
    write_hostile(state_file, marker, fmt)  # sound metadata, hostile weights
    with pytest.raises(CheckpointError, match="corrupt"):
        SLFNO.from_checkpoint(folder, "m")
    (folder / "kept.pt").rename(state_file)
    write_hostile(folder / "m_metadata.pkl", marker, fmt)  # hostile metadata
    with pytest.raises(CheckpointError, match="corrupt or holds non-data objects"):
        SLFNO.from_checkpoint(folder, "m")

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_hostile(run_dir / "last.pt", marker, fmt)
    with pytest.raises(CheckpointError, match="corrupt"):
        fit(good, data_for(good), epochs=1, progress=False, checkpoint_dir=run_dir)
    assert not marker.exists()


# -- broken states ---------------------------------------------------------------------------
def test_non_tensor_values_in_a_state_are_named(tmp_path):
    sl = make()
    state = {k: v.clone() for k, v in sl.state_dict().items()}
    state["backbone.net.0.weight"] = [[0.0] * 4] * 16  # a list where a tensor belongs
    state["delta_std"] = "1.0"
    save_checkpoint(tmp_path / "m.pt", {"model": state})
    target = make()
    before = weights(target)
    with pytest.raises(
        CheckpointError, match=r"non-tensor values .*backbone\.net\.0\.weight: list"
    ):
        load_stepper(tmp_path / "m.pt", target)
    assert_unchanged(target, before)
    save_checkpoint(tmp_path / "n.pt", {"model": [1, 2, 3]})
    with pytest.raises(CheckpointError, match="holds a list where a state dict"):
        load_stepper(tmp_path / "n.pt", target)


@pytest.mark.parametrize("bad", [0.0, -1.0], ids=["zero", "negative"])
def test_a_non_positive_spread_is_refused_before_it_poisons_a_rollout(tmp_path, bad):
    sl = make()
    fit(sl, data_for(sl), epochs=1, progress=False)
    state = {k: v.clone() for k, v in sl.state_dict().items()}
    state["state_std"] = torch.tensor([1.0, bad])
    save_checkpoint(tmp_path / "m.pt", {"model": state})
    if bad == 0.0:  # what a silent load does: the inputs are divided by state_std
        poisoned = make()
        poisoned.load_state_dict(state)
        with torch.no_grad():
            step = poisoned.step(torch.tensor([[0.5, -0.5]]), torch.zeros(1, 2))
        assert not torch.isfinite(step).all()
    target = make()
    before = weights(target)
    with pytest.raises(CheckpointError, match=r"state_std must be positive, got \[1\.0, "):
        load_stepper(tmp_path / "m.pt", target)
    assert_unchanged(target, before)


def test_nan_weights_and_a_dtype_change_are_refused(tmp_path):
    state = {k: v.clone() for k, v in make().state_dict().items()}
    state["backbone.net.0.bias"][0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", {"model": state})
    with pytest.raises(CheckpointError, match=r"NaN/Inf in \['backbone\.net\.0\.bias'\]"):
        load_stepper(tmp_path / "nan.pt", make())
    state = {k: v.clone() for k, v in make().state_dict().items()}
    state["backbone.net.0.weight"] = state["backbone.net.0.weight"].to(torch.complex64)
    save_checkpoint(tmp_path / "complex.pt", {"model": state})
    with pytest.raises(CheckpointError, match="shape or dtype mismatches .*complex64"):
        load_stepper(tmp_path / "complex.pt", make())


def test_a_malformed_fit_checkpoint_is_refused_by_resume(tmp_path):
    sl = make()
    data = data_for(sl)
    fit(sl, data, epochs=2, progress=False, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["epoch"] = "2"
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="is malformed .*epoch must be an int"):
        fit(make(), data, epochs=2, progress=False, checkpoint_dir=tmp_path)
    del state["optimizer"]
    state["epoch"] = 2
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="is malformed .*KeyError"):
        fit(make(), data, epochs=2, progress=False, checkpoint_dir=tmp_path)


# -- SLFNO metadata --------------------------------------------------------------------------
def slfno_files(tmp_path, **changes):
    """A small SLFNO's checkpoint whose metadata then gets ``changes``."""
    model = SLFNO(1, n_modes=(4,), hidden_channels=4, n_layers=1, label_dim=2)
    model.save_checkpoint(tmp_path, "m")
    meta_path = tmp_path / "m_metadata.pkl"
    meta = torch.load(meta_path, weights_only=True)
    for key, value in changes.items():
        if value is DROP:
            meta.pop(key, None)
        else:
            meta[key] = value
    torch.save(meta, meta_path)
    return model


DROP = object()


def test_absurd_sizes_in_metadata_are_refused_without_allocating(tmp_path):
    """hidden_channels=200000 asks for ~2e12 weights (~15 TB with FNO's spectral weights):
    refused by the bounds. 60000 passes them (~1.4e10 complex weights, ~115 GB) and is
    refused because the model built on the meta device does not fit the stored weights."""
    slfno_files(tmp_path, hidden_channels=200_000)
    with pytest.raises(
        CheckpointError, match=r"hidden_channels must be an integer in \[1, 65536\]"
    ):
        SLFNO.from_checkpoint(tmp_path, "m")
    slfno_files(tmp_path, hidden_channels=60_000)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not fit SLFNO: .*shape or dtype mismatches"):
        SLFNO.from_checkpoint(tmp_path, "m")
    assert time.perf_counter() - start < 10
    slfno_files(tmp_path, n_layers=10**9)
    with pytest.raises(CheckpointError, match=r"n_layers must be an integer in \[1, 256\]"):
        SLFNO.from_checkpoint(tmp_path, "m")
    slfno_files(tmp_path, operator_kwargs={"n_layers": 10**9})
    with pytest.raises(CheckpointError, match="n_layers must be an integer"):
        SLFNO.from_checkpoint(tmp_path, "m")


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"hidden_channels": "32"},
            r"hidden_channels must be an integer in \[1, 65536\], got '32'",
        ),
        ({"hidden_channels": True}, "hidden_channels must be an integer"),
        ({"n_modes": (0,)}, r"mode counts that are integers in \[1, 65536\]"),
        ({"n_modes": 16}, "n_modes must be a tuple of 1 to 6 mode counts"),
        ({"label_injection": "bogus"}, "label_injection must be one of"),
        ({"operator": "resnet"}, "operator must be one of"),
        ({"residual": 1}, "residual must be a bool"),
        ({"dt": "0.1"}, "dt must be a number"),
        ({"operator_kwargs": [1]}, "operator_kwargs must be None or a dict"),
        ({"not_an_argument": 1}, r"unknown keys \['not_an_argument'\]"),
        ({"args": (1,) * 20}, "args must be at most 12 positional arguments"),
        ({"args": (), "in_channels": DROP}, "lacks in_channels"),
        ({"_name": "FNO"}, "is for model 'FNO', not SLFNO"),
        ({"operator_kwargs": {"no_such_kwarg": 1}}, "does not describe a valid SLFNO"),
    ],
)
def test_malformed_metadata_gives_a_clear_error(tmp_path, changes, match):
    slfno_files(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=match):
        SLFNO.from_checkpoint(tmp_path, "m")


def test_metadata_that_is_not_a_dict_is_refused(tmp_path):
    slfno_files(tmp_path)
    torch.save([1, 2], tmp_path / "m_metadata.pkl")
    with pytest.raises(CheckpointError, match="must be a dict of constructor arguments, got list"):
        SLFNO.from_checkpoint(tmp_path, "m")


def test_metadata_and_weights_of_another_model_do_not_mix(tmp_path):
    """Sound metadata (label_dim=3) next to weights of label_dim=2: caught on the meta
    device, before the real model is built."""
    slfno_files(tmp_path, label_dim=3)
    with pytest.raises(CheckpointError, match="does not fit SLFNO"):
        SLFNO.from_checkpoint(tmp_path, "m")


# -- recorded stepper configurations -----------------------------------------------------------
def with_config(tmp_path, edit=None, *, text=None, stepper=None):
    """A checkpoint of ``stepper`` (the small SL-MLP) whose recorded configuration is
    ``edit(record)`` (``record`` the parsed JSON, changed in place) or ``text``."""
    path = save_stepper(tmp_path / "m.pt", stepper if stepper is not None else make())
    payload = load_checkpoint(path)
    if text is None:
        record = json.loads(payload[CONFIG_KEY])
        edit(record)
        text = json.dumps(record)
    payload[CONFIG_KEY] = text
    save_checkpoint(path, payload)
    return path


def mlp_args(record):
    return record["stepper"]["modules"]["backbone"]["args"]


def setter(where, key, value):
    def edit(record):
        where(record)[key] = value

    return edit


def deleter(where, key):
    return lambda record: where(record).pop(key)


def top(record):
    return record


def stepper_args(record):
    return record["stepper"]["args"]


def stepper_node(record):
    return record["stepper"]


BROKEN_CONFIGS = {
    "format": (setter(top, "format", "pickle"), "not a JSON object with format"),
    "version": (setter(top, "version", 2), "has version 2; this slift_plugin reads version 1"),
    "extra_key": (setter(top, "code", "import os"), "must have the keys"),
    "dtype": (setter(top, "dtype", "object"), r"dtype must be one of \['bfloat16'"),
    "criterion": (setter(top, "criterion", 5), "criterion must be null or a name"),
    "unknown_class": (
        setter(stepper_node, "class", "Evil"),
        r"unknown class 'Evil'; the classes known are \[.*'StochasticLifting'",
    ),
    "import_path": (
        setter(stepper_node, "class", "os.system"),
        "class must be a class name, got 'os.system'",
    ),
    "backbone_import_path": (
        lambda r: r["stepper"]["modules"]["backbone"].update({"class": "subprocess.Popen"}),
        r"the stepper\.backbone: class must be a class name",
    ),
    "string_size": (
        setter(mlp_args, "hidden", "16"),
        r"MLP: hidden must be an integer in \[1, 65536\], got '16'",
    ),
    "bool_size": (setter(mlp_args, "hidden", True), "hidden must be an integer"),
    "absurd_depth": (setter(mlp_args, "depth", 10**9), r"depth must be an integer in \[1, 256\]"),
    "absurd_width": (setter(mlp_args, "in_features", 2**40), "in_features must be an integer"),
    "activation": (
        setter(mlp_args, "activation", "__import__('os')"),
        r"activation must be one of \['ELU'",
    ),
    "unhashable_activation": (
        setter(mlp_args, "activation", ["SiLU"]),
        r"activation must be one of .*got \['SiLU'\]",
    ),
    "state_shape": (setter(stepper_args, "state_shape", "2"), "state_shape must be a list"),
    "state_shape_sizes": (
        setter(stepper_args, "state_shape", [2, 0]),
        "state_shape must be a list",
    ),
    "negative_dt": (setter(stepper_args, "dt", -1.0), "dt must be a finite number in"),
    "string_dt": (setter(stepper_args, "dt", "0.1"), "dt must be a finite number"),
    "residual": (setter(stepper_args, "residual", 1), "residual must be true or false"),
    "unknown_argument": (setter(stepper_args, "evil", 1), r"unknown \['evil'\]"),
    "missing_argument": (deleter(stepper_args, "residual"), r"missing \['residual'\]"),
    "missing_backbone": (
        lambda r: r["stepper"]["modules"].clear(),
        r"modules must be exactly \['backbone'\]; missing \['backbone'\]",
    ),
    "not_a_node": (setter(top, "stepper", [1, 2]), "must be an object with keys"),
    "backbone_as_stepper": (
        lambda r: r.update(stepper=r["stepper"]["modules"]["backbone"]),
        "is of a MLP, not a stepper",
    ),
    "refused_by_constructor": (
        setter(mlp_args, "in_features", 3),
        r"do not describe a valid StochasticLifting \(ValueError: backbone takes 3",
    ),
    "weights_do_not_fit": (
        setter(mlp_args, "hidden", 32),
        "does not fit StochasticLifting: .*shape or dtype mismatches .*configuration and the "
        "weights disagree",
    ),
    "other_dtype": (setter(top, "dtype", "float64"), "other dtypes than its configuration"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_CONFIGS))
def test_a_broken_recorded_configuration_is_refused_clearly(tmp_path, broken):
    edit, match = BROKEN_CONFIGS[broken]
    path = with_config(tmp_path, edit)
    with pytest.raises(CheckpointError, match=match) as caught:
        load_stepper(path)
    assert "load_stepper(path, stepper)" in str(caught.value)  # the way out
    load_stepper(path, make())  # the weights themselves are fine


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "is not JSON"),
        ("[" * 100_000 + "]" * 100_000, "is not JSON"),  # nesting beyond the parser
        ("x" * 2_000_000, "at most 1000000 characters"),
        (["a list"], "is a JSON text, got a list"),
        ({"format": "slift_plugin.stepper"}, "is a JSON text, got a dict"),
        ("null", "not a JSON object"),
    ],
    ids=["not_json", "deep", "huge", "list", "dict", "null"],
)
def test_a_configuration_that_is_not_a_json_text_is_refused(tmp_path, text, match):
    with pytest.raises(CheckpointError, match=match):
        load_stepper(with_config(tmp_path, text=text))


def test_a_configuration_of_an_absurd_model_allocates_nothing(tmp_path):
    """hidden=60000 and depth=256 are within the bounds and describe ~9e11 weights (3.7 TB):
    built on the meta device only, refused because the weights do not fit, in seconds."""
    path = with_config(tmp_path, lambda r: mlp_args(r).update(hidden=60_000, depth=256))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="does not fit StochasticLifting"):
        load_stepper(path)
    assert time.perf_counter() - start < 20
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 512 * 1024


def sl_fno():
    torch.manual_seed(0)
    net = lifted_operator("fno", state_channels=1, label_dim=2, n_modes=(4,), hidden_channels=4)
    return StochasticLifting(net, (1, None))


def operator_kwargs(record):
    return record["stepper"]["modules"]["backbone"]["args"]["operator_kwargs"]


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            setter(operator_kwargs, "hidden_channels", 200_000),
            r"hidden_channels is an integer in \[1, 65536\]",
        ),
        (setter(operator_kwargs, "n_layers", 10**9), r"n_layers is an integer in \[1, 256\]"),
        (setter(operator_kwargs, "n_modes", [0]), r"n_modes holds integers in \[1, 65536\]"),
        (setter(operator_kwargs, "n_modes", [4] * 9), "n_modes is a list of 1 to 6"),
        (setter(operator_kwargs, "in_channels", 3), "free of in_channels and out_channels"),
        (setter(operator_kwargs, "lifting_channel_ratio", 10**7), "integers within"),
        (setter(operator_kwargs, "no_such_kwarg", 1), "do not describe a valid LiftedOperator"),
        (
            lambda r: r["stepper"]["modules"]["backbone"]["args"].update(operator="resnet"),
            r"operator must be one of \['fno', 'tfno', 'uno'\]",
        ),
        (
            lambda r: r["stepper"]["modules"]["backbone"]["args"].update(injection="code"),
            "injection must be one of",
        ),
        (
            lambda r: r["stepper"]["modules"]["backbone"]["args"].update(label_dim=10**6),
            r"label_dim must be an integer in \[0, 65536\]",
        ),
        (setter(operator_kwargs, "hidden_channels", 60_000), "does not fit StochasticLifting"),
    ],
    ids=[
        "hidden",
        "layers",
        "zero_modes",
        "grid_dims",
        "in_channels",
        "unbounded_int",
        "unknown_kwarg",
        "operator",
        "injection",
        "label_dim",
        "weights_do_not_fit",
    ],
)
def test_a_broken_operator_configuration_is_refused_clearly(tmp_path, edit, match):
    path = with_config(tmp_path, edit, stepper=sl_fno())
    with pytest.raises(CheckpointError, match=match):
        load_stepper(path)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hidden_channels": 200_000}, r"hidden_channels must be an integer in \[1, 65536\]"),
        ({"label_injection": "code"}, "label_injection must be one of"),
        ({"dt": "0.4"}, "SLFNO: dt must be a number > 0 or null"),
        ({"operator_kwargs": {"n_layers": 10**9}}, "n_layers must be an integer"),
        ({"label_dim": 3}, "does not fit SLFNO"),
    ],
    ids=["hidden", "injection", "dt", "operator_kwargs", "weights_do_not_fit"],
)
def test_a_broken_slfno_configuration_is_refused_clearly(tmp_path, changes, match):
    model = SLFNO(1, n_modes=(4,), hidden_channels=4, n_layers=1, label_dim=2)
    path = with_config(tmp_path, lambda r: r["stepper"]["args"].update(changes), stepper=model)
    with pytest.raises(CheckpointError, match=match):
        load_stepper(path)


# -- a bad checkpoint_dir fails before the first step ----------------------------------------
def test_a_file_as_checkpoint_dir_fails_before_training(tmp_path):
    sl = make()
    data = data_for(sl)
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    before = weights(sl)
    with pytest.raises(CheckpointError, match="exists and is not a folder"):
        fit(sl, data, epochs=3, progress=False, checkpoint_dir=taken)
    assert_unchanged(sl, before)
    assert taken.read_text() == "keep me"
    with pytest.raises(CheckpointError, match="cannot create checkpoint_dir"):
        fit(sl, data, epochs=3, progress=False, checkpoint_dir=taken / "sub")
    assert_unchanged(sl, before)


def test_an_unwritable_checkpoint_dir_fails_before_training(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        probe = folder / "probe"
        try:
            probe.touch()  # root ignores the mode bits: nothing to test then
            probe.unlink()
            pytest.skip("this user can write into a folder of mode 0500 (root)")
        except PermissionError:
            pass
        sl = make()
        before = weights(sl)
        with pytest.raises(CheckpointError, match="is not writable"):
            fit(sl, data_for(sl), epochs=3, progress=False, checkpoint_dir=folder)
        assert_unchanged(sl, before)
    finally:
        folder.chmod(0o700)


# -- the atomic writer: orphans, modes, umask -------------------------------------------------
def writer(target, how):
    """A forked process inside ``atomic_write(target)``: killed mid-write, or still
    writing. Returns its pid (the killed one already reaped, as a parent would)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here, whatever happens
        try:

            def half_write(tmp):
                tmp.write_bytes(b"half a checkpoint")
                os.write(ready_w, b"w")
                if how == "die":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(60)

            atomic_write(target, half_write)
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"w"
    os.close(ready_r)
    if how == "die":
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return pid


def temporaries(folder, name):
    """Temporary siblings of target ``name`` (``.<name>.<stamp>.tmp``, no dot in the stamp)."""
    pattern = rf"\.{re.escape(name)}\.[^.]+\.tmp"
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(pattern, p.name))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL (POSIX)")
def test_a_killed_writers_temporary_file_is_removed_by_the_next_write_of_that_file(tmp_path):
    target, other = tmp_path / "last.pt", tmp_path / "last.pt.bak"
    alive = writer(target, "live")  # first: a write cleans up before it starts
    writer(target, "die")
    writer(other, "die")
    try:
        assert len(temporaries(tmp_path, "last.pt")) == 2
        assert len(temporaries(tmp_path, "last.pt.bak")) == 1
        save_stepper(target, make())
        # the dead writer's file is gone; the live writer's and the other target's stay
        left = temporaries(tmp_path, "last.pt")
        assert len(left) == 1 and str(alive) in left[0]
        assert len(temporaries(tmp_path, "last.pt.bak")) == 1
        load_stepper(target, make())
    finally:
        os.kill(alive, signal.SIGKILL)
        os.waitpid(alive, 0)
    save_stepper(target, make())  # now that writer is dead too
    assert temporaries(tmp_path, "last.pt") == []
    assert len(temporaries(tmp_path, "last.pt.bak")) == 1


def test_an_overwrite_keeps_the_files_mode_and_a_new_file_gets_the_usual_one(tmp_path):
    reference = tmp_path / "plain"
    reference.write_text("")  # an ordinary new file: 0666 less the umask
    fresh = save_stepper(tmp_path / "new.pt", make())
    assert stat.S_IMODE(fresh.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)
    private = tmp_path / "private.pt"
    save_stepper(private, make())
    private.chmod(0o600)
    save_stepper(private, make())
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    private.chmod(0o640)
    fit_dir = tmp_path / "run"
    sl = make()
    fit(sl, data_for(sl), epochs=1, progress=False, checkpoint_dir=fit_dir)
    (fit_dir / "last.pt").chmod(0o600)
    fit(sl, data_for(sl), epochs=1, progress=False, checkpoint_dir=fit_dir, resume=False)
    assert stat.S_IMODE((fit_dir / "last.pt").stat().st_mode) == 0o600


def test_no_code_changes_the_process_umask():
    """os.umask is process-wide: reading it means setting it, racing every other thread."""
    sources = [
        *ROOT.joinpath("slift_plugin").rglob("*.py"),
        *ROOT.joinpath("adapters").rglob("*.py"),
    ]
    assert len(sources) > 20
    offenders = [str(p.relative_to(ROOT)) for p in sources if "umask(" in p.read_text()]
    assert offenders == []
