"""Command line: ``slift demo | generate | evaluate | bench | train | sample``.

Outputs are never replaced silently: an existing ``--out`` file, or a non-empty ``--out``
folder, is refused unless ``--overwrite`` is given, and an output that is one of the
command's inputs is refused even then. Every file is written through a temporary file
renamed into place, so a failed command leaves no half-written file. Bad input (a bad
number, a missing or unreadable file, an unusable ``--out``) ends with a one-line error on
stderr and exit status 2; the output is checked before the expensive work starts.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from collections.abc import Sequence

from ._cli_arguments import (
    OVERWRITE_DIR,
    check_output_dir,
    check_output_file,
    device,
    positive_int,
    seed,
)

__all__ = ["SYSTEMS", "HelpFormatter", "build_parser", "main"]

SYSTEMS = ("ornstein_uhlenbeck", "double_well", "lorenz63", "lorenz96", "allen_cahn")

# Arguments of a system generator that have their own flags, not --params keys.
_FLAGGED = ("n_samples", "n_steps", "seed")


# -- argument types: argparse reports an ArgumentTypeError as "argument --x: <message>" ------
def _period(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"expected a positive period length or 'none', got {text!r}"
        )
    return value


# -- sub-commands -------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    out = check_output_dir(args.out, overwrite=args.overwrite)
    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    if args.epochs is not None:
        from dataclasses import replace

        cfg = replace(cfg, epochs=args.epochs)
    run_demo(out, cfg)
    return 0


def _system_params(system: str, text: str | None) -> dict:
    """``--params`` parsed and checked against the generator's keyword arguments."""
    from . import systems

    if not text:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--params is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(params, dict):
        raise ValueError(
            f"--params must be a JSON object such as '{{\"sigma\": 0.05}}', got {text!r}"
        )
    flagged = sorted(set(params) & set(_FLAGGED))
    if flagged:
        flags = ", ".join("--" + name.replace("_", "-") for name in flagged)
        raise ValueError(f"--params cannot set {', '.join(flagged)}; use {flags}")
    accepted = [p for p in inspect.signature(getattr(systems, system)).parameters]
    accepted = [p for p in accepted if p not in _FLAGGED]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"--params: {system} has no parameter {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(accepted)}"
        )
    return params


def _generate(args: argparse.Namespace) -> int:
    from . import systems
    from .data import save_netcdf

    params = _system_params(args.system, args.params)
    check_output_file(args.out, overwrite=args.overwrite)
    generator = getattr(systems, args.system)
    ens = generator(n_samples=args.n_samples, n_steps=args.n_steps, seed=args.seed, **params)
    # again: the file may have appeared while the ensemble was being generated
    save_netcdf(ens, check_output_file(args.out, overwrite=args.overwrite))
    print(f"wrote {args.out}: {dict(ens.sizes)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data import atomic_write, load_ensemble
    from .metrics import evaluate

    inputs = (args.generated, args.reference)
    if args.out is not None:
        check_output_file(args.out, overwrite=args.overwrite, inputs=inputs)
    period = args.period[0] if args.period is not None and len(args.period) == 1 else args.period
    result = evaluate(
        load_ensemble(args.generated),
        load_ensemble(args.reference),
        seed=args.seed,
        period=period,
        n_splits=args.splits,
    )
    table = result.to_dataframe()
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if args.out is not None:
        out = check_output_file(args.out, overwrite=args.overwrite, inputs=inputs)
        atomic_write(out, lambda p: table.to_csv(p))
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
        floor_splits=args.floor_splits,
    )
    out = check_output_dir(args.out, overwrite=args.overwrite)
    paths = write_outputs(run_bench(config, progress=True), out)
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


# -- parser -------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default, and keeps the layout of examples.

    An option without a default (None), a flag (False) or one whose help already names its
    default is shown as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


_OVERWRITE_FILE = "replace an existing --out file (an input file is never replaced)"


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo", help="SL vs MSE FNO on stochastic Allen-Cahn", formatter_class=HelpFormatter
    )
    demo.add_argument("--out", default="demo_output", help="output folder, new or empty")
    demo.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR)
    demo.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    demo.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="training epochs of the SL and MSE models (default: the demo's own, 30; --quick: 3)",
    )
    demo.set_defaults(run=_demo)


def _add_generate(sub) -> None:
    gen = sub.add_parser(
        "generate", help="write a reference ensemble to netCDF", formatter_class=HelpFormatter
    )
    gen.add_argument("system", choices=SYSTEMS, help="the reference system to integrate")
    gen.add_argument("--out", required=True, help="netCDF file to write (must not exist)")
    gen.add_argument("--overwrite", action="store_true", help=_OVERWRITE_FILE)
    gen.add_argument("--n-samples", type=positive_int, default=512, help="trajectories")
    gen.add_argument(
        "--n-steps", type=positive_int, default=20, help="output steps (n-steps + 1 times)"
    )
    gen.add_argument("--seed", type=seed, default=0, help="seed of the system's noise")
    gen.add_argument(
        "--params",
        default=None,
        help='further arguments of the system as JSON, e.g. \'{"sigma": 0.05, "dt": 0.1}\' '
        "(default: the system's own; see its docstring in slift_plugin.systems)",
    )
    gen.set_defaults(run=_generate)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="score a generated ensemble against a reference",
        formatter_class=HelpFormatter,
    )
    ev.add_argument("generated", help="netCDF file or zarr folder")
    ev.add_argument("reference", help="netCDF file or zarr folder")
    ev.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed of the reference split (noise floor) and subsampling",
    )
    ev.add_argument(
        "--splits",
        type=positive_int,
        default=1,
        metavar="K",
        help="reference splits the distances and noise floors average over",
    )
    ev.add_argument(
        "--period",
        type=_period,
        nargs="+",
        default=None,
        metavar="L",
        help="periodic coordinates for the energy distance (distance on the circle): one "
        "length for all, or one per state coordinate with 'none' for a plain one "
        "(e.g. --period 12.57 none for Vlasov's x, v); default: none periodic",
    )
    ev.add_argument(
        "--out", default=None, help="CSV file for the per-time metrics (default: print only)"
    )
    ev.add_argument("--overwrite", action="store_true", help=_OVERWRITE_FILE)
    ev.set_defaults(run=_evaluate)


def _add_bench(sub) -> None:
    from .bench.problems import PROBLEMS

    bench = sub.add_parser(
        "bench",
        help="SL and DICE against MSE, CFM, ES and the solver",
        formatter_class=HelpFormatter,
    )
    bench.add_argument("--quick", action="store_true", help="CI sizes (minutes on 2 cores)")
    bench.add_argument(
        "--problems",
        nargs="+",
        default=list(PROBLEMS),
        choices=list(PROBLEMS),
        metavar="P",
        help=f"problems to run, of {', '.join(PROBLEMS)}",
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="M",
        help="e.g. solver sl sl-noise_field sl-l8 mse cfm5 cfm20 es dice "
        "(default: each problem's set)",
    )
    bench.add_argument("--seeds", type=positive_int, default=3, help="number of training seeds")
    bench.add_argument("--device", type=device, default="cpu", help="cpu or cuda[:i]")
    bench.add_argument("--threads", type=positive_int, default=1, help="CPU threads (torch)")
    bench.add_argument(
        "--floor-splits",
        type=positive_int,
        default=1,
        metavar="K",
        help="reference splits the ED ratio's distance and noise floor average over "
        "(1 keeps the recorded tables' estimator)",
    )
    bench.add_argument("--out", default="bench_output", help="output folder, new or empty")
    bench.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR)
    bench.set_defaults(run=_bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``slift`` argument parser, one sub-command per task.

    Returns
    -------
    argparse.ArgumentParser
        A parser whose parsed namespace carries the chosen sub-command in ``command`` and
        its handler in ``run``.
    """
    from .cli_sample import add_sample_parser
    from .cli_train import add_train_parser

    summary, rules = __doc__.replace("``", "").split("\n\n")[:2]
    parser = argparse.ArgumentParser(prog="slift", description=summary, epilog=rules)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_generate, _add_evaluate, _add_bench):
        add(sub)
    add_train_parser(sub, HelpFormatter)
    add_sample_parser(sub, HelpFormatter)
    return parser


def _version() -> str:
    """The installed distribution's version; the package's own when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slift-plugin")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slift`` command.

    Parameters
    ----------
    argv : sequence of str or None
        Command-line arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    int
        The exit status: 0 on success (``--help`` included), 2 when the command failed on
        bad input: a bad argument, a missing or unreadable input, an output that exists
        (without ``--overwrite``), is an input, or cannot be written. The error is printed
        to stderr as one line instead of a traceback.
    """
    from .checkpoint import CheckpointError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and error, or the help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, CheckpointError, FloatingPointError) as exc:
        message = " ".join(str(exc).splitlines())  # one line, whatever the source wrote
        print(f"slift {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
