"""The torchsde swap of README.md, checked on a script pair: the import and the first argument.

``examples/torchsde_lorenz_solver.py`` is a plain torchsde script; its twin
``examples/torchsde_lorenz_learned.py`` must differ from it in two lines only, the import
of ``sdeint`` and the first argument of its call, and still run, on a checkpoint written
by the trainer of ``examples/replace_sdeint_lorenz.py``, to an ensemble that agrees with
the solver's.
"""

from __future__ import annotations

import ast
import difflib
import runpy
import sys
from pathlib import Path

import pytest
import torch

from slift_plugin import MLP, MeanRegression, TransitionDataset, fit, save_stepper
from slift_plugin.systems import Lorenz63SDE, lorenz63

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SOLVER, LEARNED = EXAMPLES / "torchsde_lorenz_solver.py", EXAMPLES / "torchsde_lorenz_learned.py"
CHECKPOINT = "lorenz_sl.pt"  # what the learned script passes to sdeint, in its working dir
QUICK = {"LORENZ_BATCH": "512", "LORENZ_T": "0.5"}  # 10 output steps of 0.05


def sdeint_call(tree: ast.Module) -> ast.Call:
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "sdeint"
    ]
    assert len(calls) == 1, f"expected one sdeint(...) call, found {len(calls)}"
    return calls[0]


def sdeint_import(tree: ast.Module) -> ast.ImportFrom:
    imports = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and [a.name for a in node.names] == ["sdeint"]
    ]
    assert len(imports) == 1, "expected one `from ... import sdeint`"
    return imports[0]


def test_the_learned_script_is_the_solver_script_with_two_lines_changed():
    solver, learned = SOLVER.read_text().splitlines(), LEARNED.read_text().splitlines()
    diff = list(difflib.unified_diff(solver, learned, lineterm="", n=0))
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    assert len(removed) == len(added) == 2, "\n".join(diff)
    ops = difflib.SequenceMatcher(a=solver, b=learned, autojunk=False).get_opcodes()
    changed = [(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in ops if tag != "equal"]
    assert all(i2 - i1 == j2 - j1 == 1 and i1 == j1 for i1, i2, j1, j2 in changed), changed
    assert removed[0] == "from torchsde import sdeint"
    assert added[0].startswith("from slift_plugin.adapters.torchsde import sdeint")

    trees = {name: ast.parse(path.read_text()) for name, path in (("s", SOLVER), ("l", LEARNED))}
    call_s, call_l = sdeint_call(trees["s"]), sdeint_call(trees["l"])
    # only the first argument differs: the SDE object becomes a checkpoint's file name
    for part in ("args", "keywords"):
        start = 1 if part == "args" else 0
        solver_part, learned_part = getattr(call_s, part)[start:], getattr(call_l, part)[start:]
        assert [ast.dump(a) for a in solver_part] == [ast.dump(a) for a in learned_part]
    assert ast.unparse(call_s.args[0]) == "sde"
    assert isinstance(call_l.args[0], ast.Constant) and call_l.args[0].value == CHECKPOINT
    assert sdeint_import(trees["s"]).module == "torchsde"
    assert sdeint_import(trees["l"]).module == "slift_plugin.adapters.torchsde"
    # nothing else, comments aside: put the two back and the programs are the same
    call_l.args[0] = call_s.args[0]
    sdeint_import(trees["l"]).module = "torchsde"
    assert ast.dump(trees["l"]) == ast.dump(trees["s"])


def run_script(path: Path, workdir: Path, monkeypatch) -> dict:
    """Run an example as ``python path`` from ``workdir``, at the quick sizes."""
    for name, value in QUICK.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", [str(path)])
    return runpy.run_path(str(path), run_name="__main__")


def disagreement(ys: torch.Tensor, reference: torch.Tensor) -> list[str]:
    """What is off in the final-time ensemble ``ys`` against the solver's ``reference``.

    Per component: the mean within half a reference std (plus 4 standard errors), the
    std within a factor 2.5. Loose, because the stepper is trained in seconds (its spread
    comes out at 0.6-1.2 of the solver's); tight enough that an ensemble without spread,
    or one centred elsewhere on the attractor, fails.
    """
    y, ref = ys[-1].double(), reference[-1].double()
    problems = []
    for c, name in enumerate("xyz"):
        mean, ref_mean = float(y[:, c].mean()), float(ref[:, c].mean())
        std, ref_std = float(y[:, c].std()), float(ref[:, c].std())
        tolerance = 0.5 * ref_std + 4 * ref_std / len(ref) ** 0.5
        if abs(mean - ref_mean) > tolerance:
            problems.append(
                f"mean {name}: {mean:.3f} vs {ref_mean:.3f} (tolerance {tolerance:.3f})"
            )
        if not ref_std / 2.5 <= std <= 2.5 * ref_std:
            problems.append(f"std {name}: {std:.3f} vs {ref_std:.3f}")
    return problems


@pytest.fixture(scope="module")
def trainer() -> dict:
    argv, sys.argv = sys.argv, ["replace_sdeint_lorenz.py"]
    try:
        return runpy.run_path(str(EXAMPLES / "replace_sdeint_lorenz.py"), run_name="example")
    finally:
        sys.argv = argv


def test_the_solver_script_integrates_the_sde_the_stepper_is_trained_on(monkeypatch, tmp_path):
    namespace = run_script(SOLVER, tmp_path, monkeypatch)
    y = 10 * torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    script_sde, trained_on = namespace["sde"], Lorenz63SDE()
    torch.testing.assert_close(script_sde.f(0.0, y), trained_on.f(0.0, y))
    torch.testing.assert_close(script_sde.g(0.0, y), trained_on.g(0.0, y))
    data = lorenz63(n_samples=1, n_steps=1)
    torch.testing.assert_close(namespace["y0"][0], torch.as_tensor(data.values[0, 0]))


def test_the_learned_script_reproduces_the_solver_ensemble(trainer, monkeypatch, tmp_path):
    """Both scripts run; SL agrees with the solver at t = 0.5, a stepper trained with MSE
    (one trajectory from one initial state: no spread) does not."""
    reference = run_script(SOLVER, tmp_path, monkeypatch)["ys"]
    sl_dir, mse_dir = tmp_path / "sl", tmp_path / "mse"
    sl_dir.mkdir(), mse_dir.mkdir()
    stepper, _ = trainer["train_stepper"](64, 20, 150, hidden=128, depth=2)
    save_stepper(sl_dir / CHECKPOINT, stepper)
    learned = run_script(LEARNED, sl_dir, monkeypatch)
    ys = learned["ys"]
    assert ys.shape == reference.shape == (11, 512, 3) and ys.dtype == reference.dtype
    assert disagreement(ys, reference) == []
    # the same seed (bm's entropy) gives the same ensemble; the file is the stepper
    torch.testing.assert_close(run_script(LEARNED, sl_dir, monkeypatch)["ys"], ys)

    data = lorenz63(n_samples=64, n_steps=20, dt=0.05, seed=0)
    torch.manual_seed(0)
    mse = MeanRegression(MLP(3, 3, label_dim=0, hidden=128, depth=2), (3,), dt=0.05)
    fit(mse, TransitionDataset.from_xarray(data), epochs=10, batch_size=256, progress=False)
    save_stepper(mse_dir / CHECKPOINT, mse)
    collapsed = run_script(LEARNED, mse_dir, monkeypatch)["ys"]
    assert float(collapsed[-1].std(dim=0).max()) == 0.0
    problems = disagreement(collapsed, reference)
    assert [p.split(":")[0] for p in problems if p.startswith("std")] == ["std x", "std y", "std z"]
