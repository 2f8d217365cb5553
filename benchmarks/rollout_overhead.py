"""How much does rollout() add to the backbone, and how much memory does it hold?

Overhead: for (a) the README's MLP stepper (batch 4096) and (b) a default SL-FNO (grid
128, batch 256), time one rollout step (whole rollout / n_steps, setup included) and one
bare backbone forward at the same batch size, under ``inference_mode``. Measurements are
interleaved (bare, step, rollout, bare, step, rollout, ...) after a warm-up, and the
median of the repeats is reported. ``stepper.step`` is timed too, so that the ratio splits
into the stepper's own work (normalisation, residual) and the loop's (noise, copies).
The headline ratio is the median over repeats of rollout / backbone within a repeat.

Memory: a fresh subprocess per ensemble size generates a double-well/MLP ensemble (64
steps, chunk 4096 by default: the README's example), in memory and streamed to zarr, and
reports how much the rollout raised its peak RSS above the RSS just before it. A warm-up
rollout of the same kind (with ``out=`` to a scratch store for zarr) runs first, so that
imports (zarr, numcodecs, dask) and first-call allocations are not counted.

    python benchmarks/rollout_overhead.py --out rollout_overhead.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from slift_plugin import MLP, StochasticLifting, rollout


def mlp_stepper() -> StochasticLifting:
    torch.manual_seed(0)
    return StochasticLifting(MLP(1, 1, label_dim=32, hidden=256), state_shape=(1,), dt=0.25)


def fno_stepper() -> StochasticLifting:
    from slift_plugin.adapters.neuralop import lifted_operator

    torch.manual_seed(0)
    backbone = lifted_operator(
        "fno",
        state_channels=1,
        label_dim=32,
        injection="channels",
        n_modes=(16,),
        hidden_channels=32,
        n_layers=4,
    )
    return StochasticLifting(backbone, state_shape=(1, 128), dt=0.1)


def _timed(fn, n_calls: int) -> float:
    start = time.perf_counter()
    for _ in range(n_calls):
        fn()
    return (time.perf_counter() - start) / n_calls


def interleaved_times(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every ``runs[key] = (fn, n_calls)``, ``repeats`` times each.

    One warm-up call each, then the runs take turns (a, b, c, a, b, c, ...), so that
    drifts of a shared machine hit all alike. Shared with benchmarks/gpu_throughput.py.
    """
    for fn, _ in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, (fn, n_calls) in runs.items():
            times[key].append(_timed(fn, n_calls))
    return times


def measure_overhead(name: str, stepper, batch: int, n_steps: int, repeats: int) -> dict:
    """Median seconds per step of backbone, stepper.step and rollout, and their ratios."""
    stepper.eval()
    grid = tuple(stepper.grid_shape)
    g = torch.Generator().manual_seed(0)
    window = torch.randn(batch, stepper.window_channels, *grid, generator=g)
    label = torch.randn(batch, *stepper.noise_shape(grid), generator=g)
    x0 = torch.zeros(stepper.state_shape)

    def bare():
        with torch.inference_mode():
            stepper.backbone(window, label, None)

    def step():
        with torch.inference_mode():
            stepper.step(window, label)

    def full():
        rollout(stepper, x0, n_steps, batch, seed=1, chunk_size=batch)

    runs = {"backbone": (bare, n_steps), "step": (step, n_steps), "rollout": (full, 1)}
    times = interleaved_times(runs, repeats)
    times["rollout"] = [t / n_steps for t in times["rollout"]]  # per step
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    # per repeat, rollout against the backbone timed just before it: slow phases of a
    # shared machine hit both, and the median of these ratios is the headline number
    paired = [r / b for r, b in zip(times["rollout"], times["backbone"], strict=True)]
    return {
        "case": name,
        "batch": batch,
        "n_steps": n_steps,
        "repeats": repeats,
        "backbone_ms": 1e3 * med["backbone"],
        "step_ms": 1e3 * med["step"],
        "rollout_ms_per_step": 1e3 * med["rollout"],
        "ratio_rollout_to_backbone": statistics.median(paired),
        "ratio_rollout_to_backbone_of_medians": med["rollout"] / med["backbone"],
        "ratio_step_to_backbone": med["step"] / med["backbone"],
        "ratio_rollout_to_step": med["rollout"] / med["step"],
        # the fastest repeat of each: less exposed to other processes on a shared machine
        "ratio_rollout_to_backbone_best": best["rollout"] / best["backbone"],
    }


def _proc_status_mib(key: str) -> float | None:
    """``VmRSS``/``VmHWM`` of this process in MiB from /proc (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_child(n_samples: int, n_steps: int, chunk_size: int, where: str) -> dict:
    """In a fresh process: generate a double-well/MLP ensemble, report peak RSS.

    ``peak_rss_mib`` is the whole process's peak (``VmHWM``: imports, warm-up and
    rollout; not ``ru_maxrss``, which on Linux keeps the benchmark parent's peak across
    the child's ``exec``);
    ``rollout_peak_rss_mib`` the peak during the rollout alone (``VmHWM`` reset just
    before it), ``baseline_rss_mib`` the RSS before it, ``rss_increase_mib`` the
    difference of the two: what the rollout itself raised the peak RSS by.
    """
    stepper = mlp_stepper()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ens.zarr" if where == "zarr" else None
        # warm-up of the same kind: imports (zarr, numcodecs, dask for the lazy result)
        # and first-call allocations happen here, before the measurement
        warm_out = Path(tmp) / "warm-up.zarr" if where == "zarr" else None
        rollout(stepper, torch.zeros(1), 1, 8, out=warm_out).load()
        baseline = _proc_status_mib("VmRSS")
        setup_peak = _proc_status_mib("VmHWM")  # imports and warm-up
        reset = _reset_peak_rss()
        start = time.perf_counter()
        ens = rollout(stepper, torch.zeros(1), n_steps, n_samples, chunk_size=chunk_size, out=out)
        seconds = time.perf_counter() - start
        rollout_peak = _proc_status_mib("VmHWM") if reset else None
        shape = tuple(ens.shape)
    increase = None if rollout_peak is None or baseline is None else rollout_peak - baseline
    peaks = [p for p in (setup_peak, rollout_peak) if p is not None]
    return {
        "where": where,
        "n_samples": n_samples,
        "n_steps": n_steps,
        "chunk_size": chunk_size,
        "shape": shape,
        "ensemble_mib": 4 * n_samples * (n_steps + 1) / 2**20,
        "baseline_rss_mib": baseline,
        "rollout_peak_rss_mib": rollout_peak,
        "rss_increase_mib": increase,
        "peak_rss_mib": max(peaks) if peaks else None,
        "seconds": seconds,
    }


def measure_memory(sizes, n_steps: int, chunk_size: int, threads: int) -> list[dict]:
    rows = []
    for where in ("memory", "zarr"):
        for n in sizes:
            cmd = [sys.executable, __file__, "--rss-child", str(n), where]
            cmd += ["--steps", str(n_steps), "--chunk", str(chunk_size)]
            cmd += ["--threads", str(threads)]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def print_tables(overhead: list[dict], memory: list[dict]) -> None:
    print("\nrollout overhead (CPU, median ms per step)")
    print(f"{'case':<8}{'batch':>7}{'backbone':>10}{'step':>9}{'rollout':>9}"
          f"{'ro/bb':>8}{'step/bb':>9}{'ro/step':>9}{'ro/bb best':>11}")  # fmt: skip
    for r in overhead:
        print(
            f"{r['case']:<8}{r['batch']:>7}{r['backbone_ms']:>10.2f}{r['step_ms']:>9.2f}"
            f"{r['rollout_ms_per_step']:>9.2f}{r['ratio_rollout_to_backbone']:>8.3f}"
            f"{r['ratio_step_to_backbone']:>9.3f}{r['ratio_rollout_to_step']:>9.3f}"
            f"{r['ratio_rollout_to_backbone_best']:>11.3f}"
        )
    if memory:
        print("\npeak RSS of a fresh process (double-well MLP, chunk "
              f"{memory[0]['chunk_size']}, {memory[0]['n_steps']} steps)")  # fmt: skip
        print(f"{'output':<8}{'samples':>9}{'ensemble':>10}{'before':>9}{'peak in rollout':>17}"
              f"{'increase':>10}{'process peak':>14}{'s':>7}   (MiB)")  # fmt: skip
        for r in memory:
            keys = ("baseline_rss_mib", "rollout_peak_rss_mib", "rss_increase_mib", "peak_rss_mib")
            before, during, increase, peak = (float("nan") if r[k] is None else r[k] for k in keys)
            print(
                f"{r['where']:<8}{r['n_samples']:>9}{r['ensemble_mib']:>10.1f}{before:>9.1f}"
                f"{during:>17.1f}{increase:>10.1f}{peak:>14.1f}{r['seconds']:>7.1f}"
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller ensembles")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    p.add_argument("--steps", type=int, default=64, help="steps of the memory runs")
    p.add_argument("--chunk", type=int, default=4096, help="chunk_size of the memory runs")
    p.add_argument("--rss-child", nargs=2, metavar=("N", "WHERE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        n, where = args.rss_child
        print(json.dumps(rss_child(int(n), args.steps, args.chunk, where)))
        return
    repeats = 3 if args.quick else args.repeats
    sizes = [2_000, 20_000] if args.quick else args.sizes
    overhead = [
        measure_overhead("mlp", mlp_stepper(), 4096, 10, repeats),
        measure_overhead("fno", fno_stepper(), 256, 10, repeats),
    ]
    memory = [] if args.skip_memory else measure_memory(sizes, args.steps, args.chunk, args.threads)
    print_tables(overhead, memory)
    if args.out:
        info = {
            "torch": torch.__version__,
            "threads": args.threads,
            "machine": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
        }
        payload = {"info": info, "overhead": overhead, "memory": memory}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
