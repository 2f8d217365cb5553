"""DICE on the Vlasov-Poisson two-stream instability, near the authors' regime (issue 12).

DICE learns a potential ``s(x, v, t, v0)`` (periodic in ``x``) from unpaired particle
populations recorded at many times of particle-in-cell (PIC) runs at the training beam
speeds, then transports a fresh initial population at a held-out ``v0``. Scored against
a PIC reference with twice the particles, as ``slift bench`` does:

* the relative L2 error of the field-energy curve ``W_E(t)``, next to the PIC floor (the
  PIC run from the very initial population DICE starts from, i.e. the same method with
  half the particles and another seed);
* the energy-distance (ED) ratio to the noise floor at every output time, ``x`` on the
  circle (``evaluate(..., period=[L, None])``), at the bench's short / mid / final
  horizons (1/8, 1/2 and all of the horizon), for DICE and the PIC floor run;
* the growth rate fitted on ``W_E(t)`` (:func:`fit_growth_rate`) of DICE, of the PIC
  reference and of the floor run, against cold linear theory;
* the sampling cost: gradient evaluations per output step against PIC internal steps,
  and the wall seconds of both on the same population.

The same scores at a training ``v0`` (fresh PIC populations, ``--check-v0``) separate
fitting from generalisation in ``v0``. Regime (see ``DICE``'s Notes): many snapshot times
(every ``--record-dt`` over ``[0, --t-end]``), batches of ``--n-times`` times (both
endpoints kept) x ``--batch-size`` particles, a SiLU ``PotentialMLP``, Adam (no weight
decay) with cosine decay, the entropic term with ``--sigma`` kept at sampling
(Euler-Maruyama), optional ``--alpha``. Sizes are scaled to one CPU core (float32).

Commands run (one thread each, 2-core machine shared with another job; results in
``benchmarks/results/cpu/dice_vlasov_regime/``)::

    OMP_NUM_THREADS=1 python benchmarks/dice_vlasov_regime.py --tag sigma0.05
    OMP_NUM_THREADS=1 python benchmarks/dice_vlasov_regime.py --tag sigma0 --sigma 0

Training length and particle count (2026-12-03): ``--sigma 0 --steps N --tag
sigma0-stepsN`` for N = 2000 and 12000, and the 4,000- and 12,000-step runs again with
``--n-particles 60000`` (tags ``sigma0-particles60000``, ``sigma0-steps12000-particles60000``).

Each writes ``<tag>.json`` (every number, with the DICE loss on all snapshot times of the
training populations and of fresh PIC runs at the training v0s, ``loss.all_times``) and
``<tag>.png`` (phase space and ``W_E``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure

from slift_plugin import (
    DICE,
    HeldOutPopulations,
    PotentialMLP,
    SnapshotDataset,
    evaluate,
    fit,
    rollout,
)
from slift_plugin.systems.vlasov import (
    DEFAULT_LENGTH,
    field_energy,
    fit_growth_rate,
    two_stream_growth_rate,
    vlasov_two_stream,
)

N_GRID = 64  # field grid of vlasov_two_stream and of the W_E score
PLOT_TIMES = (0.0, 15.0, 22.0, 30.0, 40.0)
TRAIN_SEED0, REFERENCE_SEED, START_SEED = 0, 100, 101  # PIC seeds (check v0: +100)
HELD_OUT_SEED0 = 300  # fresh populations at the training v0s, for the held-out loss
SELECTION_SEED0 = 400  # fresh populations at the training v0s, for --select
LOSS_PARTICLES = 2000  # particles per time of the population losses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--out", default="benchmarks/results/cpu/dice_vlasov_regime", help="output folder")
    a("--tag", default="run", help="name of this variant's files in --out")
    a("--train-v0", type=float, nargs="+", default=[0.8, 0.9, 1.1, 1.2])
    a("--test-v0", type=float, default=1.0)
    a("--check-v0", type=float, nargs="*", default=[1.1], help="training v0 also scored")
    a("--n-particles", type=int, default=20000, help="PIC particles per training v0")
    a("--n-eval", type=int, default=5000, help="generated particles (reference: twice)")
    a("--t-end", type=float, default=40.0)
    a("--record-dt", type=float, default=0.1, help="snapshot spacing of the training data")
    a("--eval-dt", type=float, default=1.0, help="output step of generation and scores")
    a("--dt-internal", type=float, default=0.1, help="PIC leapfrog step")
    a("--n-times", type=int, default=32, help="times per batch (both endpoints kept)")
    a("--batch-size", type=int, default=256, help="particles per time in a batch")
    a("--hidden", type=int, default=64)
    a("--depth", type=int, default=4)
    a("--steps", type=int, default=4000, help="optimiser steps (rounded up to whole epochs)")
    a("--lr", type=float, default=5e-4)
    a("--grad-clip", type=float, default=1.0)
    a("--sigma", type=float, default=0.05, help="entropic sigma, also used at sampling")
    a("--alpha", type=float, default=0.0)
    a("--n-substeps", type=int, default=10, help="Euler(-Maruyama) steps per output step")
    a("--dtype", choices=("float32", "float64"), default="float32")
    a(
        "--select",
        type=int,
        default=0,
        metavar="N",
        help="keep the epoch whose rollouts from fresh PIC runs at the training v0s best "
        "match them (HeldOutPopulations, N particles rolled out per v0, every 5th output "
        "time scored); 0: the last epoch",
    )
    a("--seed", type=int, default=0, help="initialisation, batch and sampling seed")
    a("--threads", type=int, default=None, help="CPU threads (default: torch's own setting)")
    return p.parse_args(argv)


def pic(n: int, v0: float, seed: int, t_end: float, dt: float, dt_internal: float):
    """One PIC run recorded every ``dt`` on ``[0, t_end]`` and its wall seconds."""
    start = time.perf_counter()
    run = vlasov_two_stream(
        n_particles=n,
        n_steps=round(t_end / dt),
        dt=dt,
        v0=v0,
        dt_internal=dt_internal,
        seed=seed,
    )
    return run, time.perf_counter() - start


def wrap(ens: xr.DataArray, length: float) -> xr.DataArray:
    """Positions wrapped into ``[0, length)`` (a learned flow may leave the box)."""
    ens = ens.copy(data=np.array(ens.values))
    ens.loc[{"channel": "x"}] = np.mod(ens.sel(channel="x"), length)
    return ens


def w_e(ens: xr.DataArray, length: float) -> np.ndarray:
    """Field energy ``W_E`` at every time of a ``(sample, time, channel)`` ensemble."""
    return field_energy(torch.as_tensor(ens.sel(channel="x").values.T), length, N_GRID).numpy()


def growth(times: np.ndarray, energy: np.ndarray) -> dict[str, object]:
    """:func:`fit_growth_rate` with its window, or the reason it has no answer."""
    try:
        gamma, t0, t1 = fit_growth_rate(times, energy)
    except ValueError as err:
        return {"gamma": math.nan, "window": None, "error": str(err)}
    return {"gamma": gamma, "window": [t0, t1]}


def horizons(n_steps: int) -> list[int]:
    """Output steps of the bench's short, middle and final horizons."""
    return sorted({max(1, round(n_steps / 8)), max(1, round(n_steps / 2)), n_steps})


def score(
    generated: xr.DataArray,
    floor_run: xr.DataArray,
    reference: xr.DataArray,
    v0: float,
    length: float,
    fine: xr.Dataset,
) -> dict[str, object]:
    """Every number of one held-out (or check) ``v0``: ED ratios, W_E errors, growth rates.

    ``fine`` is the reference PIC Dataset (its ``field_energy_fine`` gives the growth rate
    on the internal steps too).
    """
    times = reference["time"].values
    generated = generated.assign_coords(time=times)  # float round-off in t0 + k dt
    period = [length, None]
    start = time.perf_counter()
    ed = evaluate(generated, reference, seed=0, period=period)["ed_ratio"].values
    ed_floor = evaluate(floor_run, reference, seed=0, period=period)["ed_ratio"].values
    eval_seconds = time.perf_counter() - start
    we = {name: w_e(e, length) for name, e in (("reference", reference), ("pic_floor", floor_run))}
    we["dice"] = w_e(generated, length)

    def rel_l2(a: np.ndarray) -> float:
        return float(np.linalg.norm(a - we["reference"]) / np.linalg.norm(we["reference"]))

    k = 2.0 * math.pi / length
    theory = two_stream_growth_rate(k, v0)
    rates = {name: growth(times, curve) for name, curve in we.items()}
    rates["reference_internal_steps"] = growth(
        fine["time_fine"].values, fine["field_energy_fine"].values
    )
    # fit_growth_rate starts its window at 30 W_E(0): a population whose W_E jumps at once
    # (sampling noise destroys the quiet start) gets a window in the first time units.
    # The slope of log W_E on the reference's own window is reported beside it.
    if rates["reference"]["window"] is not None:
        t_a, t_b = rates["reference"]["window"]
        inside = (times >= t_a) & (times <= t_b)
        for name in ("dice", "pic_floor"):
            slope = np.polyfit(times[inside], np.log(we[name][inside]), 1)[0]
            rates[f"{name}_on_reference_window"] = {"gamma": slope / 2, "window": [t_a, t_b]}
    labels = ("short", "middle", "final")
    hz = horizons(len(times) - 1)
    out = {
        "v0": v0,
        "times": times.tolist(),
        "ed_ratio_dice": ed.tolist(),
        "ed_ratio_pic_floor": ed_floor.tolist(),
        "ed_ratio_dice_horizons": {
            lab: {"time": float(times[i]), "ed_ratio": float(ed[i])}
            for lab, i in zip(labels, hz, strict=True)
        },
        "ed_ratio_pic_floor_horizons": {
            lab: {"time": float(times[i]), "ed_ratio": float(ed_floor[i])}
            for lab, i in zip(labels, hz, strict=True)
        },
        "ed_ratio_dice_max_over_times": float(np.nanmax(ed[1:])),
        "ed_ratio_pic_floor_max_over_times": float(np.nanmax(ed_floor[1:])),
        "W_E": {name: curve.tolist() for name, curve in we.items()},
        "W_E_rel_l2_dice": rel_l2(we["dice"]),
        "W_E_rel_l2_pic_floor": rel_l2(we["pic_floor"]),
        "W_E_max": {name: float(curve.max()) for name, curve in we.items()},
        "W_E_argmax_time": {name: float(times[curve.argmax()]) for name, curve in we.items()},
        "growth_rate": {"linear_theory": theory, **rates},
        "eval_seconds": eval_seconds,
    }
    g_dice, g_pic = rates["dice"]["gamma"], rates["reference"]["gamma"]
    out["bars"] = {
        "W_E_within_1.5x_floor": out["W_E_rel_l2_dice"] <= 1.5 * out["W_E_rel_l2_pic_floor"],
        "W_E_ratio_to_floor": out["W_E_rel_l2_dice"] / out["W_E_rel_l2_pic_floor"],
        "ed_ratio_le_2_at_every_horizon": bool(all(ed[i] <= 2 for i in hz)),
        "growth_rate_rel_error_vs_theory": g_dice / theory - 1,
        "growth_rate_rel_error_vs_pic": g_dice / g_pic - 1,
        "growth_rate_within_10pct": bool(
            abs(g_dice / theory - 1) <= 0.1 and abs(g_dice / g_pic - 1) <= 0.1
        ),
    }
    g_win = rates.get("dice_on_reference_window", {}).get("gamma", math.nan)
    out["bars"]["growth_rate_on_reference_window_rel_error_vs_theory"] = g_win / theory - 1
    out["bars"]["growth_rate_on_reference_window_rel_error_vs_pic"] = g_win / g_pic - 1
    return out


def generate(dice: DICE, start: xr.DataArray, v0: float, n_steps: int, seed: int, length: float):
    """DICE rollout of a PIC initial population, positions wrapped; and its wall seconds."""
    x0 = start.values.astype(np.float64 if dice_dtype(dice) == torch.float64 else np.float32)
    t0 = time.perf_counter()
    ens = rollout(
        dice,
        x0,
        n_steps,
        mu=[v0],
        seed=seed,
        chunk_size=x0.shape[0],
        coords={"channel": ["x", "v"]},
        param_names=["v0"],
    )
    return wrap(ens, length), time.perf_counter() - t0


def dice_dtype(dice: DICE) -> torch.dtype:
    return next(dice.parameters()).dtype


def plot(path: Path, title: str, res: dict, ensembles: dict[str, xr.DataArray], length: float):
    """Phase-space densities (one row per ensemble) and ``W_E(t)``, ED ratio over time."""
    n_rows = len(ensembles)
    fig = Figure(figsize=(3.0 * len(PLOT_TIMES), 2.6 * (n_rows + 1.3)), layout="constrained")
    grid = fig.add_gridspec(n_rows + 1, len(PLOT_TIMES), height_ratios=[1] * n_rows + [1.3])
    ref = ensembles["reference PIC"]
    vmax = 1.1 * float(np.abs(ref.sel(channel="v")).max())
    times = ref["time"].values
    for row, (name, ens) in enumerate(ensembles.items()):
        for j, t in enumerate(PLOT_TIMES):
            ax = fig.add_subplot(grid[row, j])
            snap = ens.isel(time=int(np.argmin(np.abs(times - t))))
            ax.hist2d(
                snap.sel(channel="x").values,
                snap.sel(channel="v").values,
                bins=(64, 64),
                range=((0, length), (-vmax, vmax)),
                cmap="magma",
                density=True,
            )
            ax.set_title(f"{name}, t = {t:g}", fontsize=9)
            if j == 0:
                ax.set_ylabel("v")
            if row == n_rows - 1:
                ax.set_xlabel("x")
    half = len(PLOT_TIMES) // 2 + 1
    ax = fig.add_subplot(grid[n_rows, :half])
    we = res["W_E"]
    ax.semilogy(times, we["reference"], "k-", lw=2, label="reference PIC (2N)")
    ax.semilogy(times, we["pic_floor"], "C1--", label="PIC, N, other seed (floor)")
    ax.semilogy(times, we["dice"], "C0o-", ms=3, label="DICE")
    gamma = res["growth_rate"]["linear_theory"]
    window = res["growth_rate"]["reference"]["window"]
    if window is not None:
        t_a = window[0]
        w_a = float(np.interp(t_a, times, we["reference"]))
        tt = np.array([t_a - 4, window[1] + 4])
        ax.semilogy(tt, w_a * np.exp(2 * gamma * (tt - t_a)), "k:", label="linear theory")
    ax.set(xlabel="time", ylabel="W_E", title=f"field energy, held-out v0 = {res['v0']}")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[n_rows, half:])
    ax.semilogy(times[1:], res["ed_ratio_dice"][1:], "C0o-", ms=3, label="DICE")
    ax.semilogy(times[1:], res["ed_ratio_pic_floor"][1:], "C1--", label="PIC floor run")
    ax.axhline(2.0, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="time", ylabel="ED ratio (x periodic)", title="energy distance / noise floor")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=75)


def clean(obj):
    """NaN and infinities as None, numpy scalars as Python ones: strict JSON."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def training_snapshots(args: argparse.Namespace, dtype: torch.dtype) -> SnapshotDataset:
    """One PIC run per training v0, recorded every ``record_dt``, as DICE's snapshots."""
    groups = []
    for i, v0 in enumerate(args.train_v0):
        run = pic(
            args.n_particles, v0, TRAIN_SEED0 + i, args.t_end, args.record_dt, args.dt_internal
        )[0]["state"]
        states = torch.as_tensor(run.values, dtype=dtype)  # (sample, time, channel)
        times = torch.as_tensor(np.array(run["time"].values), dtype=dtype)
        groups.append((times, list(states.unbind(1)), torch.tensor([v0], dtype=dtype)))
    return SnapshotDataset(groups, n_times=args.n_times, dtype=dtype)


def population_losses(
    args: argparse.Namespace, dice: DICE, snapshots: SnapshotDataset, dtype: torch.dtype
) -> dict[str, dict[str, float]]:
    """The DICE loss on all snapshot times at once, per training v0, on ``LOSS_PARTICLES``
    particles of the training populations (in sample) and of a fresh PIC run of the same
    size as the training runs (held out). A gap between the two is overfitting to the
    finite particle sets, which a held-out selection could catch. The particles are a
    seeded random subset, the same rows at every time (the first 2,000 rows of a quiet,
    Hammersley, load of 20,000 sit in the first fifth of the box and in one beam); the
    fresh run has the training runs' particle count, since a PIC run's finite-N error
    depends on it."""
    in_sample, held_out = {}, {}
    rows = torch.Generator().manual_seed(args.seed)
    for i, (times, populations, mu) in enumerate(snapshots.groups):
        v0 = f"{float(mu[0]):g}"
        subset = torch.randperm(populations[0].shape[0], generator=rows)[:LOSS_PARTICLES]
        own = torch.stack([p[subset] for p in populations])
        in_sample[v0] = dice.loss({"x": own, "t": times, "mu": mu}).item()
        fresh = pic(
            populations[0].shape[0],
            float(mu[0]),
            HELD_OUT_SEED0 + i,
            args.t_end,
            args.record_dt,
            args.dt_internal,
        )[0]["state"]
        x = torch.as_tensor(fresh.transpose("time", "sample", ...).values, dtype=dtype)
        held_out[v0] = dice.loss({"x": x[:, subset], "t": times, "mu": mu}).item()
    return {"in_sample": in_sample, "held_out": held_out}


def selection_populations(args: argparse.Namespace, dtype: torch.dtype) -> HeldOutPopulations:
    """Fresh PIC runs at the training v0s (the training runs' particle count, recorded at
    the output step), for selecting the epoch by rollouts; never the held-out v0."""
    groups = []
    for i, v0 in enumerate(args.train_v0):
        run = pic(
            args.n_particles, v0, SELECTION_SEED0 + i, args.t_end, args.eval_dt, args.dt_internal
        )[0]["state"]
        states = torch.as_tensor(run.values, dtype=dtype)
        # a random quarter of the particles at each time keeps the energy distances cheap
        rows = torch.Generator().manual_seed(SELECTION_SEED0 + i)
        keep = torch.randperm(states.shape[0], generator=rows)[: max(2, states.shape[0] // 4)]
        times = torch.as_tensor(np.array(run["time"].values), dtype=dtype)
        populations = list(states[keep].unbind(1))
        groups.append((times, populations, torch.tensor([v0], dtype=dtype)))
    n_out = round(args.t_end / args.eval_dt)
    return HeldOutPopulations(
        SnapshotDataset(groups, dtype=dtype),
        n_samples=args.select,
        times=list(range(5, n_out + 1, 5)),
        period=[DEFAULT_LENGTH, None],
        seed=args.seed,
    )


def train(args: argparse.Namespace, snapshots: SnapshotDataset, dtype: torch.dtype):
    """DICE with a potential periodic in x, conditioned on t and v0; Adam, cosine decay."""
    torch.manual_seed(args.seed)
    potential = PotentialMLP(
        2, n_params=1, hidden=args.hidden, depth=args.depth, periods=[DEFAULT_LENGTH, None]
    )
    dice = DICE(
        potential,
        (2,),
        n_params=1,
        dt=args.eval_dt,
        n_substeps=args.n_substeps,
        sigma=args.sigma,
        alpha=args.alpha,
    ).to(dtype)
    steps_per_epoch = snapshots.steps_per_epoch(args.batch_size)
    result = fit(
        dice,
        snapshots,
        epochs=max(1, math.ceil(args.steps / steps_per_epoch)),
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=0.0,
        grad_clip=args.grad_clip,
        seed=args.seed,
        description=f"fit DICE ({args.tag})",
        held_out=selection_populations(args, dtype) if args.select else None,
    )
    return dice, result, steps_per_epoch


def score_cases(args: argparse.Namespace, dice: DICE) -> tuple[dict, dict]:
    """Scores at the held-out v0 (and the check v0s), and the held-out ensembles.

    The reference is a PIC run with 2N particles; the floor run is the PIC run from the
    initial population DICE transports (N particles, another seed).
    """
    n_out = round(args.t_end / args.eval_dt)
    cases, ensembles = {}, {}
    for j, v0 in enumerate([args.test_v0, *args.check_v0]):
        shift = 100 * j  # fresh PIC seeds for every scored v0
        ref, _ = pic(
            2 * args.n_eval, v0, REFERENCE_SEED + shift, args.t_end, args.eval_dt, args.dt_internal
        )
        floor_run, pic_seconds = pic(
            args.n_eval, v0, START_SEED + shift, args.t_end, args.eval_dt, args.dt_internal
        )
        generated, sample_seconds = generate(
            dice, floor_run["state"].isel(time=0), v0, n_out, args.seed, DEFAULT_LENGTH
        )
        res = score(generated, floor_run["state"], ref["state"], v0, DEFAULT_LENGTH, ref)
        res["sample_seconds"] = sample_seconds
        res["pic_seconds"] = pic_seconds
        res["role"] = "held-out" if j == 0 else "training v0 (fresh PIC populations)"
        cases[f"v0={v0:g}"] = res
        if j == 0:
            ensembles = {
                "reference PIC": ref["state"],
                "PIC floor run": floor_run["state"],
                "DICE": generated.assign_coords(time=ref["state"]["time"].values),
            }
        print(
            f"v0={v0:g}: W_E err DICE {res['W_E_rel_l2_dice']:.3g} floor "
            f"{res['W_E_rel_l2_pic_floor']:.3g}; ED ratio horizons "
            f"{[round(h['ed_ratio'], 3) for h in res['ed_ratio_dice_horizons'].values()]}; "
            f"gamma DICE {res['growth_rate']['dice']['gamma']:.3g} PIC "
            f"{res['growth_rate']['reference']['gamma']:.3g} theory "
            f"{res['growth_rate']['linear_theory']:.3g}",
            flush=True,
        )
    return cases, ensembles


def run_config(args: argparse.Namespace, dice: DICE, epochs: int, steps_per_epoch: int) -> dict:
    """Everything that shaped the run, for the JSON."""
    return {
        **vars(args),
        "length": DEFAULT_LENGTH,
        "n_grid": N_GRID,
        "n_snapshot_times": round(args.t_end / args.record_dt) + 1,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "optimiser_steps": epochs * steps_per_epoch,
        "optimiser": "AdamW(weight_decay=0) = Adam, cosine decay to 0 (slift_plugin.fit)",
        "seeds": {
            "train_pic": [TRAIN_SEED0 + i for i in range(len(args.train_v0))],
            "reference_pic": f"{REFERENCE_SEED} + 100 j (j-th scored v0)",
            "start_and_floor_pic": f"{START_SEED} + 100 j",
            "init_batches_sampling": args.seed,
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_parameters": sum(p.numel() for p in dice.parameters()),
    }


def headline(held: dict) -> dict:
    """The held-out case's numbers that the issue's bars name."""
    return {
        "W_E_rel_l2_dice": held["W_E_rel_l2_dice"],
        "W_E_rel_l2_pic_floor": held["W_E_rel_l2_pic_floor"],
        "ed_ratio_dice_short_mid_final": [
            h["ed_ratio"] for h in held["ed_ratio_dice_horizons"].values()
        ],
        "ed_ratio_pic_floor_short_mid_final": [
            h["ed_ratio"] for h in held["ed_ratio_pic_floor_horizons"].values()
        ],
        "gamma_dice": held["growth_rate"]["dice"]["gamma"],
        "gamma_pic_reference": held["growth_rate"]["reference"]["gamma"],
        "gamma_pic_floor_run": held["growth_rate"]["pic_floor"]["gamma"],
        "gamma_linear_theory": held["growth_rate"]["linear_theory"],
        "sample_seconds_dice": held["sample_seconds"],
        "pic_seconds_same_population": held["pic_seconds"],
        "bars": held["bars"],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    snapshots = training_snapshots(args, dtype)
    data_seconds = time.perf_counter() - wall0
    dice, result, steps_per_epoch = train(args, snapshots, dtype)
    populations = population_losses(args, dice, snapshots, dtype)
    print(f"population losses: {populations}", flush=True)
    del snapshots
    epochs = result.epochs
    print(f"trained {epochs * steps_per_epoch} steps in {result.wall_time:.0f} s", flush=True)
    cases, ensembles = score_cases(args, dice)
    losses = result.losses
    summary = {
        "tag": args.tag,
        "config": run_config(args, dice, epochs, steps_per_epoch),
        "timing_seconds": {
            "training_data": data_seconds,
            "training": result.wall_time,
            "per_step": result.wall_time / (epochs * steps_per_epoch),
            "total": time.perf_counter() - wall0,
        },
        "loss": {
            "per_epoch": losses,
            "first_epoch": losses[0],
            "last_epoch": losses[-1],
            "min_epoch": float(np.min(losses)),
            "all_times": populations,
        },
        "selection": {
            "scores_per_epoch": result.held_out_scores,
            "best_epoch": result.best_epoch,
        },
        "cost_per_output_step": {
            "dice_gradient_evaluations": dice.evals_per_step,
            "pic_internal_steps": round(args.eval_dt / args.dt_internal),
            "note": "a DICE evaluation is an MLP forward + backward on every particle; a PIC "
            "step is a CIC deposit, an FFT Poisson solve and an interpolation",
        },
        "cases": cases,
    }
    held = cases[f"v0={args.test_v0:g}"]
    summary["headline"] = headline(held)
    (out / f"{args.tag}.json").write_text(json.dumps(clean(summary), indent=1))
    plot(
        out / f"{args.tag}.png",
        f"DICE ({args.tag}): {summary['config']['optimiser_steps']} steps, "
        f"{args.n_times} times x {args.batch_size} particles, MLP {args.hidden}x{args.depth}, "
        f"sigma {args.sigma}, alpha {args.alpha}",
        held,
        ensembles,
        DEFAULT_LENGTH,
    )
    print(json.dumps(clean(summary["headline"]), indent=1), flush=True)
    return summary


if __name__ == "__main__":
    main()
