"""The bench's DICE with and without the potential scaled by the marginals' speed.

``DICE(potential_scale=snapshots.marginal_speed())`` multiplies the potential's output by
how fast the training populations' first two moments move
(:meth:`slift_plugin.SnapshotDataset.marginal_speed`). On Lorenz-96 that is about 50 and it
helps (``benchmarks/dice_lorenz96_study.py``). This runs ``slift bench --methods dice`` on
other problems twice, with the bench's budget as it is and with
:attr:`slift_plugin.bench.methods.Budget.scale_potential` flipped, and prints the median
over seeds of the ED ratio at the bench's horizons and of the problem score, per variant.

    OMP_NUM_THREADS=1 python benchmarks/dice_potential_scale.py --problems double_well vlasov

Results: one JSON per problem in ``--out`` (every run's row, both variants).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from slift_plugin.bench import methods as M
from slift_plugin.bench.runner import BenchConfig, run_bench

HORIZONS = ("short", "middle", "final")


def run_variant(problem: str, seeds: int, scale: bool) -> list[dict]:
    """Every seed's bench row for DICE on ``problem``, the potential scaled or not."""
    key = (problem, False)
    original = M.BUDGETS[key]
    M.BUDGETS[key] = dataclasses.replace(original, scale_potential=scale)
    try:
        config = BenchConfig(problems=[problem], methods=["dice"], seeds=tuple(range(seeds)))
        return run_bench(config, progress=False).runs
    finally:
        M.BUDGETS[key] = original


def summary(rows: list[dict]) -> dict:
    return {
        "ed_ratio": [float(np.median([r[f"ed_ratio_{h}"] for r in rows])) for h in HORIZONS],
        "quantity_error": float(np.median([r["quantity_error"] for r in rows])),
        "train_seconds": float(np.median([r["train_seconds"] for r in rows])),
    }


def write_and_print(out: Path, problem: str, record: dict[str, list[dict]]) -> None:
    """``record`` (variant -> rows) to ``out/<problem>.json``, and one line per variant."""
    (out / f"{problem}.json").write_text(json.dumps(record, indent=2, default=float))
    for variant, rows in record.items():
        s = summary(rows)
        ratios = " / ".join(f"{v:.3g}" for v in s["ed_ratio"])
        print(
            f"{problem}, {variant}: ED ratio {ratios}, problem score "
            f"{s['quantity_error']:.3g}, train {s['train_seconds']:.0f} s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["double_well", "vlasov"])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0 .. N-1")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/cpu/dice_potential_scale")
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for problem in args.problems:
        record = {
            variant: run_variant(problem, args.seeds, scale)
            for variant, scale in (("scale 1", False), ("marginal speed", True))
        }
        write_and_print(args.out, problem, record)


if __name__ == "__main__":
    main()
