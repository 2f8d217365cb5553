"""How noisy is the ED ratio of a perfect generator, with one reference split or several?

``slift bench`` scores a generated ensemble by its energy distance (ED) to reference
subsample A over the noise floor ED(B, A), for one seeded split (A, B) of the reference
(``evaluate(..., n_splits=1)``). For a law with few directions of spread (the double
well: 1-D, bimodal later on) one split's ED is close to a chi-square variable with one
degree of freedom, so the ratio of two of them scatters widely even for the exact law.

This scores ``--draws`` independent ensembles of each problem's own solver (the exact law
at its fine step; the bench's generated size, seeds 500, 501, ...) against the bench's
reference, with ``evaluate``'s seed equal to the draw's index, for each of ``--splits``,
and prints the median and the 10th / 90th percentiles of the ED ratio at the bench's short,
mid and final horizons. A ratio estimator whose exact-law scores scatter over 0.5-4 cannot
rank models at these horizons: the spread measured here is what a bar of 1.5 has to live
with.

    OMP_NUM_THREADS=1 python benchmarks/floor_splits.py --problems double_well lorenz63 \\
        allen_cahn --draws 12 --splits 1 8

Results: a JSON file in ``--out`` per problem (every draw's ratios) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from slift_plugin import evaluate
from slift_plugin.bench.problems import PROBLEMS, build_problem
from slift_plugin.bench.runner import DATA_SEED

FIRST_DRAW_SEED = 500  # away from the bench's data (1000, 1001) and solver-row seeds


def exact_law_ratios(name: str, n_draws: int, splits: list[int]) -> dict:
    """ED ratios at the short / mid / final horizon of ``n_draws`` solver ensembles."""
    problem = build_problem(name, quick=False, seed=DATA_SEED)
    times = problem.reference["time"].values
    ratios: dict[int, list[list[float]]] = {k: [] for k in splits}
    for draw in range(n_draws):
        ensemble = problem.solve(problem.n_generate, FIRST_DRAW_SEED + draw)
        ensemble = ensemble.assign_coords(time=times)
        for n_splits in splits:
            scores = evaluate(
                ensemble, problem.reference, seed=draw, period=problem.period, n_splits=n_splits
            )
            ratios[n_splits].append(scores["ed_ratio"].isel(time=problem.horizons).values.tolist())
        print(
            f"{name} draw {draw}: "
            + ", ".join(f"{k} split(s) {np.round(ratios[k][-1], 2).tolist()}" for k in splits),
            flush=True,
        )
    return {
        "problem": name,
        "horizons": [float(times[k]) for k in problem.horizons],
        "n_generated": problem.n_generate,
        "n_reference": int(problem.reference.sizes["sample"]),
        "ratios": {str(k): v for k, v in ratios.items()},
    }


def summary(record: dict) -> list[str]:
    """One line per number of splits: median [p10, p90] at each horizon."""
    lines = []
    for k, rows in record["ratios"].items():
        r = np.asarray(rows)
        cells = [
            f"{np.median(r[:, h]):.2f} [{np.percentile(r[:, h], 10):.2f}, "
            f"{np.percentile(r[:, h], 90):.2f}]"
            for h in range(r.shape[1])
        ]
        lines.append(f"| {record['problem']} | {k} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["double_well"], choices=list(PROBLEMS))
    parser.add_argument("--draws", type=int, default=12, help="independent solver ensembles")
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu/floor_splits"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| problem | splits | short | mid | final |", "|---|---|---|---|---|"]
    for name in args.problems:
        record = exact_law_ratios(name, args.draws, args.splits)
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=1))
        lines += summary(record)
    print("\nED ratio of the exact solver, median [10th, 90th percentile] over draws:")
    print("\n".join(lines))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
