"""GPU throughput of rollout(), and the report of benchmarks/gpu_check.sh.

``bench`` (the default): trajectory-steps per second of a whole rollout (setup, CUDA
graph capture and the copies to pinned host memory included) of the README's MLP stepper
and the Allen-Cahn SL-FNO of benchmarks/rollout_overhead.py, in four modes: eager
float32, CUDA graph, bf16 autocast, CUDA graph with bf16 autocast; against the bare
backbone forward at the same batch (float32 and under bf16 autocast), which is the most a
rollout could reach without a faster backbone. Timing: one warm-up, then the modes take
turns ``--repeats`` times (rollout_overhead.interleaved_times), median; every timed call
ends with ``torch.cuda.synchronize()``. A mode that raises is recorded with its error
and left out, so the other rows still come. The output JSON is rewritten after every
case, so a run stopped by a time limit keeps the cases done. ``--device cpu --tiny``
runs the same code at toy sizes (CI exercises it).

``info``: torch, CUDA and device facts as JSON (gpu_check.sh asks for them when the
benchmark did not write them). ``report``: merges what gpu_check.sh collected (pytest's
JUnit XML, the throughput JSON, exit codes, logs) into one JSON file.
Both import torch only, never slift_plugin, so they work where the project does not.

    python benchmarks/gpu_throughput.py --out gpu_throughput.json
    python benchmarks/gpu_throughput.py --device cpu --tiny --out tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

# mode: (cuda_graph, autocast dtype); "bare*": the backbone alone, no rollout around it
MODES: dict[str, tuple[bool, torch.dtype | None]] = {
    "bare": (False, None),
    "bare-bf16": (False, torch.bfloat16),
    "eager": (False, None),
    "graph": (True, None),
    "bf16": (False, torch.bfloat16),
    "graph-bf16": (True, torch.bfloat16),
}
# case: batches on a GPU (launch-bound, then throughput-bound), batch at --tiny
BATCHES = {"mlp": ((4096, 65536), 64), "fno": ((256, 4096), 4)}
COLUMNS = (
    "case",
    "mode",
    "batch",
    "n_steps",
    "ms_per_step",
    "traj_steps_per_s",
    "ratio_to_bare",
    "error",
)
TIMED_OUT = (124, 137)  # exit codes of `timeout` (TERM, then KILL)


# -- facts ----------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict:
    """torch, CUDA and device facts (what a throughput number depends on)."""
    info = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cudnn": torch.backends.cudnn.version(),
            "device_count": torch.cuda.device_count(),
        }
        if torch.distributed.is_nccl_available():
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    if shutil.which("nvidia-smi"):  # the driver's version; a facts query must not fail
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        try:
            done = subprocess.run(query, capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
        except (OSError, subprocess.SubprocessError) as err:
            info["nvidia_smi"] = f"{type(err).__name__}: {err}"
    return info


# -- throughput -----------------------------------------------------------------------------
def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def mode_runs(stepper, batch: int, n_steps: int, device: torch.device) -> dict:
    """For every mode, a call that does ``n_steps`` steps of ``batch`` trajectories."""
    from slift_plugin import rollout

    stepper.to(device).eval()
    grid = tuple(stepper.grid_shape)
    g = torch.Generator().manual_seed(0)
    window = torch.randn(batch, stepper.window_channels, *grid, generator=g).to(device)
    label = torch.randn(batch, *stepper.noise_shape(grid), generator=g).to(device)
    x0 = torch.zeros(stepper.state_shape)
    # a timed call ends when the device is done, not when the last launch returns
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def bare(dtype):
        def run():
            with torch.inference_mode(), _autocast(device, dtype):
                for _ in range(n_steps):
                    stepper.backbone(window, label, None)
            sync()

        return run

    def full(graph, dtype):
        def run():
            kw = {"cuda_graph": graph, "autocast_dtype": dtype}
            rollout(stepper, x0, n_steps, batch, seed=1, chunk_size=batch, **kw)
            sync()

        return run

    runs = {}
    for mode, (graph, dtype) in MODES.items():
        runs[mode] = bare(dtype) if mode.startswith("bare") else full(graph, dtype)
    return runs


def measure_case(case: str, stepper, batch: int, n_steps: int, repeats: int, device) -> list:
    """One row per mode: median ms per step, trajectory-steps/s, time over the bare forward."""
    from rollout_overhead import interleaved_times

    runs, errors = {}, {}
    for mode, fn in mode_runs(stepper, batch, n_steps, device).items():
        try:
            fn()  # a mode that cannot run here is reported, not timed
            runs[mode] = (fn, 1)
        except Exception as err:
            errors[mode] = f"{type(err).__name__}: {err}".strip()[:500]
    times = interleaved_times(runs, repeats) if runs else {}
    median = {mode: statistics.median(t) / n_steps for mode, t in times.items()}
    rows = []
    for mode in MODES:
        row = dict.fromkeys(COLUMNS)
        row |= {"case": case, "mode": mode, "batch": batch, "n_steps": n_steps}
        if mode in median:
            row["ms_per_step"] = 1e3 * median[mode]
            row["traj_steps_per_s"] = batch / median[mode]
            if "bare" in median:
                row["ratio_to_bare"] = median[mode] / median["bare"]
        row["error"] = errors.get(mode)
        rows.append(row)
    return rows


def run_benchmark(args: argparse.Namespace) -> dict:
    from rollout_overhead import fno_stepper, mlp_stepper

    device = torch.device(args.device)
    builders = {"mlp": mlp_stepper, "fno": fno_stepper}
    n_steps, repeats = (2, 1) if args.tiny else (args.steps, args.repeats)
    payload = {"info": device_info(device), "columns": list(COLUMNS), "rows": []}
    for case in args.cases:
        gpu_batches, tiny_batch = BATCHES[case]
        for batch in (tiny_batch,) if args.tiny else gpu_batches:
            start = time.perf_counter()
            payload["rows"] += measure_case(case, builders[case](), batch, n_steps, repeats, device)
            print(f"{case} batch {batch}: {time.perf_counter() - start:.1f} s", flush=True)
            if args.out:  # after every case: a run stopped by a time limit keeps these
                args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':<5}{'mode':<11}{'batch':>7}{'ms/step':>10}{'traj-steps/s':>14}"
          f"{'/ bare':>8}  error")  # fmt: skip
    for r in rows:
        if r["error"]:
            print(f"{r['case']:<5}{r['mode']:<11}{r['batch']:>7}{'':>32}  {r['error'][:60]}")
            continue
        ratio = f"{r['ratio_to_bare']:8.2f}" if r["ratio_to_bare"] is not None else f"{'':>8}"
        print(f"{r['case']:<5}{r['mode']:<11}{r['batch']:>7}{r['ms_per_step']:>10.3f}"
              f"{r['traj_steps_per_s']:>14.3g}{ratio}")  # fmt: skip


# -- the report of gpu_check.sh -------------------------------------------------------------
def junit_summary(path: Path) -> dict:
    """Counts and one entry per test case of a pytest ``--junitxml`` file."""
    counts = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                outcome, message = name, found.get("message") or (found.text or "")
                break
        counts[outcome] += 1
        cases.append(
            {
                "id": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0.0),
                "message": message[:2000],
            }
        )
    return {"counts": counts, "cases": cases}


def _tail(path: Path | None, n_chars: int = 4000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-n_chars:]


def _part(exit_code: int | None, log: Path | None) -> dict:
    return {
        "exit_code": exit_code,
        "timed_out": exit_code in TIMED_OUT,
        "log_tail": _tail(log),
    }


def build_report(args: argparse.Namespace) -> dict:
    """One JSON document: environment, setup, CUDA tests, throughput, and a verdict."""
    problems = [f"missing modules: {' '.join(args.missing)}"] if args.missing else []
    tests = _part(args.tests_exit, args.tests_log) | {"command": args.tests_command}
    if args.junit is not None and args.junit.exists():
        tests |= junit_summary(args.junit)
    counts = tests.get("counts", {})
    if tests["timed_out"]:
        problems.append("the CUDA tests ran out of time")
    if counts.get("failed") or counts.get("errors"):
        problems.append(f"CUDA tests: {counts['failed']} failed, {counts['errors']} errors")
    if args.tests_exit not in (0, None) and not problems:
        problems.append(f"pytest exited with {args.tests_exit}")
    throughput = _part(args.bench_exit, args.bench_log) | {"rows": []}
    if args.bench is not None and args.bench.exists():
        throughput |= json.loads(args.bench.read_text())
    if throughput["timed_out"]:
        problems.append("the throughput benchmark ran out of time")
    elif args.bench_exit not in (0, None):
        problems.append(f"the throughput benchmark exited with {args.bench_exit}")
    failed_modes = [
        f"{r['case']}/{r['mode']}/{r['batch']}" for r in throughput["rows"] if r["error"]
    ]
    if failed_modes:
        problems.append(f"benchmark modes that raised: {', '.join(failed_modes)}")
    info = throughput.pop("info", {})  # the benchmark's facts, unless collected apart
    if args.info is not None and args.info.exists():
        info = json.loads(args.info.read_text())
    return {
        "status": "failed" if problems else "passed",
        "problems": problems,
        "seconds": args.seconds,
        "limit_s": args.limit,
        "environment": info,
        "setup": {"missing_modules": args.missing, "log_tail": _tail(args.setup_log)},
        "tests": tests,
        "throughput": throughput,
    }


# -- command line ---------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command")
    bench = sub.add_parser("bench", help="the throughput benchmark (the default)")
    bench.add_argument("--device", default="cuda")
    bench.add_argument("--tiny", action="store_true", help="toy sizes, one repeat (CI)")
    bench.add_argument("--cases", nargs="+", choices=list(BATCHES), default=list(BATCHES))
    bench.add_argument("--steps", type=int, default=64, help="steps per rollout")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--out", type=Path, help="write the results as JSON here")
    info = sub.add_parser("info", help="torch, CUDA and device facts")
    info.add_argument("--device", default="cuda")
    info.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("report", help="merge gpu_check.sh's pieces into one JSON")
    rep.add_argument("--out", type=Path, required=True)
    for name in ("info", "junit", "bench", "setup-log", "tests-log", "bench-log"):
        rep.add_argument(f"--{name}", type=Path)
    rep.add_argument("--tests-exit", type=int)
    rep.add_argument("--bench-exit", type=int)
    rep.add_argument("--tests-command", default="")
    rep.add_argument("--missing", nargs="*", default=[])
    rep.add_argument("--seconds", type=float)
    rep.add_argument("--limit", type=float)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("bench", "info", "report", "-h", "--help"):
        argv = ["bench", *argv]
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "info":
        args.out.write_text(json.dumps(device_info(torch.device(args.device)), indent=1) + "\n")
        return 0
    if args.command == "report":
        report = build_report(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{report['status']}: {'; '.join(report['problems']) or 'all CUDA checks passed'}")
        return 0 if report["status"] == "passed" else 1
    payload = run_benchmark(args)
    print_table(payload["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
