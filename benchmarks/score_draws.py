"""The bench's scores over many sampling draws per trained model, not one (issue 11).

``slift bench`` scores each trained model by one generated ensemble against one seeded
split of the reference, and the solver by one ensemble of its own. Both estimators
scatter widely: the exact system's Lorenz-63 autocorrelation error spans 4x from seed to
seed (``benchmarks/lorenz63_acf_sensitivity.py``), and the exact double well's ED ratio
lands above 1.5 in a third of its draws (``benchmarks/floor_splits.py``). Issue 11's bars
compare such numbers with 1.5; one draw per training seed cannot decide them.

This trains each model exactly as the bench does (same initial weights, data, labels and
budget), then draws ``--draws`` ensembles from it and as many from the exact solver per
seed, and scores each against the bench's reference: the problem score, and the ED ratio
at the bench's horizons with a split of its own. Draw 0 is the bench's (its sampling seed
and split): its scores equal the bench's to every digit on the double well and Lorenz-63,
and to 3-7 significant digits for Allen-Cahn's FNO models (float round-off, not traced).

Reported per method: the mean and median over all draws, the ratio of mean problem scores
to the solver's, and 90% intervals from a bootstrap that resamples training seeds, then
draws within each seed.

    OMP_NUM_THREADS=1 python benchmarks/score_draws.py --problem lorenz63 --seeds 0 1 2 3 4

Raw records go to ``<out>/<problem>/raw/<method>-seed<k>.json`` (an existing one is kept,
so runs resume and can be split across processes by seed); every call rewrites
``<out>/<problem>/summary.json`` from all records there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from slift_plugin import evaluate, rollout
from slift_plugin.bench import methods as M
from slift_plugin.bench.problems import ProblemData, build_problem
from slift_plugin.bench.runner import DATA_SEED
from slift_plugin.labels import hash_seed

PROBLEMS = ("double_well", "lorenz63", "allen_cahn")
METHODS = ("solver", "sl-coupled", "cfm20")
HORIZONS = ("short", "mid", "final")
DRAW_KEY = 1000  # seeds of draws after the bench's: hash_seed(<the bench's>, 1000 + g)
BOOTSTRAP = 2000


def _draw_seed(bench_seed: int, draw: int) -> int:
    return bench_seed if draw == 0 else hash_seed(bench_seed, DRAW_KEY + draw)


def trained_model(name: str, problem: ProblemData, seed: int):
    """The bench's model for ``name`` and training seed ``seed`` (``runner._train``)."""
    spec = M.parse_method(name)
    stepper = M.build_seeded(spec, problem, False, seed, key=spec.training_key)
    data = M.training_data(spec, stepper, problem, seed)
    M.train_with_budget(stepper, data, problem, False, seed)
    M.set_sampling(stepper, spec)
    return stepper.eval()


def _generator(name: str, problem: ProblemData, seed: int) -> tuple[Callable, int]:
    """``sampling seed -> ensemble`` for ``name``, and the bench's sampling seed."""
    if name == "solver":
        return (lambda s: problem.solve(problem.n_generate, s)), hash_seed(DATA_SEED, seed, 11)
    return model_generator(trained_model(name, problem, seed), problem), hash_seed(seed, 7)


def model_generator(stepper, problem: ProblemData) -> Callable:
    """``sampling seed -> ensemble`` of a trained stepper, rolled out as the bench does."""

    def generate(s: int):
        return rollout(
            stepper,
            problem.x0,
            problem.n_steps,
            problem.n_generate,
            mu=problem.mu,
            seed=s,
            chunk_size=problem.n_generate,
            coords=problem.coords,
            param_names=problem.param_names,
        )

    return generate


def _scores(name: str, problem: ProblemData, seed: int, draws: int) -> dict:
    """Train (models), then score ``draws`` ensembles; draw 0 with the bench's seeds."""
    start = time.perf_counter()
    generate, bench_seed = _generator(name, problem, seed)
    record = score_draws(generate, bench_seed, problem, seed, draws)
    return {"method": name, "seed": seed} | record | {"seconds": time.perf_counter() - start}


def score_draws(
    generate: Callable, bench_seed: int, problem: ProblemData, seed: int, draws: int
) -> dict:
    """The problem score and the ED ratios of ``draws`` ensembles of ``generate``: draw 0
    sampled with ``bench_seed`` and scored with the bench's split for training seed
    ``seed``, the others with seeds derived from those."""
    times = problem.reference["time"].values
    scores, ed_ratios = [], []
    for g in range(draws):
        ens = generate(_draw_seed(bench_seed, g))
        if problem.postprocess is not None:
            ens = problem.postprocess(ens)
        ens = ens.assign_coords(time=times)
        scores.append(problem.quantity_error(ens, problem.reference))
        ed = evaluate(
            ens.isel(time=problem.horizons),
            problem.reference,
            seed=_draw_seed(seed, g),  # the bench evaluates with the training seed
            period=problem.period,
        )
        ed_ratios.append([float(v) for v in ed["ed_ratio"].values])
    return {"scores": scores, "ed_ratio": ed_ratios}


def _bootstrap(groups: list[np.ndarray], rng, statistic=np.mean) -> np.ndarray:
    """``statistic`` of the pooled draws, resampling groups (seeds), then draws in each."""
    out = []
    for _ in range(BOOTSTRAP):
        picks = rng.integers(len(groups), size=len(groups))
        pooled = [groups[i][rng.integers(len(groups[i]), size=len(groups[i]))] for i in picks]
        out.append(statistic(np.concatenate(pooled), axis=0))
    return np.asarray(out)


def _interval(values: np.ndarray) -> list:
    return np.quantile(values, [0.05, 0.95], axis=0).T.tolist()


def _ed_summary(records: dict[int, dict], rng) -> dict:
    """Mean and median ED ratio per horizon over all draws, with the mean's interval."""
    groups = [np.asarray(records[s]["ed_ratio"]) for s in sorted(records)]
    flat = np.concatenate(groups)
    means = _bootstrap(groups, rng)
    return {
        f"ed_ratio_{h}": {
            "mean": float(flat[:, i].mean()),
            "median": float(np.median(flat[:, i])),
            "mean_90pct": _interval(means[:, i]),
            "above_1.5": float((flat[:, i] > 1.5).mean()),
        }
        for i, h in enumerate(HORIZONS)
    }


def summarise(raw: Path) -> dict:
    """Per method: problem-score and ED-ratio statistics over all draws (module docstring)."""
    by_method: dict[str, dict[int, dict]] = {}
    for path in sorted(raw.glob("*.json")):
        record = json.loads(path.read_text())
        by_method.setdefault(record["method"], {})[record["seed"]] = record
    rng = np.random.default_rng(0)
    solver = by_method.get("solver", {})
    summary = {}
    for name, per_seed in by_method.items():
        seeds = sorted(per_seed)
        groups = [np.asarray(per_seed[s]["scores"]) for s in seeds]
        flat = np.concatenate(groups)
        row = {
            "seeds": seeds,
            "draws_per_seed": sorted({len(g) for g in groups}),
            "problem_score_mean": float(flat.mean()),
            "problem_score_median": float(np.median(flat)),
            "problem_score_median_per_seed": [float(np.median(g)) for g in groups],
        }
        common = [s for s in seeds if s in solver]
        if name != "solver" and common:
            model = [np.asarray(per_seed[s]["scores"]) for s in common]
            exact = [np.asarray(solver[s]["scores"]) for s in common]
            ratios = _bootstrap(model, rng) / _bootstrap(exact, rng)
            pooled_model, pooled_exact = np.concatenate(model), np.concatenate(exact)
            row["problem_score_mean_over_solver"] = float(pooled_model.mean() / pooled_exact.mean())
            row["problem_score_mean_over_solver_90pct"] = _interval(ratios)
            row["problem_score_median_over_solver"] = float(
                np.median(pooled_model) / np.median(pooled_exact)
            )
        if all("ed_ratio" in per_seed[s] for s in seeds):
            row.update(_ed_summary(per_seed, rng))
        summary[name] = row
    return summary


def _print(summary: dict) -> None:
    for name, row in summary.items():
        line = f"{name}: problem score mean {row['problem_score_mean']:.4g}"
        if "problem_score_mean_over_solver" in row:
            lo, hi = row["problem_score_mean_over_solver_90pct"]
            line += (
                f" ({row['problem_score_mean_over_solver']:.2f}x the solver's [{lo:.2f}, {hi:.2f}])"
            )
        for h in HORIZONS:
            if f"ed_ratio_{h}" in row:
                ed = row[f"ed_ratio_{h}"]
                lo, hi = ed["mean_90pct"]
                line += f"; ED {h} {ed['mean']:.2f} [{lo:.2f}, {hi:.2f}]"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="lorenz63", choices=PROBLEMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--draws", type=int, default=20, help="ensembles per training seed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu/score_draws"))
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be >= 1, got {args.draws}")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    problem = build_problem(args.problem, quick=False, seed=DATA_SEED)
    raw = args.out / args.problem / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in args.methods:
        for seed in args.seeds:
            path = raw / f"{name}-seed{seed}.json"
            if not path.exists():
                path.write_text(json.dumps(_scores(name, problem, seed, args.draws), indent=1))
    summary = summarise(raw)
    (args.out / args.problem / "summary.json").write_text(json.dumps(summary, indent=1))
    _print(summary)


if __name__ == "__main__":
    main()
