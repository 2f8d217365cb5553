"""Command line: ``slift demo | generate | evaluate | bench``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SYSTEMS", "build_parser", "main"]

SYSTEMS = ("ornstein_uhlenbeck", "double_well", "lorenz63", "allen_cahn")


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    if args.epochs is not None:
        from dataclasses import replace

        cfg = replace(cfg, epochs=args.epochs)
    run_demo(args.out, cfg)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from . import systems
    from .data import save_netcdf

    params = json.loads(args.params) if args.params else {}
    if not isinstance(params, dict):
        raise SystemExit(f"--params must be a JSON object, got {args.params!r}")
    generator = getattr(systems, args.system)
    ens = generator(n_samples=args.n_samples, n_steps=args.n_steps, seed=args.seed, **params)
    save_netcdf(ens, args.out)
    print(f"wrote {args.out}: {dict(ens.sizes)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data import atomic_write, load_ensemble
    from .metrics import evaluate

    result = evaluate(load_ensemble(args.generated), load_ensemble(args.reference), seed=args.seed)
    table = result.to_dataframe()
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if args.out:
        atomic_write(Path(args.out), lambda p: table.to_csv(p))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench, write_outputs

    config = BenchConfig(
        problems=args.problems,
        methods=args.methods,
        seeds=list(range(args.seeds)),
        quick=args.quick,
        device=args.device,
        threads=args.threads,
    )
    paths = write_outputs(run_bench(config, progress=True), args.out)
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``slift`` argument parser, one sub-command per task.

    Returns
    -------
    argparse.ArgumentParser
        A parser whose parsed namespace carries the chosen sub-command in ``command`` and
        its handler in ``run``.
    """
    parser = argparse.ArgumentParser(prog="slift", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="SL vs MSE FNO on stochastic Allen-Cahn")
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    demo.add_argument("--epochs", type=int, default=None, help="override training epochs")
    demo.set_defaults(run=_demo)

    gen = sub.add_parser("generate", help="write a reference ensemble to netCDF")
    gen.add_argument("system", choices=SYSTEMS)
    gen.add_argument("--out", required=True, help="netCDF file to write")
    gen.add_argument("--n-samples", type=int, default=512)
    gen.add_argument("--n-steps", type=int, default=20)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--params", default=None, help="JSON, e.g. '{\"sigma\": 0.05}'")
    gen.set_defaults(run=_generate)

    ev = sub.add_parser("evaluate", help="score a generated ensemble against a reference")
    ev.add_argument("generated")
    ev.add_argument("reference")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default=None, help="CSV file for the per-time metrics")
    ev.set_defaults(run=_evaluate)

    from .bench.problems import PROBLEMS

    bench = sub.add_parser("bench", help="SL and DICE against MSE, CFM, ES and the solver")
    bench.add_argument("--quick", action="store_true", help="CI sizes (minutes on 2 cores)")
    bench.add_argument(
        "--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS), metavar="P"
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="M",
        help="e.g. solver sl sl-noise_field sl-l8 mse cfm5 cfm20 es dice "
        "(default: each problem's set)",
    )
    bench.add_argument("--seeds", type=int, default=3, help="number of training seeds")
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    bench.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    bench.add_argument("--out", default="bench_output", help="output folder")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slift`` command.

    Parameters
    ----------
    argv : sequence of str or None
        Command-line arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    int
        The exit status: 0 on success, 2 when the command failed on bad input (the error
        is printed to stderr instead of a traceback).
    """
    from .checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError, FloatingPointError) as exc:
        print(f"slift {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
