"""Which training run makes a bad coupled-SL Lorenz-63 model: the teacher's or the student's?

Over 20 sampling draws per model, the bench's five ``sl-coupled`` Lorenz-63 models have
autocorrelation errors 1.17-1.39x the exact solver's (seeds 0, 1, 3) and 1.8-2.0x (seeds 2
and 4), with the same training data (``benchmarks/score_draws.py``). Averaging two
teachers' velocities did not move the bad ones. This separates the two training runs of
one model: for each bench seed ``s`` it trains the teacher with seed ``s`` and with seed
``s + 100`` (initial weights and batch order), inverts each as the bench does, fits the
student (SL) on each set of labels with seed ``s`` and with seed ``s + 100``, and scores
all four models with the draws of ``score_draws.py`` (the bench seed's sampling and split
seeds, so the four share their sampling noise). The ``(s, s)`` model is the bench's: its
scores equal ``score_draws.py``'s for that seed.

    OMP_NUM_THREADS=1 python benchmarks/lorenz63_model_variance.py grid --seeds 2 4

``signals T ...`` asks whether a user could tell a bad model from the training data
alone: for each teacher seed ``T`` (student seed ``T``) it records the score against the
reference as above, the same score against the 512 training trajectories instead, and
statistics of the coupled labels that are exact for a perfect teacher (mean 0, variance
1, no correlation between a trajectory's consecutive labels, none with the state).

``data D ... --seeds S ...`` trains the bench's model (teacher and student seed ``S``;
with ``--method cfm20`` the bench's CFM-20) on another draw of the training set: the
exact system's trajectories with data seed ``D`` instead of the bench's fixed set, 512 of
them or ``--n-train`` (with ``--same-steps``, epochs scaled to keep the bench's
optimiser steps). It scores the model against the bench's reference, next to the
training set's own autocorrelation error against that reference.

One JSON per run in ``--out`` (default ``benchmarks/results/cpu/lorenz63_model_variance``),
with the per-draw autocorrelation errors and ED ratios: ``seed<s>.json`` (grid),
``signals-teacher<T>.json``, ``data<D>[-n<N>][-same-steps][-cfm20]-seed<S>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from slift_plugin import TransitionDataset, teacher_labels
from slift_plugin.bench import methods as M
from slift_plugin.bench.problems import build_problem
from slift_plugin.bench.runner import DATA_SEED
from slift_plugin.labels import StoredLabels, hash_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_draws import model_generator, score_draws, trained_model  # noqa: E402

OTHER_SEED = 100  # the second training run of each kind: seed s + OTHER_SEED


def coupled_labels(problem, data: TransitionDataset, teacher_seed: int) -> StoredLabels:
    """The bench's ``sl-coupled`` labels from a teacher trained with ``teacher_seed``."""
    teacher = M.FAMILIES["sl-coupled"]._trained_teacher(problem, data, teacher_seed)
    return teacher_labels(
        teacher,
        data,
        n_steps=M.INVERSION_STEPS[problem.kind],
        calibrate=M.LABEL_CALIBRATION[problem.kind],
    )


def student(problem, labels: StoredLabels, student_seed: int):
    """The bench's ``sl-coupled`` student with ``student_seed``, fitted on ``labels``."""
    spec = M.parse_method("sl-coupled")
    stepper = M.build_seeded(spec, problem, False, student_seed, key=spec.training_key)
    data = TransitionDataset.from_xarray(problem.train, labels=labels)
    M.train_with_budget(stepper, data, problem, False, student_seed)
    M.set_sampling(stepper, spec)
    return stepper.eval()


def scored(model, problem, seed: int, draws: int) -> dict:
    """``draws`` ensembles of ``model`` scored as ``score_draws.py`` scores the bench's
    model of training seed ``seed``, with the mean and median autocorrelation error."""
    record = score_draws(model_generator(model, problem), hash_seed(seed, 7), problem, seed, draws)
    scores = np.asarray(record["scores"])
    return record | {"score_mean": float(scores.mean()), "score_median": float(np.median(scores))}


def bench_problem():
    return build_problem("lorenz63", quick=False, seed=DATA_SEED)


def grid(seed: int, draws: int) -> dict:
    """Teacher seeds ``seed``, ``seed + 100`` x student seeds the same, for bench seed ``seed``."""
    problem = bench_problem()
    data = TransitionDataset.from_xarray(problem.train)
    seeds = (seed, seed + OTHER_SEED)
    cells = {}
    for teacher_seed in seeds:
        started = time.perf_counter()
        labels = coupled_labels(problem, data, teacher_seed)
        teacher_seconds = time.perf_counter() - started
        for student_seed in seeds:
            record = scored(student(problem, labels, student_seed), problem, seed, draws)
            cells[f"teacher{teacher_seed}-student{student_seed}"] = record | {
                "teacher_seconds": round(teacher_seconds, 1)
            }
            print(
                f"bench seed {seed}: teacher {teacher_seed}, student {student_seed}: "
                f"autocorrelation error mean {record['score_mean']:.4f}, "
                f"median {record['score_median']:.4f}",
                flush=True,
            )
    return {"bench_seed": seed, "draws": draws, "cells": cells}


def label_statistics(labels: StoredLabels, data: TransitionDataset) -> dict:
    """Statistics of coupled labels that a perfect teacher makes exact: N(0, I) labels,
    independent along each trajectory and of the state they start from."""
    n, steps = data.states.shape[0], data.per_trajectory
    xi = labels.values.double().reshape(n, steps, -1)
    states = data.states[:, :-1].double()
    standardised = (states - states.mean((0, 1))) / states.std((0, 1))
    lag1 = (xi[:, 1:] * xi[:, :-1]).mean((0, 1)) / xi.var((0, 1))
    return {
        "mean": xi.mean((0, 1)).tolist(),
        "variance": xi.var((0, 1)).tolist(),
        "lag1_correlation": lag1.tolist(),
        "state_correlation": (standardised.unsqueeze(-1) * xi.unsqueeze(-2)).mean((0, 1)).tolist(),
    }


def signals(teacher_seed: int, draws: int) -> dict:
    """One model (teacher and student seed ``teacher_seed``): its score against the
    reference and against the training trajectories, and its labels' statistics."""
    problem = bench_problem()
    data = TransitionDataset.from_xarray(problem.train)
    labels = coupled_labels(problem, data, teacher_seed)
    model = student(problem, labels, teacher_seed)
    against_training = dataclasses.replace(problem, reference=problem.train)
    record = {
        "teacher_seed": teacher_seed,
        "labels": label_statistics(labels, data),
        "reference": scored(model, problem, teacher_seed, draws),
        "training": scored(model, against_training, teacher_seed, draws),
    }
    print(
        f"teacher {teacher_seed}: autocorrelation error against the reference "
        f"{record['reference']['score_mean']:.4f}, against the training data "
        f"{record['training']['score_mean']:.4f}; label lag-1 correlation "
        f"{np.round(record['labels']['lag1_correlation'], 4).tolist()}",
        flush=True,
    )
    return record


@contextlib.contextmanager
def epochs_scaled(problem, factor: float):
    """The bench's budget for ``problem`` with every epoch count times ``factor``."""
    key = (problem.name, False)
    bench = M.BUDGETS[key]
    M.BUDGETS[key] = dataclasses.replace(
        bench,
        epochs=max(1, round(bench.epochs * factor)),
        teacher_epochs=None
        if bench.teacher_epochs is None
        else max(1, round(bench.teacher_epochs * factor)),
    )
    try:
        yield M.BUDGETS[key]
    finally:
        M.BUDGETS[key] = bench


def data_draw(
    data_seed: int, seed: int, draws: int, n_train: int, method: str, same_steps: bool
) -> dict:
    """The bench's ``method`` model of training seed ``seed`` on ``n_train`` trajectories
    drawn with ``data_seed``: with the bench's epochs (more optimiser steps for more data),
    or with ``same_steps`` the bench's optimiser steps (epochs times 512 / ``n_train``)."""
    problem = bench_problem()
    factor = problem.train.sizes["sample"] / n_train if same_steps else 1.0
    problem = dataclasses.replace(problem, train=problem.solve(n_train, data_seed))
    with epochs_scaled(problem, factor) as used:
        model = trained_model(method, problem, seed)
    record = {
        "method": method,
        "data_seed": data_seed,
        "seed": seed,
        "n_train": n_train,
        "epochs": used.epochs,
        "teacher_epochs": used.teacher_epochs,
        "training_set_score": problem.quantity_error(problem.train, problem.reference),
        "model": scored(model, problem, seed, draws),
    }
    print(
        f"{method}, data seed {data_seed}, seed {seed}: the training set's autocorrelation error "
        f"{record['training_set_score']:.4f}; the model's mean over draws "
        f"{record['model']['score_mean']:.4f}",
        flush=True,
    )
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    modes.add_parser("grid", help="teacher seed x student seed").add_argument(
        "--seeds", nargs="+", type=int, default=[2, 4], help="bench seeds"
    )
    modes.add_parser("signals", help="scores against the training data").add_argument(
        "teacher_seeds", nargs="+", type=int
    )
    data = modes.add_parser("data", help="other draws of the training set")
    data.add_argument("data_seeds", nargs="+", type=int)
    data.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds")
    data.add_argument(
        "--n-train", type=int, default=512, help="trajectories per training set (bench: 512)"
    )
    data.add_argument("--method", default="sl-coupled", choices=["sl-coupled", "cfm20"])
    data.add_argument(
        "--same-steps",
        action="store_true",
        help="scale the budget's epochs by 512 / --n-train: the bench's optimiser steps",
    )
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/cpu/lorenz63_model_variance")
    )
    args = parser.parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "grid":
        runs = {f"seed{s}": (grid, s, args.draws) for s in args.seeds}
    elif args.mode == "signals":
        runs = {f"signals-teacher{s}": (signals, s, args.draws) for s in args.teacher_seeds}
    else:
        size = "" if args.n_train == 512 else f"-n{args.n_train}"
        method = "" if args.method == "sl-coupled" else f"-{args.method}"
        size += "-same-steps" if args.same_steps else ""
        runs = {
            f"data{d}{size}{method}-seed{s}": (
                data_draw,
                d,
                s,
                args.draws,
                args.n_train,
                args.method,
                args.same_steps,
            )
            for d in args.data_seeds
            for s in args.seeds
        }
    for name, (function, *arguments) in runs.items():
        (args.out / f"{name}.json").write_text(json.dumps(function(*arguments), indent=1))


if __name__ == "__main__":
    main()
