"""Measure the elements of the Stochastic Lifting recipe (issue 11, item 3).

What each element does to the ED ratio (short / mid / final horizon, as ``slift bench``
scores it) on the double well, Lorenz-63 and Allen-Cahn, with the training loss, the
held-out energy score and the ED ratio against optimiser steps:

``coupled_fix``
    the double well's short horizon under coupled labels (``sl-coupled``): held-out
    selection, a teacher trained 3x longer, 40 or 160 inversion steps instead of 20;
``interpolation``
    training to interpolation (2x the budget) against early stopping (the held-out
    energy score's best epoch, ``fit(held_out=...)``), independent and coupled labels;
``label_size``
    independent labels of size 1 .. 128 against coupled labels of the state's size;
``injection``
    label injection on the FNO: ``channels``, ``noise_field``, ``embedding`` (every
    block), and coupled labels;
``history``
    one state against two states in the input window;
``es_finetune``
    energy-score fine-tuning of a trained SL model;
``autocorrelation``
    Lorenz-63's problem score (the autocorrelation of x(t)) under coupled labels with 160
    inversion steps: the teacher sampled with 20 or 160 Euler steps and trained 1x to
    6x the budget, coupled SL from those teachers, SL trained 3x, ES fine-tuning.

Every trained run keeps its weights after chosen epochs (curves) and its held-out best
epoch. The curves come from one uninterrupted ``fit`` per run: the held-out data handed
to ``fit(held_out=...)`` is wrapped so that, when ``fit`` scores an epoch, the wrapper
copies the weights first. Training is exactly that of a run without the wrapper.

Sizes: the double well and Lorenz-63 at the bench's full sizes and budgets (``--quick``:
the quick ones); Allen-Cahn always at the quick grid, training set and FNO (fields are
slow on a CPU), trained 60 epochs instead of the quick budget's 2 (``--quick``: 10),
and scored with a 512-member reference and 256 generated fields (the quick 128 / 64 give
a noise floor too noisy to rank anything).

    OMP_NUM_THREADS=1 python benchmarks/recipe_study.py --problems double_well \\
        --experiments coupled_fix --seeds 0 1 2

Raw records go to ``<out>/raw/<problem>/seed<k>/<variant>.json`` (an existing record is
kept: runs resume); every call rewrites the CSVs, the plots and ``summary.md`` from all
records. Trained weights for fine-tuning and teachers are cached in ``--cache``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

import slift_plugin
from slift_plugin import (
    MLP,
    EnergyScoreLifting,
    HeldOut,
    StochasticLifting,
    TransitionDataset,
    evaluate,
    fit,
    rollout,
    teacher_labels,
)
from slift_plugin.bench import methods as M
from slift_plugin.bench.problems import ProblemData, build_problem
from slift_plugin.bench.runner import DATA_SEED
from slift_plugin.labels import hash_seed

HORIZONS = ("short", "mid", "final")
CURVE_FRACTIONS = (0.05, 0.15, 0.35, 0.6, 1.0)  # of a run's epochs
POOLED_EVAL_SEEDS = 4  # short-horizon ED ratio pooled over this many reference splits
FINETUNE_EPOCHS = 0.3  # ES fine-tuning: this fraction of the budget's epochs ...
FINETUNE_LR = 0.25  # ... at this fraction of its learning rate
REFERENCE_COLOURS = ("black", "tab:gray", "tab:brown", "tab:olive")
TEACHER_MULTIPLES = (1, 2, 3, 4, 6)  # teacher epochs / the budget's (autocorrelation)
AC_EPOCHS = {False: 60, True: 10}  # Allen-Cahn epochs (the quick budget has 2)
AC_SIZES = {False: (512, 256), True: (128, 64)}  # Allen-Cahn reference, generated


@dataclass(frozen=True)
class Variant:
    """One trained (or reference) model of the study.

    ``family``: ``solver`` (the reference system), ``teacher`` (the CFM-20 teacher of
    coupled labels), ``sl`` (independent labels), ``coupled`` (teacher labels) or
    ``es-ft`` (energy-score fine-tuning of ``base``). ``epochs`` and ``teacher_epochs``
    are multiples of the problem's budget; ``teacher_steps`` are the Euler steps per
    output step with which a ``teacher`` variant samples.
    """

    name: str
    family: str
    label_dim: int = M.DEFAULT_LABEL_DIM
    injection: str = M.DEFAULT_INJECTION
    history: int = 1
    epochs: float = 1.0
    teacher_epochs: float = 1.0
    inversion_steps: int = M.COUPLING_STEPS
    teacher_steps: int = M.COUPLING_STEPS
    base: str | None = None
    curve: bool = True  # ED ratio at CURVE_FRACTIONS of the run, not only at its end
    pooled: bool = False  # also the short-horizon ED ratio over POOLED_EVAL_SEEDS splits


def _catalogue() -> dict[str, Variant]:
    v = [
        Variant("solver", "solver", pooled=True),
        Variant("teacher", "teacher", pooled=True),
        Variant("teacher-T3", "teacher", teacher_epochs=3.0, pooled=True),
        Variant("coupled", "coupled", pooled=True),
        Variant("coupled-inv40", "coupled", inversion_steps=40, curve=False, pooled=True),
        Variant("coupled-inv160", "coupled", inversion_steps=160, curve=False, pooled=True),
        Variant("coupled-T3", "coupled", teacher_epochs=3.0, curve=False, pooled=True),
        Variant(
            "coupled-T3-inv40",
            "coupled",
            teacher_epochs=3.0,
            inversion_steps=40,
            curve=False,
            pooled=True,
        ),
        Variant("coupled-x2", "coupled", epochs=2.0, pooled=True),
        Variant("coupled-inv160-x3", "coupled", epochs=3.0, inversion_steps=160),
        Variant("es-ft:coupled-inv160", "es-ft", base="coupled-inv160"),
        Variant("sl-l32-x2", "sl", epochs=2.0),
        Variant("sl-l32-h2", "sl", history=2),
        Variant("es-ft:sl-l32", "es-ft", base="sl-l32"),
        Variant("es-ft:coupled", "es-ft", base="coupled", pooled=True),
        Variant("es-ft:sl-noise_field", "es-ft", base="sl-noise_field"),
    ]
    for mult in TEACHER_MULTIPLES:
        tag = "" if mult == 1 else f"-T{mult}"
        v.append(Variant(f"teacher{tag}-n160", "teacher", teacher_epochs=mult, teacher_steps=160))
        if mult > 1:  # coupled-inv160 is above
            v.append(
                Variant(
                    f"coupled{tag}-inv160",
                    "coupled",
                    teacher_epochs=mult,
                    inversion_steps=160,
                    curve=False,
                )
            )
    v += [Variant(f"sl-l{n}", "sl", label_dim=n, pooled=n == 32) for n in (1, 3, 4, 32, 128)]
    v += [Variant(f"sl-{i}", "sl", injection=i) for i in ("channels", "noise_field", "embedding")]
    return {x.name: x for x in v}


VARIANTS = _catalogue()
_VECTORS = ("double_well", "lorenz63")
EXPERIMENTS: dict[str, dict[str, list[str]]] = {
    "coupled_fix": {
        "double_well": [
            "solver",
            "teacher",
            "teacher-T3",
            "coupled",
            "coupled-inv40",
            "coupled-inv160",
            "coupled-T3",
            "coupled-T3-inv40",
            "es-ft:coupled",
        ],
        "allen_cahn": ["solver", "coupled", "coupled-inv160"],
    },
    "autocorrelation": {
        "lorenz63": [
            "solver",
            "teacher",
            "teacher-n160",
            "teacher-T3",
            *(f"teacher-T{m}-n160" for m in TEACHER_MULTIPLES[1:]),
            "coupled-inv160",
            *(f"coupled-T{m}-inv160" for m in TEACHER_MULTIPLES[1:]),
            "coupled-inv160-x3",
            "es-ft:coupled-inv160",
        ]
    },
    "interpolation": {
        p: ["solver", "sl-l32", "coupled", "sl-l32-x2", "coupled-x2"] for p in _VECTORS
    },
    "label_size": {
        "double_well": ["solver", "sl-l1", "sl-l4", "sl-l32", "sl-l128", "coupled"],
        "lorenz63": ["solver", "sl-l1", "sl-l3", "sl-l32", "sl-l128", "coupled"],
    },
    "injection": {
        "allen_cahn": ["solver", "sl-channels", "sl-noise_field", "sl-embedding", "coupled"]
    },
    "history": {p: ["solver", "sl-l32", "sl-l32-h2"] for p in _VECTORS},
    "es_finetune": {
        **{p: ["solver", "sl-l32", "es-ft:sl-l32", "coupled", "es-ft:coupled"] for p in _VECTORS},
        "allen_cahn": [
            "solver",
            "sl-noise_field",
            "es-ft:sl-noise_field",
            "coupled",
            "es-ft:coupled",
        ],
    },
}


# -- the problems, as the study sizes them ---------------------------------------------------
@dataclass
class Context:
    """One problem at the study's sizes, its held-out data and the caches."""

    problem: ProblemData
    quick: bool  # the bench's quick sizes for backbone and budget
    budget: M.Budget
    held_out: xr.DataArray
    cache: Path
    data_seed: int = DATA_SEED  # the bench's; another draws another training set
    memory: dict = dataclasses.field(default_factory=dict)


def make_context(name: str, quick: bool, cache: Path, data_seed: int = DATA_SEED) -> Context:
    """Build ``name`` at the study's sizes (see the module docstring)."""
    field_problem = name == "allen_cahn"
    sizes_quick = quick or field_problem
    problem = build_problem(name, quick=sizes_quick, seed=data_seed)
    budget = M.budget(problem, sizes_quick)
    if field_problem:
        n_ref, n_gen = AC_SIZES[quick]
        problem = dataclasses.replace(
            problem, reference=problem.solve(n_ref, data_seed + 1), n_generate=n_gen
        )
        budget = dataclasses.replace(budget, epochs=AC_EPOCHS[quick])
    # held-out trajectories: a data seed of their own (train: data_seed, reference: +1)
    n_held_out = problem.train.sizes["sample"] if field_problem else (64 if quick else 128)
    held_out = problem.solve(n_held_out, data_seed + 2)
    return Context(problem, sizes_quick, budget, held_out, cache, data_seed)


def _padded(states: xr.DataArray, history: int) -> torch.Tensor:
    """Trajectories with ``history - 1`` copies of the start state in front: the window of
    the first step is then the rollout's, the start state repeated."""
    x = torch.as_tensor(np.asarray(states.values, dtype=np.float32))
    return torch.cat([x[:, :1].expand(-1, history - 1, *x.shape[2:]), x], dim=1)


def transitions(states: xr.DataArray, history: int, dt: float, labels=None) -> TransitionDataset:
    """Transitions of ``states`` with a window of ``history`` states (padded, see above)."""
    if history == 1:
        return TransitionDataset.from_xarray(states, labels=labels)
    return TransitionDataset(_padded(states, history), history=history, labels=labels, dt=dt)


def _state_shape(problem: ProblemData) -> tuple[int | None, ...]:
    # as the bench builds its steppers: operators leave the grid open
    return (problem.state_shape[0], None) if problem.kind == "field" else problem.state_shape


# -- scoring ----------------------------------------------------------------------------------
def score(ens: xr.DataArray, ctx: Context, seed: int, pooled: bool) -> dict[str, float]:
    """ED ratio at the bench's three horizons (evaluation seed = training seed, as the
    bench), with the energy distance and noise floor and the problem score (the bench's
    ``quantity_error``); optionally the short horizon pooled over several reference splits
    (sum of distances over sum of floors)."""
    p = ctx.problem
    ens = ens.assign_coords(time=p.reference["time"].values)
    scores = evaluate(ens.isel(time=p.horizons), p.reference, seed=seed)
    row = {"problem_score": p.quantity_error(ens, p.reference)}
    for i, h in enumerate(HORIZONS):
        row[f"ed_{h}"] = float(scores["ed_ratio"][i])
        row[f"energy_distance_{h}"] = float(scores["energy_distance"][i])
        row[f"noise_floor_{h}"] = float(scores["noise_floor"][i])
    if pooled:
        dist, floor = row["energy_distance_short"], row["noise_floor_short"]
        short = ens.isel(time=[p.horizons[0]])
        for k in range(1, POOLED_EVAL_SEEDS):
            s = evaluate(short, p.reference, seed=hash_seed(seed, 100 + k))
            dist += float(s["energy_distance"][0])
            floor += float(s["noise_floor"][0])
        row["ed_short_pooled"] = dist / floor
    return row


def generate(stepper, ctx: Context, seed: int) -> xr.DataArray:
    """The bench's generation: ``n_generate`` trajectories from the start state."""
    p = ctx.problem
    x0 = torch.as_tensor(p.x0)
    if stepper.history > 1:  # the start state repeated: the training windows' padding
        x0 = x0.expand(stepper.history, *x0.shape).unsqueeze(0)
    return rollout(
        stepper,
        x0,
        p.n_steps,
        p.n_generate,
        seed=hash_seed(seed, 7),
        chunk_size=p.n_generate,
        coords=p.coords,
    )


# -- training with snapshots ------------------------------------------------------------------
class _SnapshottingHeldOut:
    """Held-out transitions that copy the stepper's weights whenever ``fit`` scores an
    epoch (``held_out_score`` reads the data once per epoch) at the epochs in ``keep``."""

    def __init__(self, data: TransitionDataset, stepper, keep: set[int]) -> None:
        self.data, self.stepper, self.keep = data, stepper, keep
        self.epoch = 0
        self.snapshots: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.data)

    def get_batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        self.epoch += 1
        if self.epoch in self.keep:
            self.snapshots[self.epoch] = copy.deepcopy(self.stepper.state_dict())
        return self.data.get_batch(index)


def curve_epochs(epochs: int, curve: bool) -> set[int]:
    """The epochs whose weights are scored."""
    if not curve:
        return {epochs}
    return {max(1, round(f * epochs)) for f in CURVE_FRACTIONS}


def train_tracked(stepper, data, ctx: Context, variant: Variant, seed: int, epochs: int, lr: float):
    """``fit`` with the problem's batch size, held-out selection and snapshots.

    Returns
    -------
    result : FitResult
        With the held-out scores of every epoch; the stepper holds the best epoch.
    snapshots : dict
        Epoch -> weights after it.
    steps_per_epoch : int
    """
    held = transitions(ctx.held_out, variant.history, ctx.problem.dt)
    hook = _SnapshottingHeldOut(held, stepper, curve_epochs(epochs, variant.curve))
    result = fit(
        stepper,
        data,
        epochs=epochs,
        batch_size=ctx.budget.batch_size,
        lr=lr,
        weight_decay=0.0,
        seed=seed,
        progress=False,
        held_out=HeldOut(hook, patience=None, seed=hash_seed(seed, 3)),
    )
    return result, hook.snapshots, math.ceil(len(data) / ctx.budget.batch_size)


def _cache_path(ctx: Context, seed: int, name: str) -> Path:
    size = "quick" if ctx.quick else "full"
    data = "" if ctx.data_seed == DATA_SEED else f"-data{ctx.data_seed}"
    return ctx.cache / f"{ctx.problem.name}-{size}{data}-seed{seed}-{name}.pt"


def _teacher(ctx: Context, seed: int, mult: float):
    """The ``sl-coupled`` teacher of the bench (same initial weights), trained ``mult``
    times the budget's epochs; cached."""
    spec = M.MethodSpec("cfm", "cfm", n_euler=M.COUPLING_STEPS)
    teacher = M.build_seeded(spec, ctx.problem, ctx.quick, seed, key="sl-coupled teacher")
    path = _cache_path(ctx, seed, f"teacher-T{mult:g}")
    if path.exists():
        teacher.load_state_dict(torch.load(path))
        return teacher.eval(), {}
    data = TransitionDataset.from_xarray(ctx.problem.train)
    b = ctx.budget
    result = fit(
        teacher,
        data,
        epochs=round(mult * b.epochs),
        batch_size=b.batch_size,
        lr=b.lr,
        weight_decay=0.0,
        seed=seed,
        progress=False,
    )
    torch.save(teacher.state_dict(), path)
    return teacher, {"teacher_seconds": result.wall_time, "teacher_loss": result.final_loss}


def build(variant: Variant, ctx: Context, seed: int):
    """A fresh stepper with the bench's initial weights for the bench's names."""
    p = ctx.problem
    if variant.family == "coupled":
        spec = M.parse_method("sl-coupled")
        return M.build_seeded(spec, p, ctx.quick, seed, key="sl-coupled")
    if variant.history > 1:  # not a bench method: an MLP of the bench's width
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(hash_seed(seed, variant.history, 17))
            d = p.state_shape[0]
            net = MLP(variant.history * d, d, label_dim=variant.label_dim, hidden=ctx.budget.hidden)
            return StochasticLifting(net, _state_shape(p), history=variant.history, dt=p.dt)
    name = f"sl-{variant.injection}" if p.kind == "field" else f"sl-l{variant.label_dim}"
    key = "sl" if name == f"sl-l{M.DEFAULT_LABEL_DIM}" else name  # the bench's names
    return M.build_seeded(M.parse_method(name), p, ctx.quick, seed, key=key)


def training_set(variant: Variant, stepper, ctx: Context, seed: int) -> tuple[object, dict]:
    """Independent fixed labels (the bench's) or teacher labels."""
    p = ctx.problem
    if variant.family == "sl":
        labels = stepper.fixed_labels(seed, p.state_shape[1:])
        return transitions(p.train, variant.history, p.dt, labels), {}
    start = time.perf_counter()
    teacher, facts = _teacher(ctx, seed, variant.teacher_epochs)
    plain = TransitionDataset.from_xarray(p.train)
    labels = teacher_labels(teacher, plain, n_steps=variant.inversion_steps)
    facts["data_seconds"] = time.perf_counter() - start
    return TransitionDataset.from_xarray(p.train, labels=labels), facts


# -- one variant ------------------------------------------------------------------------------
def _finetune_setup(variant: Variant, ctx: Context, seed: int, out: Path):
    """An ES stepper around a copy of the trained base's backbone, and the base record."""
    base = VARIANTS[variant.base]
    path = _cache_path(ctx, seed, base.name)
    if not path.exists() or not _record_path(out, ctx, seed, base.name).exists():
        run_one(ctx, base, seed, out, force=True)  # the weights are cached by training
    base_stepper = build(base, ctx, seed)
    base_stepper.load_state_dict(torch.load(path))
    p = ctx.problem
    es = EnergyScoreLifting(
        copy.deepcopy(base_stepper.backbone),
        _state_shape(p),
        history=base.history,
        n_members=M.ES_MEMBERS,
        dt=p.dt,
        seed=seed,
    )
    # the same transitions, hence the same normalisation as the base; labels are fresh
    data = transitions(p.train, base.history, p.dt)
    return es, data, json.loads(_record_path(out, ctx, seed, base.name).read_text())


def run_trained(variant: Variant, ctx: Context, seed: int, out: Path) -> dict:
    """Train ``variant`` with snapshots; score the curve, the last and the best epoch."""
    b = ctx.budget
    record: dict = {}
    offset = 0
    if variant.family == "es-ft":
        stepper, data, base = _finetune_setup(variant, ctx, seed, out)
        epochs, lr = max(1, round(FINETUNE_EPOCHS * b.epochs)), FINETUNE_LR * b.lr
        offset = base["steps_per_epoch"] * base["epochs"]
        start = {k: base["results"][0][k] for k in base["results"][0] if k != "selection"}
        record["curve_start"] = {**start, "epoch": 0, "step": offset}
    else:
        stepper = build(variant, ctx, seed)
        data, record = training_set(variant, stepper, ctx, seed)
        epochs, lr = round(variant.epochs * b.epochs), b.lr
    result, snapshots, spe = train_tracked(stepper, data, ctx, variant, seed, epochs, lr)
    best_state = copy.deepcopy(stepper.state_dict())
    curve = []
    for e in sorted(snapshots):
        stepper.load_state_dict(snapshots[e])
        row = score(generate(stepper, ctx, seed), ctx, seed, variant.pooled and e == epochs)
        curve.append({"epoch": e, "step": offset + e * spe, **_epoch_facts(result, e), **row})
    final = {"selection": "final", **curve[-1]}
    if result.best_epoch == epochs:
        best = dict(final)
    else:
        stepper.load_state_dict(best_state)
        row = score(generate(stepper, ctx, seed), ctx, seed, variant.pooled)
        e = result.best_epoch
        best = {"epoch": e, "step": offset + e * spe, **_epoch_facts(result, e), **row}
    torch.save(snapshots[epochs], _cache_path(ctx, seed, variant.name))
    return {
        **record,
        "epochs": epochs,
        "lr": lr,
        "steps_per_epoch": spe,
        "step_offset": offset,
        "train_seconds": result.wall_time,
        "losses": result.losses,
        "held_out_scores": result.held_out_scores,
        "curve": curve,
        "results": [final, {**best, "selection": "held-out"}],
    }


def _epoch_facts(result, epoch: int) -> dict[str, float]:
    return {
        "train_loss": result.losses[epoch - 1],
        "held_out_score": result.held_out_scores[epoch - 1],
    }


def run_reference(variant: Variant, ctx: Context, seed: int) -> dict:
    """The solver (as the bench times it) or the CFM-20 teacher, scored once."""
    p = ctx.problem
    facts: dict = {}
    if variant.family == "solver":
        ens = p.solve(p.n_generate, hash_seed(ctx.data_seed, seed, 11))
    else:
        teacher, facts = _teacher(ctx, seed, variant.teacher_epochs)
        teacher.n_euler = variant.teacher_steps
        ens = generate(teacher, ctx, seed)
    row = {"selection": "final", **score(ens, ctx, seed, variant.pooled)}
    return {**facts, "curve": [], "losses": [], "held_out_scores": [], "results": [row]}


def _record_path(out: Path, ctx: Context, seed: int, name: str) -> Path:
    return out / "raw" / ctx.problem.name / f"seed{seed}" / f"{name}.json"


def run_one(ctx: Context, variant: Variant, seed: int, out: Path, force: bool = False) -> None:
    """Run ``variant`` unless its record exists; write the record."""
    path = _record_path(out, ctx, seed, variant.name)
    if path.exists() and not force:
        return
    start = time.perf_counter()
    if variant.family in ("solver", "teacher"):
        record = run_reference(variant, ctx, seed)
    else:
        record = run_trained(variant, ctx, seed, out)
    record |= {
        "problem": ctx.problem.name,
        "seed": seed,
        "variant": variant.name,
        "family": variant.family,
        "quick": ctx.quick,
        "data_seed": ctx.data_seed,
        "wall_seconds": time.perf_counter() - start,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    r = record["results"][0]
    eds = " / ".join(f"{r[f'ed_{h}']:.3g}" for h in HORIZONS)
    print(
        f"{ctx.problem.name} seed {seed} {variant.name}: ED {eds} ({record['wall_seconds']:.0f} s)"
    )


def label_stats(ctx: Context, seeds: list[int], out: Path) -> None:
    """Std of the teacher's labels against the inversion steps, for all transitions and
    for the first step from the start state: how far the backward Euler flow is from
    giving standard normal labels. Writes ``label_stats.csv``."""
    data = TransitionDataset.from_xarray(ctx.problem.train)
    index = torch.arange(len(data))
    first = index % data.per_trajectory == 0
    rows = []
    for seed in seeds:
        teacher, _ = _teacher(ctx, seed, 1.0)
        for n_steps in (20, 40, 160):
            labels = teacher_labels(teacher, data, n_steps=n_steps)(index).flatten(1)
            rows.append(
                {
                    "problem": ctx.problem.name,
                    "seed": seed,
                    "inversion_steps": n_steps,
                    "std_all": float(labels.std()),
                    "std_first_step": float(labels[first].std()),
                }
            )
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "label_stats.csv", index=False)
    print(frame.to_string(index=False))


# -- report -----------------------------------------------------------------------------------
def load_frames(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Results (last and held-out best epoch), ED curves and per-epoch losses."""
    results, curves, losses = [], [], []
    for path in sorted((out / "raw").glob("*/seed*/*.json")):
        rec = json.loads(path.read_text())
        key = {k: rec[k] for k in ("problem", "seed", "variant", "family")}
        for r in rec["results"]:
            extra = {k: rec.get(k, np.nan) for k in ("epochs", "train_seconds", "data_seconds")}
            results.append({**key, **extra, **r})
        start = [rec["curve_start"]] if "curve_start" in rec else []
        curves += [{**key, **c} for c in start + rec["curve"]]
        spe, offset = rec.get("steps_per_epoch", 0), rec.get("step_offset", 0)
        for e, (loss, ho) in enumerate(zip(rec["losses"], rec["held_out_scores"], strict=True)):
            step = offset + (e + 1) * spe
            losses.append(
                {**key, "epoch": e + 1, "step": step, "train_loss": loss, "held_out_score": ho}
            )
    return pd.DataFrame(results), pd.DataFrame(curves), pd.DataFrame(losses)


def _cell(values: pd.Series, fmt: str = "{:.3g}") -> str:
    v = values.dropna()
    if v.empty:
        return "-"
    if len(v) == 1:
        return fmt.format(v.iloc[0])
    return f"{fmt.format(v.median())} [{fmt.format(v.min())}, {fmt.format(v.max())}]"


def table(results: pd.DataFrame, problem: str, names: list[str]) -> str:
    """Markdown: one row per variant and selection, medians [min, max] over seeds."""
    head = (
        "| variant | selection | seeds | ED short | ED mid | ED final | ED short, pooled "
        "| problem score | epoch kept / run | train loss | held-out ES |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name in names:
        g = results[(results["problem"] == problem) & (results["variant"] == name)]
        for sel, s in g.groupby("selection", sort=False):
            kept = f"{_cell(s['epoch'], '{:.0f}')} / {_cell(s['epochs'], '{:.0f}')}"
            cells = [_cell(s[f"ed_{h}"]) for h in HORIZONS]
            cells.append(_cell(s.get("ed_short_pooled", pd.Series(dtype=float))))
            cells.append(_cell(s.get("problem_score", pd.Series(dtype=float))))
            cells += [kept, _cell(s.get("train_loss", pd.Series(dtype=float)))]
            cells.append(_cell(s.get("held_out_score", pd.Series(dtype=float)), "{:.4g}"))
            lines.append(f"| {name} | {sel} | {s['seed'].nunique()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, curves, losses, experiment: str, problem: str, names: list[str], out: Path):
    """Training loss, held-out energy score and the ED ratios against optimiser steps."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(19, 8), layout="constrained")
    panels = [("train_loss", losses), ("held_out_score", losses)]
    panels += [(f"ed_{h}", curves) for h in HORIZONS] + [("problem_score", curves)]
    for ax, (column, frame) in zip(axes.flat, panels, strict=False):
        for name in names:
            g = (
                frame[(frame["problem"] == problem) & (frame["variant"] == name)]
                if len(frame)
                else frame
            )
            if g.empty or column not in g or g[column].isna().all():
                reference = results[(results["problem"] == problem) & (results["variant"] == name)]
                scored = column.startswith("ed_") or column == "problem_score"
                if scored and not reference.empty and column in reference:
                    # untrained references: solver, teachers (grey shades, not the cycle)
                    shade = REFERENCE_COLOURS[names.index(name) % len(REFERENCE_COLOURS)]
                    median = reference[column].median()
                    ax.axhline(median, ls=":", lw=1.2, color=shade, label=f"{name} (median)")
                continue
            stats = g.groupby("step")[column].agg(["median", "min", "max"])
            stats = stats[stats["median"] > 0] if column != "held_out_score" else stats
            (line,) = ax.plot(
                stats.index,
                stats["median"],
                "-",
                marker="o" if column.startswith("ed_") else None,
                ms=3,
                label=name,
            )
            ax.fill_between(
                stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15
            )
        ax.set(xscale="log", xlabel="optimiser steps", title=column.replace("_", " "))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if column != "held_out_score":
            ax.set_yscale("log")
        if column.startswith("ed_"):
            ax.axhline(1.0, color="k", lw=0.6, ls="--")
    handles, labels = axes.flat[4].get_legend_handles_labels()
    for ax in axes.flat[6:]:
        ax.axis("off")
    axes.flat[6].legend(handles, labels, loc="center", fontsize=9)
    fig.suptitle(f"{experiment}: {problem} (median over seeds, min-max band)")
    path = out / f"{experiment}_{problem}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(out: Path) -> None:
    """Rewrite the CSVs, the plots and ``summary.md`` from every record under ``out``."""
    results, curves, losses = load_frames(out)
    if results.empty:
        return
    results.to_csv(out / "results.csv", index=False)
    curves.to_csv(out / "curves.csv", index=False)
    losses.to_csv(out / "losses.csv", index=False)
    notes = out / "findings.md"
    parts = ["# Recipe study (issue 11, item 3)\n"]
    if notes.exists():
        parts.append(notes.read_text())
    parts.append(
        "## Tables\n\nGenerated by `benchmarks/recipe_study.py` from `raw/`. Medians "
        "[min, max] over seeds. `final`: the weights after the last epoch; `held-out`: the "
        "epoch with the best held-out energy score (`fit(held_out=HeldOut(...))`). ED "
        "short, pooled: the short-horizon energy distance summed over "
        f"{POOLED_EVAL_SEEDS} reference splits over the summed noise floors (less noisy).\n"
    )
    for experiment, by_problem in EXPERIMENTS.items():
        for problem, names in by_problem.items():
            present = [
                n
                for n in names
                if ((results["problem"] == problem) & (results["variant"] == n)).any()
            ]
            if not any(VARIANTS[n].family not in ("solver", "teacher") for n in present):
                continue
            parts.append(f"### {experiment}: {problem}\n\n{table(results, problem, present)}\n")
            path = plot(results, curves, losses, experiment, problem, present, out)
            parts.append(f"![{experiment} {problem}]({path.name})\n")
    (out / "summary.md").write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=["double_well", "lorenz63", "allen_cahn"])
    parser.add_argument(
        "--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--quick", action="store_true", help="the bench's quick sizes (a smoke run)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu/recipe"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/slift_recipe_cache"))
    parser.add_argument(
        "--data-seed",
        type=int,
        default=DATA_SEED,
        help="seed of the training set, reference and held-out data (default: the bench's)",
    )
    parser.add_argument("--variants", nargs="+", help="run only these variants (default: all)")
    parser.add_argument(
        "--label-stats", action="store_true", help="only the label std against inversion steps"
    )
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report")
    args = parser.parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:  # one thread per process unless told otherwise
        torch.set_num_threads(1)
    print(f"slift_plugin from {Path(slift_plugin.__file__).parent}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.label_stats:
        ctx = make_context(args.problems[0], args.quick, args.cache, args.data_seed)
        label_stats(ctx, args.seeds, args.out)
        return
    if not args.report_only:
        for problem in args.problems:
            names = [n for e in args.experiments for n in EXPERIMENTS[e].get(problem, [])]
            names = list(dict.fromkeys(names))  # in order, once
            names = [n for n in names if args.variants is None or n in args.variants]
            if not names:
                continue
            ctx = make_context(problem, args.quick, args.cache, args.data_seed)
            for seed in args.seeds:
                for name in names:
                    run_one(ctx, VARIANTS[name], seed, args.out)
    write_report(args.out)
    print(f"wrote {args.out}/summary.md, results.csv, curves.csv, losses.csv and the plots")


if __name__ == "__main__":
    main()
