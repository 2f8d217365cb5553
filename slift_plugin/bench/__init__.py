"""``slift bench``: SL and DICE against the methods users would pick instead.

Same problems, same backbone architecture, same training budget, same run::

    from slift_plugin.bench import BenchConfig, run_bench, write_outputs
    result = run_bench(BenchConfig(problems=["double_well"], quick=True))
    write_outputs(result, "bench_output")

Modules: :mod:`.problems` (reference data, solver, problem scores), :mod:`.methods`
(the registry of method families: names, backbones, training data, budgets; adding a
method is one family), :mod:`.runner` (train, sample, time, score),
:mod:`.report` (median and spread over seeds, tables, plots), :mod:`.memory` (peak
memory on CPU and CUDA).
"""

from .problems import PROBLEMS, build_problem
from .report import aggregate, markdown_table, runs_frame, write_outputs
from .runner import BenchConfig, BenchResult, run_bench

__all__ = [
    "PROBLEMS",
    "BenchConfig",
    "BenchResult",
    "aggregate",
    "build_problem",
    "markdown_table",
    "run_bench",
    "runs_frame",
    "write_outputs",
]
