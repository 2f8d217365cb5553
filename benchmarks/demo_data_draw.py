"""Is the demo's gap to the bench in its data draw? (issue 11, BENCHMARKS.md).

The bench's Allen-Cahn rows (data seed 1000) scored far better than the demo (data seed 0)
at the same recipe. This scores, against the demo's reference (``allen_cahn`` seed 1, 512
trajectories):

* the demo's 128 training trajectories themselves (and their mean over samples and cells,
  the chance imbalance between the +1 and -1 phases), and ``--fresh`` independent solver
  ensembles of 128 (seeds 50, 51, ...): how typical the training draw is;
* the same for the bench's data (train seed 1000, reference 1001);
* with ``--train-cfm``, the bench's CFM-20 model (its builder, budget and training, weight
  seed ``--cfm-seed``) trained on the demo's data and rolled out from u0 = 0: whether
  the data draw alone moves a model.

    OMP_NUM_THREADS=1 python benchmarks/demo_data_draw.py --train-cfm

Prints the ED ratio and the mean error at t = 2, 4, 8 for each ensemble.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import xarray as xr

from slift_plugin import TransitionDataset, evaluate, rollout
from slift_plugin.bench import methods as M
from slift_plugin.bench.problems import build_problem
from slift_plugin.bench.runner import DATA_SEED
from slift_plugin.systems import allen_cahn

SIZES = dict(n_steps=20, dt=0.4, n_grid=128)  # the demo's and the bench's full sizes
STEPS = [5, 10, 20]  # t = 2, 4, 8


def scores(ensemble: xr.DataArray, reference: xr.DataArray) -> str:
    """ED ratio and mean error at t = 2, 4, 8, scored as the demo scores (seed 0)."""
    m = evaluate(ensemble.assign_coords(time=reference["time"].values), reference, seed=0)
    ed = np.round(m.ed_ratio.isel(time=STEPS).values, 2)
    mean = np.round(m.mean_rel_error.isel(time=STEPS).values, 3)
    return f"ED ratio {ed.tolist()}, mean error {mean.tolist()}"


def training_draws(train_seed: int, n_fresh: int) -> None:
    """The training set and fresh solver draws of its size, against its reference."""
    reference = allen_cahn(n_samples=512, seed=train_seed + 1, **SIZES)
    train = allen_cahn(n_samples=128, seed=train_seed, **SIZES)
    print(f"data seed {train_seed}: training set: {scores(train, reference)}", flush=True)
    # The law is symmetric under u -> -u: a training set's mean over samples and cells is
    # its chance imbalance between the two phases, in units of the reference spread.
    u, spread = train.values[:, STEPS], reference.values[:, STEPS].std(axis=0).mean(axis=(-2, -1))
    imbalance = np.round((u.mean(axis=(0, -2, -1)) / spread).astype(np.float64), 3)
    print(f"  its phase imbalance at t = 2, 4, 8: {imbalance.tolist()}", flush=True)
    for s in range(50, 50 + n_fresh):
        fresh = allen_cahn(n_samples=128, seed=s, **SIZES)
        print(f"  fresh solver draw (seed {s}): {scores(fresh, reference)}", flush=True)


def bench_cfm_on_demo_data(cfm_seed: int) -> None:
    """The bench's CFM-20 (builder, budget, rollout) trained on the demo's data."""
    problem = build_problem("allen_cahn", quick=False, seed=0)  # the demo's data seeds
    spec = M.MethodSpec("cfm", "cfm", n_euler=20)
    model = M.build_seeded(spec, problem, False, cfm_seed, key="demo data draw")
    M.train_with_budget(model, TransitionDataset.from_xarray(problem.train), problem, False, 0)
    ensemble = rollout(
        model, problem.x0, problem.n_steps, problem.n_generate, seed=7, coords=problem.coords
    )
    print(f"bench CFM-20 on the demo's data: {scores(ensemble, problem.reference)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", type=int, default=3, help="fresh solver draws per data set")
    parser.add_argument("--train-cfm", action="store_true", help="also train the bench's CFM")
    parser.add_argument("--cfm-seed", type=int, default=0, help="its weight seed")
    args = parser.parse_args(argv)
    for train_seed in (0, DATA_SEED):
        training_draws(train_seed, args.fresh)
    if args.train_cfm:
        bench_cfm_on_demo_data(args.cfm_seed)


if __name__ == "__main__":
    torch.manual_seed(0)  # nothing draws from it; every draw above is seeded
    main()
