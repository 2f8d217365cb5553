"""Digests of every stepper's trained ensemble for fixed seeds: a refactor must not move them.

Each case builds a stepper through the public API, trains it briefly with ``fit`` on a
small reference data set, rolls out an ensemble and hashes the exact bytes of the weights
and of the ensemble (sha256). Run it before and after a change that should not change
behaviour::

    python benchmarks/behaviour_digest.py --out before.json
    python benchmarks/behaviour_digest.py --check before.json   # exit 1 on any difference

The same check for ``slift bench``: every column of two ``runs.csv`` files except the
timings must be equal::

    python benchmarks/behaviour_digest.py --compare-runs before/runs.csv after/runs.csv

The committed ``benchmarks/results/behaviour_digest.json`` was written from the tree
before the methods-package refactor (issue 10). Digests are only comparable on one
machine with one torch build and one thread: float round-off differs across builds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from slift_plugin import (
    DICE,
    MLP,
    EnergyScoreLifting,
    FlowMatching,
    MeanRegression,
    PotentialMLP,
    SnapshotDataset,
    StochasticLifting,
    TransitionDataset,
    fit,
    rollout,
)
from slift_plugin.adapters.neuralop import lifted_operator
from slift_plugin.systems import allen_cahn, double_well


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _weights_digest(stepper: torch.nn.Module) -> str:
    state = stepper.state_dict()
    return _digest(*(state[k].float() for k in sorted(state) if state[k].is_floating_point()))


def _vector_data():
    return double_well(n_samples=64, n_steps=6, dt=0.25, seed=1)


def _field_data():
    return allen_cahn(n_samples=8, n_steps=3, n_grid=16, dt=0.05, seed=2)


def _vector_cases() -> dict[str, Callable[[], tuple]]:
    def sl():
        return StochasticLifting(MLP(1, 1, label_dim=8, hidden=32), (1,), dt=0.25)

    def mse():
        return MeanRegression(MLP(1, 1, label_dim=0, hidden=32), (1,), dt=0.25)

    def es():
        return EnergyScoreLifting(MLP(1, 1, label_dim=8, hidden=32), (1,), dt=0.25, seed=3)

    def cfm():
        net = MLP(2, 1, label_dim=0, n_cond=1, hidden=32)
        return FlowMatching(net, (1,), n_euler=4, dt=0.25, seed=3)

    def dice():
        return DICE(PotentialMLP(1, hidden=32), (1,), sigma=0.5, dt=0.25, n_substeps=2)

    return {"sl-mlp": sl, "mse-mlp": mse, "es-mlp": es, "cfm-mlp": cfm, "dice-mlp": dice}


def _field_cases() -> dict[str, Callable[[], tuple]]:
    def operator(**kwargs):
        return lifted_operator(
            "fno", state_channels=1, n_modes=(4,), hidden_channels=8, n_layers=2, **kwargs
        )

    def sl():
        return StochasticLifting(operator(label_dim=4), (1, None), dt=0.05)

    def es():
        return EnergyScoreLifting(operator(label_dim=4), (1, None), dt=0.05, seed=3)

    def cfm():
        return FlowMatching(operator(label_dim=0, history=2, n_cond=1), (1, None), dt=0.05, seed=3)

    return {"sl-fno": sl, "es-fno": es, "cfm-fno": cfm}


def _dataset(stepper, data, grid):
    if isinstance(stepper, DICE):
        return SnapshotDataset.from_xarray(data, n_times=4)
    labels = stepper.fixed_labels(5, grid) if type(stepper) is StochasticLifting else None
    return TransitionDataset.from_xarray(data, labels=labels)


def run_case(build: Callable[[], torch.nn.Module], data, grid: tuple[int, ...]) -> dict:
    torch.manual_seed(0)  # the backbone's initial weights
    stepper = build()
    dataset = _dataset(stepper, data, grid)
    result = fit(stepper, dataset, epochs=2, batch_size=16, seed=4, progress=False)
    x0 = torch.as_tensor(data.isel(sample=0, time=0).values, dtype=torch.float32)
    ens = rollout(stepper, x0, n_steps=3, n_samples=40, seed=6, chunk_size=16, progress=False)
    return {
        "loss": float(result.final_loss).hex(),
        "weights": _weights_digest(stepper),
        "ensemble": _digest(torch.as_tensor(ens.values)),
    }


def all_digests() -> dict[str, dict]:
    torch.set_num_threads(1)
    out = {}
    vector, field = _vector_data(), _field_data()
    for name, build in _vector_cases().items():
        out[name] = run_case(build, vector, ())
    for name, build in _field_cases().items():
        out[name] = run_case(build, field, (16,))
    return out


# wall-clock columns of runs.csv: they differ between any two runs
TIMING_COLUMNS = ("sample_seconds", "sample_ms_per_1k", "train_seconds", "cost_vs_sl")


def compare_runs(before: Path, after: Path) -> int:
    """Print the cells of two ``slift bench`` runs.csv that differ, timings excluded."""
    import pandas as pd

    a, b = pd.read_csv(before), pd.read_csv(after)
    if list(a.columns) != list(b.columns) or a.shape != b.shape:
        print(f"different layouts: {a.shape} {list(a.columns)} vs {b.shape} {list(b.columns)}")
        return 1
    cols = [c for c in a.columns if c not in TIMING_COLUMNS]
    n_bad = 0
    for row in range(len(a)):
        for col in cols:
            x, y = a.at[row, col], b.at[row, col]
            if not (x == y or (pd.isna(x) and pd.isna(y))):
                n_bad += 1
                run = f"{a.at[row, 'problem']}/{a.at[row, 'method']}/seed {a.at[row, 'seed']}"
                print(f"DIFFERS {run} {col}: {x} vs {y}")
    print(f"{len(a)} runs x {len(cols)} columns compared, {n_bad} cells differ")
    return 1 if n_bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write the digests as JSON")
    group.add_argument("--check", type=Path, help="compare with a JSON written by --out")
    group.add_argument("--compare-runs", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    if args.compare_runs is not None:
        return compare_runs(*args.compare_runs)
    digests = all_digests()
    if args.out is not None:
        args.out.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
        print(json.dumps(digests, indent=2, sort_keys=True))
        return 0
    expected = json.loads(args.check.read_text())
    differing = {
        name: {"expected": expected.get(name), "got": got}
        for name, got in digests.items()
        if expected.get(name) != got
    }
    missing = sorted(set(expected) - set(digests))
    for name, diff in differing.items():
        print(f"DIFFERS {name}: {diff}")
    for name in missing:
        print(f"MISSING {name}")
    print(f"{len(digests) - len(differing)} of {len(expected)} cases bit-identical")
    return 1 if differing or missing else 0


if __name__ == "__main__":
    sys.exit(main())
