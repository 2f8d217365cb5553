"""Run the suite: every problem x method x training seed, accuracy and cost per run.

For each learned method and training seed the runner (1) builds the stepper with weights
seeded from ``(seed, method)``, (2) trains it with :func:`slift_plugin.fit` on the
problem's data (the same budget for every method), (3) generates ``n_generate``
trajectories from the problem's start state, timed after a warm-up, (4) measures the peak
memory of that generation in a second pass, and (5) scores it against the reference.
The solver is timed on the same number of trajectories, one run per seed.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from .. import evaluate, rollout
from ..labels import hash_seed
from . import methods as M
from .memory import peak_memory
from .problems import PROBLEMS, ProblemData, build_problem, relative_cost, timed

__all__ = ["DATA_SEED", "BenchConfig", "BenchResult", "environment", "run_bench"]

DATA_SEED = 1000  # the problems' data are fixed; the training seeds vary


@dataclass
class BenchConfig:
    """What to run.

    Parameters
    ----------
    problems : sequence of str
        Keys of :data:`slift_plugin.bench.problems.PROBLEMS` (default: all).
    methods : sequence of str or None
        Method names (see :mod:`slift_plugin.bench.methods`); None runs each problem's
        default set.
    seeds : sequence of int
        Distinct training seeds, one run per seed and method.
    quick : bool
        Quick (CI) or full sizes.
    device : str
        ``"cpu"`` or ``"cuda[:i]"``.
    threads : int
        CPU threads torch uses during the run.
    floor_splits : int
        Reference splits the ED ratio averages its distance and noise floor over
        (``n_splits`` of :func:`slift_plugin.evaluate`). 1, the default, keeps the ratios
        comparable with the recorded tables; more splits remove the noise of one split,
        which dominates the ratio of laws with few directions of spread (1-D, bimodal).

    Raises
    ------
    ValueError
        On an unknown problem or method name, an empty selection, repeated seeds,
        ``threads < 1``, ``floor_splits < 1``, or a CUDA device without CUDA.
    """

    problems: Sequence[str] = tuple(PROBLEMS)
    methods: Sequence[str] | None = None
    seeds: Sequence[int] = (0, 1, 2)
    quick: bool = False
    device: str = "cpu"
    threads: int = 1
    floor_splits: int = 1

    def __post_init__(self) -> None:
        unknown = [p for p in self.problems if p not in PROBLEMS]
        if unknown:
            raise ValueError(f"unknown problems {unknown}; choose from {sorted(PROBLEMS)}")
        if not self.problems:
            raise ValueError("no problems selected")
        if self.methods is not None:
            if not self.methods:
                raise ValueError("no methods selected")
            for name in self.methods:
                M.parse_method(name)  # raises on a bad name
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.floor_splits < 1:
            raise ValueError(f"floor_splits must be >= 1, got {self.floor_splits}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")

    def methods_for(self, problem: str) -> list[M.MethodSpec]:
        """The methods to run on ``problem``.

        Parameters
        ----------
        problem : str
            A problem name.

        Returns
        -------
        list of MethodSpec
            The parsed :attr:`methods`, or the problem's defaults.
        """
        names = self.methods if self.methods is not None else M.default_methods(problem)
        return [M.parse_method(n) for n in names]


@dataclass
class BenchResult:
    """Raw results: one row per (problem, method, seed) run and per output time.

    Attributes
    ----------
    runs : list of dict
        One row per run: problem, method, family, seed and the measured columns.
    over_time : list of dict
        One row per run and output time (the ED ratio over the horizon).
    skipped : list of dict
        The ``(problem, method)`` pairs that do not apply, with the reason.
    meta : dict
        The environment (:func:`environment`) and what each problem score measures.
    """

    runs: list[dict] = field(default_factory=list)
    over_time: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def environment(config: BenchConfig) -> dict:
    """Machine, versions and date, for the report.

    Parameters
    ----------
    config : BenchConfig
        The run (device, threads, sizes and seeds are recorded).

    Returns
    -------
    dict
        JSON-serialisable description of the run's environment.
    """
    import neuralop
    import torchsde

    device = torch.device(config.device)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "neuraloperator": getattr(neuralop, "__version__", "?"),
        "torchsde": getattr(torchsde, "__version__", "?"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": config.threads,
        "quick": config.quick,
        "seeds": list(config.seeds),
        "floor_splits": config.floor_splits,
        "quantities": {},  # problem -> what its problem score measures
    }


def run_bench(config: BenchConfig, *, progress: bool = True) -> BenchResult:
    """Run the suite described by ``config``.

    Parameters
    ----------
    config : BenchConfig
        What to run.
    progress : bool
        Show a progress bar.

    Returns
    -------
    BenchResult
        The raw results, to aggregate with :mod:`slift_plugin.bench.report`.
    """
    result = BenchResult(meta=environment(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        plan = [(p, config.methods_for(p)) for p in config.problems]
        total = sum(len(config.seeds) * len(specs) for _, specs in plan)
        with tqdm(total=total, desc="bench", unit="run", disable=not progress) as bar:
            for name, specs in plan:
                bar.set_postfix_str(f"{name}: data")
                problem = build_problem(name, quick=config.quick, seed=DATA_SEED)
                result.meta["quantities"][name] = problem.quantity
                _run_problem(problem, specs, config, result, bar)
    finally:
        torch.set_num_threads(threads)
    return result


def _run_problem(problem, specs, config, result, bar) -> None:
    for seed in config.seeds:
        trained: dict[str, tuple] = {}  # one seed's models at a time
        for spec in specs:
            bar.set_postfix_str(f"{problem.name}/{spec.name}/seed {seed}")
            if not M.applies(spec, problem):
                if seed == config.seeds[0]:
                    result.skipped.append(
                        {
                            "problem": problem.name,
                            "method": spec.name,
                            "reason": M.not_applicable_reason(spec, problem),
                        }
                    )
                bar.update()
                continue
            if spec.family == "solver":
                row, ens = _run_solver(problem, seed, config.device)
            else:
                if spec.training_key not in trained:
                    trained[spec.training_key] = _train(spec, problem, seed, config)
                stepper, fit_result, data_seconds = trained[spec.training_key]
                row, ens = _sample(spec, stepper, fit_result, problem, seed, config)
                row["data_seconds"] = data_seconds
            _score(row, ens, problem, seed, result, config.floor_splits)
            bar.update()


def _train(spec: M.MethodSpec, problem: ProblemData, seed: int, config: BenchConfig):
    stepper = M.build_seeded(spec, problem, config.quick, seed, key=spec.training_key)
    # what the data costs beyond loading: sl-coupled trains and inverts its teacher here
    data, data_seconds = timed(lambda: M.training_data(spec, stepper, problem, seed))
    fit_result = M.train_with_budget(stepper, data, problem, config.quick, seed, config.device)
    return stepper, fit_result, data_seconds


def _measure(generate, warm_up, device: str, n: int, n_steps: int) -> tuple[xr.DataArray, dict]:
    """Warm up, then time ``generate()``; peak memory from the same run on CUDA (the
    allocator keeps it for free), from a second, tracked run on CPU."""
    warm_up()  # first-call costs (lazy init, allocator growth) stay out of the timing
    if torch.device(device).type == "cuda":
        (ens, seconds), peak = peak_memory(lambda: timed(generate), device)
    else:
        ens, seconds = timed(generate)
        _, peak = peak_memory(generate, device)
    return ens, {
        "sample_seconds": seconds,
        "sample_ms_per_1k": 1000 * relative_cost(seconds, n, n_steps),
        "peak_memory_mb": peak / 2**20,
    }


def _sample(spec, stepper, fit_result, problem: ProblemData, seed: int, config: BenchConfig):
    M.set_sampling(stepper, spec)
    kwargs = dict(
        mu=problem.mu,
        seed=hash_seed(seed, 7),
        chunk_size=problem.n_generate,
        device=config.device,
        coords=problem.coords,
        param_names=problem.param_names,
        autocast_dtype=torch.bfloat16 if spec.bf16 else None,
    )
    # Particle problems start from one population (per-sample states): no n_samples.
    n_samples = None if problem.x0.ndim > len(problem.state_shape) else problem.n_generate
    ens, cost = _measure(
        lambda: rollout(stepper, problem.x0, problem.n_steps, n_samples, **kwargs),
        lambda: rollout(stepper, problem.x0, 1, n_samples, **kwargs),
        config.device,
        problem.n_generate,
        problem.n_steps,
    )
    row = {
        "method": spec.name,
        "family": spec.family,
        "evals_per_step": stepper.evals_per_step,
        **cost,
        "train_seconds": fit_result.wall_time,
        "train_loss": fit_result.final_loss,
        "n_parameters": sum(p.numel() for p in stepper.parameters()),
    }
    return row, ens


def _run_solver(problem: ProblemData, seed: int, device: str):
    n = problem.n_generate
    s = hash_seed(DATA_SEED, seed, 11)
    ens, cost = _measure(
        lambda: problem.solve(n, s, device),
        lambda: problem.solve(min(n, 64), s, device),
        device,
        n,
        problem.n_steps,
    )
    row = {
        "method": "solver",
        "family": "solver",
        "evals_per_step": problem.solver_evals_per_step,
        **cost,
        "train_seconds": 0.0,
        "data_seconds": 0.0,
        "train_loss": np.nan,
        "n_parameters": 0,
    }
    return row, ens


def _score(
    row: dict, ens: xr.DataArray, problem: ProblemData, seed: int, result, floor_splits: int = 1
) -> None:
    if problem.postprocess is not None:
        ens = problem.postprocess(ens)
    ref_times = problem.reference["time"].values
    if ens.sizes["time"] != ref_times.size or not np.allclose(ens["time"].values, ref_times):
        raise ValueError(
            f"{problem.name}/{row['method']}: generated times {ens['time'].values[:4]}... do not "
            f"match the reference times {ref_times[:4]}... ({ens.sizes['time']} against "
            f"{ref_times.size}); check dt and n_steps"
        )
    # float32 round-off in t0 + k*dt must not make evaluate() miss a time
    ens = ens.assign_coords(time=ref_times)
    scores = evaluate(
        ens, problem.reference, seed=seed, period=problem.period, n_splits=floor_splits
    )
    row = {"problem": problem.name, "seed": seed, **row}
    row["quantity_error"] = problem.quantity_error(ens, problem.reference)
    for label, k in zip(("short", "middle", "final"), problem.horizons, strict=True):
        sel = scores.isel(time=k)
        row[f"time_{label}"] = float(sel["time"])
        for var in ("ed_ratio", "sliced_w2", "mean_rel_error", "std_rel_error"):
            row[f"{var}_{label}"] = float(sel[var])
    result.runs.append(row)
    for k in range(scores.sizes["time"]):
        sel = scores.isel(time=k)
        result.over_time.append(
            {
                "problem": problem.name,
                "method": row["method"],
                "seed": seed,
                "time": float(sel["time"]),
                **{
                    v: float(sel[v])
                    for v in ("ed_ratio", "sliced_w2", "mean_rel_error", "std_rel_error")
                },
            }
        )
