"""Aggregate raw benchmark runs over seeds; write CSV, JSON, a Markdown table and plots.

Every reported number is the median over training seeds with its spread (min to max):
with three seeds that is all of the information, and it does not pretend to a normal
error bar.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import atomic_write
from .runner import BenchResult

__all__ = [
    "RUN_SCHEMA",
    "SUMMARY_COLUMNS",
    "aggregate",
    "markdown_report",
    "markdown_table",
    "plot",
    "runs_frame",
    "write_outputs",
]

# The columns of the summary, in order: (raw column, header, format).
SUMMARY_COLUMNS = (
    ("ed_ratio_short", "ED ratio short", "{:.3g}"),
    ("ed_ratio_middle", "ED ratio mid", "{:.3g}"),
    ("ed_ratio_final", "ED ratio final", "{:.3g}"),
    ("sliced_w2_final", "SW2 final", "{:.3g}"),
    ("mean_rel_error_final", "mean err final", "{:.2g}"),
    ("std_rel_error_final", "std err final", "{:.2g}"),
    ("quantity_error", "problem score", "{:.2g}"),
    ("evals_per_step", "evals/step", "{:.0f}"),
    ("sample_ms_per_1k", "ms / 1k traj-steps", "{:.3g}"),
    ("cost_vs_sl", "cost / SL", "{:.2g}"),
    ("train_seconds", "train s", "{:.3g}"),
    ("data_seconds", "data s", "{:.3g}"),  # sl-coupled: the teacher's training and inversion
    ("peak_memory_mb", "peak MB", "{:.3g}"),
    ("train_loss", "train loss", "{:.3g}"),
)
RUN_SCHEMA = ("problem", "method", "family", "seed") + tuple(c for c, _, _ in SUMMARY_COLUMNS)


def runs_frame(result: BenchResult) -> pd.DataFrame:
    """One row per run, with ``cost_vs_sl``: sampling time over SL's in the same seed.

    The SL run of a problem is its first method of the ``sl`` family (``sl`` or
    ``sl-channels`` in the default sets); without one the ratio is NaN.

    Parameters
    ----------
    result : BenchResult
        The raw runs.

    Returns
    -------
    pandas.DataFrame
        ``result.runs`` as a frame plus ``cost_vs_sl``; an empty frame with the columns of
        :data:`RUN_SCHEMA` when there are no runs.
    """
    runs = pd.DataFrame(result.runs)
    if runs.empty:
        return pd.DataFrame(columns=RUN_SCHEMA)
    runs["cost_vs_sl"] = np.nan
    for problem, group in runs.groupby("problem", sort=False):
        sl_methods = group.loc[group["family"] == "sl", "method"]
        if sl_methods.empty:
            continue
        base = group[group["method"] == sl_methods.iloc[0]].set_index("seed")["sample_ms_per_1k"]
        rows = runs["problem"] == problem
        runs.loc[rows, "cost_vs_sl"] = runs.loc[rows, "sample_ms_per_1k"] / runs.loc[
            rows, "seed"
        ].map(base)
    return runs


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max over seeds of every summary column, per problem and method.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run, as :func:`runs_frame` returns.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``(problem, method)``, columns ``(statistic, column)`` for the
        statistics ``median``, ``min``, ``max`` and the columns of
        :data:`SUMMARY_COLUMNS`, plus ``("n_seeds", "")``.
    """
    columns = [c for c, _, _ in SUMMARY_COLUMNS]
    grouped = runs.groupby(["problem", "method"], sort=False)[columns]
    out = pd.concat(
        {"median": grouped.median(), "min": grouped.min(), "max": grouped.max()}, axis=1
    )
    out[("n_seeds", "")] = runs.groupby(["problem", "method"], sort=False)["seed"].nunique()
    return out


def _cell(median: float, low: float, high: float, fmt: str) -> str:
    if not math.isfinite(median):
        return "n/a"
    text = fmt.format(median)
    if math.isfinite(low) and math.isfinite(high) and fmt.format(low) != fmt.format(high):
        text += f" [{fmt.format(low)}, {fmt.format(high)}]"
    return text


def markdown_table(summary: pd.DataFrame, problem: str) -> str:
    """The summary of one problem as a Markdown table, ``median [min, max]`` per cell.

    Parameters
    ----------
    summary : pandas.DataFrame
        As :func:`aggregate` returns.
    problem : str
        The problem whose rows are shown.

    Returns
    -------
    str
        The table, one method per row, without a trailing newline.
    """
    headers = ["method", "seeds"] + [h for _, h, _ in SUMMARY_COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for (p, method), row in summary.iterrows():
        if p != problem:
            continue
        cells = [method, str(int(row[("n_seeds", "")]))]
        for column, _, fmt in SUMMARY_COLUMNS:
            cells.append(
                _cell(row[("median", column)], row[("min", column)], row[("max", column)], fmt)
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(result: BenchResult, summary: pd.DataFrame) -> str:
    """The whole Markdown report: the run's environment, then one table per problem.

    Parameters
    ----------
    result : BenchResult
        The run (its ``meta`` and ``skipped`` are reported).
    summary : pandas.DataFrame
        As :func:`aggregate` returns.

    Returns
    -------
    str
        The report, ending in a newline.
    """
    meta = result.meta
    quantities = meta.get("quantities", {})
    parts = [
        f"Run {meta.get('date')} on {meta.get('device')} ({meta.get('processor')}, "
        f"{meta.get('threads')} thread(s)), torch {meta.get('torch')}, neuraloperator "
        f"{meta.get('neuraloperator')}, torchsde {meta.get('torchsde')}, Python "
        f"{meta.get('python')}; seeds {meta.get('seeds')}; "
        f"{'quick' if meta.get('quick') else 'full'} sizes.",
        "",
        "Cells: median over training seeds [min, max]. ED ratio: energy distance to the "
        "reference over the noise floor (1 = indistinguishable at this sample size). "
        "short/mid/final: 1/8, 1/2 and all of the horizon."
        + (
            f" Distances and noise floors are means over {meta['floor_splits']} reference splits."
            if meta.get("floor_splits", 1) > 1
            else ""
        ),
    ]
    for problem in dict.fromkeys(p for p, _ in summary.index):
        parts += ["", f"### {problem}", "", f"Problem score: {quantities.get(problem, '')}."]
        parts += ["", markdown_table(summary, problem)]
    if result.skipped:
        parts += [
            "",
            "Skipped: " + ", ".join(f"{s['problem']}/{s['method']}" for s in result.skipped),
        ]
    return "\n".join(parts) + "\n"


def write_outputs(result: BenchResult, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``runs.csv``, ``over_time.csv``, ``summary.csv``, ``results.json``,
    ``summary.md`` and the plots into ``out``.

    Parameters
    ----------
    result : BenchResult
        The run.
    out : str or os.PathLike
        Output folder; created.

    Returns
    -------
    dict of str to pathlib.Path
        The files written, keyed ``runs``, ``over_time``, ``summary``, ``json``,
        ``markdown`` and ``plot_<problem>``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = runs_frame(result)
    summary = aggregate(runs)
    over_time = pd.DataFrame(result.over_time)
    paths = {
        "runs": atomic_write(out / "runs.csv", lambda p: runs.to_csv(p, index=False)),
        "over_time": atomic_write(
            out / "over_time.csv", lambda p: over_time.to_csv(p, index=False)
        ),
        "summary": atomic_write(out / "summary.csv", lambda p: summary.to_csv(p)),
    }
    payload = {
        "meta": result.meta,
        "runs": json.loads(runs.to_json(orient="records")),
        "skipped": result.skipped,
    }
    paths["json"] = atomic_write(
        out / "results.json", lambda p: p.write_text(json.dumps(payload, indent=1))
    )
    text = markdown_report(result, summary)
    paths["markdown"] = atomic_write(out / "summary.md", lambda p: p.write_text(text))
    paths.update(plot(runs, over_time, out))
    return paths


def plot(runs: pd.DataFrame, over_time: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Per problem: final ED ratio against sampling cost, and the ED ratio over time.

    Parameters
    ----------
    runs : pandas.DataFrame
        One row per run, as :func:`runs_frame` returns.
    over_time : pandas.DataFrame
        One row per run and output time, with ``problem``, ``method``, ``time`` and
        ``ed_ratio``.
    out : pathlib.Path
        Output folder.

    Returns
    -------
    dict of str to pathlib.Path
        ``plot_<problem>`` -> the PNG written.
    """
    # A bare Figure, not pyplot: the user's matplotlib backend is never touched.
    from matplotlib.figure import Figure

    paths = {}
    for problem, group in runs.groupby("problem", sort=False):
        fig = Figure(figsize=(12, 4.5), layout="constrained")
        ax_cost, ax_time = fig.subplots(1, 2)
        for method, g in group.groupby("method", sort=False):
            x, y = g["sample_ms_per_1k"], g["ed_ratio_final"]
            ax_cost.errorbar(
                x.median(),
                y.median(),
                xerr=[[x.median() - x.min()], [x.max() - x.median()]],
                yerr=[[y.median() - y.min()], [y.max() - y.median()]],
                fmt="o",
                capsize=3,
                label=method,
            )
            t = over_time[(over_time["problem"] == problem) & (over_time["method"] == method)]
            curve = t.groupby("time")["ed_ratio"].agg(["median", "min", "max"])
            (line,) = ax_time.plot(curve.index, curve["median"], "-o", ms=3, label=method)
            ax_time.fill_between(
                curve.index, curve["min"], curve["max"], color=line.get_color(), alpha=0.2
            )
        ax_cost.set(
            xscale="log",
            yscale="log",
            xlabel="sampling ms per 1,000 trajectory-steps",
            ylabel="ED ratio at the final time",
            title=f"{problem}: accuracy against cost",
        )
        ax_time.set(yscale="log", xlabel="time", ylabel="ED ratio (1 = noise floor)")
        ax_time.axhline(1.0, color="k", lw=0.8, ls=":")
        ax_time.set_title(f"{problem}: ED ratio over time (median, min-max band)")
        ax_cost.legend(fontsize=8)
        path = out / f"{problem}.png"
        atomic_write(path, lambda p, fig=fig: fig.savefig(p, dpi=90, format="png"))
        paths[f"plot_{problem}"] = path
    return paths
