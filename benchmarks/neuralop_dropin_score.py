"""Score the neuraloperator drop-in (examples/neuralop_trainer_sl.py) against the solver.

Runs the SL Trainer script as written (full size unless ``--quick``), then scores its
``ensemble`` against 1,024 solver trajectories of stochastic Allen-Cahn (another seed than
the script's data) with :func:`slift_plugin.evaluate`, and the same model rolled out
without ``data_processor=`` (in its training coordinates) for comparison. Prints the ED
ratio and the relative mean/std errors at t = 0.4, 2, 4 and 8, and the wall time.

    OMP_NUM_THREADS=1 python benchmarks/neuralop_dropin_score.py   # about 11 min on 2 cores
"""

from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
import time
from pathlib import Path

import torch

from slift_plugin import evaluate, rollout
from slift_plugin.systems import allen_cahn

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "neuralop_trainer_sl.py"
TIMES = [1, 5, 10, 20]  # steps: t = 0.4, 2, 4, 8


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the script's CI sizes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as ckpt:
        sys.argv = [SCRIPT.name, "--save-dir", ckpt] + (["--quick"] if args.quick else [])
        started = time.perf_counter()
        run = runpy.run_path(str(SCRIPT), run_name="__main__")
        print(f"training and rollout: {time.perf_counter() - started:.0f} s")
    reference = allen_cahn(1024, 20, 0.4, seed=5)
    in_training_coordinates = rollout(run["model"], torch.zeros(1, 128), 20, 256, seed=0)
    for name, ensemble in (
        ("with data_processor", run["ensemble"]),
        ("without data_processor", in_training_coordinates),
    ):
        scores = evaluate(ensemble, reference)[["ed_ratio", "mean_rel_error", "std_rel_error"]]
        print(name)
        print(scores.isel(time=TIMES).to_dataframe().round(3).to_string())


if __name__ == "__main__":
    main()
