"""How far apart two PIC runs of the two-stream instability are, against the bench's noise floor.

``slift bench`` scores Vlasov ensembles with the ED ratio to a noise floor made of two
halves of one particle-in-cell (PIC) reference run. Its solver row, an independent PIC run
with half the reference's particles, scores 6.4 at the final horizon, which makes issue
12's bar (DICE's ED ratio <= 2 at every horizon) one that PIC itself misses. This measures,
for several particle counts ``N`` and PIC seeds:

* ``halves``: the ED ratio of an independent PIC run of ``N`` particles to the reference
  (``2 N`` particles), with the bench's floor (two halves of the reference);
* ``other_run``: the same ED divided by the ED between a second independent run of ``N``
  particles and the reference, i.e. the ratio a floor made of another solver run would
  give; its scatter over seeds says whether one run can serve as a floor;
* ``run_to_run / halves_floor``: the median over seeds of the ED between an independent run
  and the reference, over the median halves floor: how much larger the run-to-run
  difference is than particle sampling noise, and whether it shrinks with ``N``.

Beam speed v0 = 1.0 (the bench's held-out value), the bench's output step, internal step
and quiet start; x on the circle. Energy distances at three horizons only (t = 5, 20, 40:
the bench's short, mid and final), since they cost O(N^2).

    OMP_NUM_THREADS=1 python benchmarks/vlasov_pic_floor.py --n-particles 2000 6000 12000

Writes ``--out`` (one JSON with every number) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import xarray as xr

from slift_plugin import evaluate
from slift_plugin.systems.vlasov import DEFAULT_LENGTH, vlasov_two_stream

HORIZONS = (5.0, 20.0, 40.0)


def pic_run(n: int, seed: int) -> xr.DataArray:
    """The bench's held-out Vlasov PIC run (v0 = 1.0) with ``n`` particles, at the horizons."""
    state = vlasov_two_stream(
        n_particles=n, n_steps=40, dt=1.0, v0=1.0, dt_internal=0.1, seed=seed
    )["state"]
    return state.sel(time=list(HORIZONS))


def distances(run: xr.DataArray, reference: xr.DataArray, seed: int) -> xr.Dataset:
    """:func:`slift_plugin.evaluate` of ``run`` against ``reference``, x on the circle."""
    return evaluate(run, reference, seed=seed, period=[DEFAULT_LENGTH, None])


def one_size(n: int, seeds: list[int]) -> dict:
    """Per seed: a reference of ``2 n`` particles and two independent runs of ``n``."""
    per_seed = []
    for seed in seeds:
        base = 1000 * seed + n  # PIC seeds distinct across sizes and seeds
        reference = pic_run(2 * n, base)
        first = distances(pic_run(n, base + 1), reference, seed)
        second = distances(pic_run(n, base + 2), reference, seed)
        print(f"N = {n}, seed {seed}: done", flush=True)  # a size of 12,000 takes minutes
        per_seed.append(
            {
                "seed": seed,
                "halves_floor": first["noise_floor"].values.tolist(),
                "run_to_run": first["energy_distance"].values.tolist(),
                "halves": first["ed_ratio"].values.tolist(),
                "other_run": (
                    first["energy_distance"].values / second["energy_distance"].values
                ).tolist(),
            }
        )
    median = {
        key: np.median([r[key] for r in per_seed], axis=0).tolist()
        for key in ("halves_floor", "run_to_run", "halves", "other_run")
    }
    median["run_to_run_over_halves_floor"] = (
        np.asarray(median["run_to_run"]) / np.asarray(median["halves_floor"])
    ).tolist()
    return {"n_particles": n, "horizons": list(HORIZONS), "per_seed": per_seed, "median": median}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-particles", type=int, nargs="+", default=[2000, 6000, 12000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", default="benchmarks/results/cpu/vlasov_pic_floor.json")
    args = p.parse_args(argv)
    results = [one_size(n, args.seeds) for n in args.n_particles]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"seeds": args.seeds, "sizes": results}, indent=1))
    print("N | halves ratio t=5/20/40 (median) | other-run ratio [min, max] | run-to-run / floor")
    for r in results:
        m = r["median"]
        spread = np.asarray([s["other_run"] for s in r["per_seed"]])
        print(
            f"{r['n_particles']} | {np.round(m['halves'], 2).tolist()} | "
            f"{np.round(m['other_run'], 2).tolist()} "
            f"[{np.round(spread.min(0), 2).tolist()}, {np.round(spread.max(0), 2).tolist()}] | "
            f"{np.round(m['run_to_run_over_halves_floor'], 2).tolist()}"
        )


if __name__ == "__main__":
    main()
