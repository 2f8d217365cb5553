"""The bench's DICE sampled with 4 Euler(-Maruyama) or 2 Heun sub-steps, on other problems.

Both take 4 gradient evaluations per output step. On Lorenz-96 Heun was better at the
later horizons and worse at the first (BENCHMARKS.md, "Lorenz-96 in the bench"), and the
bench takes it there. This runs ``slift bench --methods dice`` on other problems once per
integrator (:data:`slift_plugin.bench.methods.DICE_INTEGRATOR` set for the problem's kind;
training is deterministic per seed, so both variants sample the same models) and prints
the median over seeds of the ED ratio at the bench's horizons and of the problem score.
With ``sigma > 0`` (the double well) Heun is stochastic Heun, one noise increment per
sub-step.

    OMP_NUM_THREADS=1 python benchmarks/dice_integrator.py --problems double_well vlasov

Results: one JSON per problem in ``--out`` (every run's row, both variants).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dice_potential_scale import write_and_print  # a sibling script

from slift_plugin.bench import methods as M
from slift_plugin.bench.problems import PROBLEM_KINDS
from slift_plugin.bench.runner import BenchConfig, run_bench

INTEGRATORS = {
    "4 Euler": {"n_substeps": 4, "scheme": "euler"},
    "2 Heun": {"n_substeps": 2, "scheme": "heun"},
}


def run_variant(problem: str, seeds: int, integrator: dict) -> list[dict]:
    """Every seed's bench row for DICE on ``problem``, sampled with ``integrator``."""
    kind = PROBLEM_KINDS[problem]
    original = M.DICE_INTEGRATOR[kind]
    M.DICE_INTEGRATOR[kind] = integrator
    try:
        config = BenchConfig(problems=[problem], methods=["dice"], seeds=tuple(range(seeds)))
        return run_bench(config, progress=False).runs
    finally:
        M.DICE_INTEGRATOR[kind] = original


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["double_well", "vlasov"])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0 .. N-1")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu/dice_integrator"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for problem in args.problems:
        record = {
            name: run_variant(problem, args.seeds, integrator)
            for name, integrator in INTEGRATORS.items()
        }
        write_and_print(args.out, problem, record)


if __name__ == "__main__":
    main()
