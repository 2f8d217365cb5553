"""Does a better teacher make a better coupled SL model? (issue 11, the demo's bar).

The demo's SL-FNO distils a flow-matching teacher (60 epochs when this study began; 90 now).
On Allen-Cahn the bench found coupled SL within 5% of its teacher at every horizon, so the
teacher may bound it. This trains the demo's teacher for each of ``--teacher-epochs``,
scores the teacher itself (CFM, ``inversion_steps`` Euler steps, the demo's rollout seed
and reference), and, for each of ``--distil``, inverts it and trains the demo's SL-FNO on
the coupled labels. With ``--es-finetune``, each distilled model is then fine-tuned with
the energy score as the recipe study does it (``EnergyScoreLifting`` on a copy of its
backbone, 30% of the epochs at a quarter of the learning rate, 2 members, fresh noise on
the plain transitions) and scored again. Everything else is the demo's
(``slift_plugin.demo.DemoConfig``), except that the FNOs keep neuraloperator's grid
embedding unless ``--no-grid-embedding`` is given (the demo's FNOs until 2026-12-02). The
first two commands ran when the demo trained SL for 120 epochs with ``n_modes=16``;
``--sl-epochs 120`` gives that budget today, with the FNO keeping every Fourier mode (the
mode count has no flag), so they no longer reproduce those JSON files exactly.

    OMP_NUM_THREADS=2 python benchmarks/demo_teacher_study.py --teacher-epochs 60 120 \\
        --distil 120
    OMP_NUM_THREADS=2 python benchmarks/demo_teacher_study.py --teacher-epochs 60 \\
        --distil 60 --es-finetune

The demo's budget and FNO (``--sl-epochs`` trains one SL model per value from the same
teacher; ``--seed`` is the demo's seed, which also draws its data; ``--no-grid-embedding``
drops neuraloperator's positional embedding from every FNO; ``--sign-flip`` trains on every
trajectory and its negative, a symmetry of the Allen-Cahn law), as in BENCHMARKS.md:

    OMP_NUM_THREADS=1 python benchmarks/demo_teacher_study.py --teacher-epochs 60 \\
        --distil 60 --sl-epochs 15 30 60 --out benchmarks/results/cpu/demo_budget
    OMP_NUM_THREADS=1 python benchmarks/demo_teacher_study.py --teacher-epochs 60 \\
        --distil 60 --sl-epochs 30 --no-grid-embedding --seed 1 \\
        --out benchmarks/results/cpu/demo_budget
    OMP_NUM_THREADS=1 python benchmarks/demo_teacher_study.py --teacher-epochs 45 \\
        --distil 45 --sl-epochs 15 --no-grid-embedding --sign-flip \\
        --out benchmarks/results/cpu/demo_budget

The labels' calibration (``--calibrate none fourier``: one SL model per calibration from
the same teacher; the demo's default since 2026-12-02 is ``fourier``):

    OMP_NUM_THREADS=1 python benchmarks/demo_teacher_study.py --teacher-epochs 90 \\
        --distil 90 --sl-epochs 30 --no-grid-embedding --calibrate none fourier \\
        --seed 1 --out benchmarks/results/cpu/demo_calibration

Results: one JSON per run in ``--out`` (default ``benchmarks/results/cpu/demo_teacher``)
and a table on stdout: the ED ratio at the demo's horizons (t = 2, 4, 8).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from slift_plugin import (
    EnergyScoreLifting,
    StochasticLifting,
    TransitionDataset,
    evaluate,
    fit,
    rollout,
    teacher_labels,
)
from slift_plugin.bench.methods import ES_MEMBERS
from slift_plugin.bench.problems import spectrum_error
from slift_plugin.demo import DemoConfig, _fit, _fno, _teacher, summary_table
from slift_plugin.systems import allen_cahn

FINETUNE_EPOCHS, FINETUNE_LR = 0.3, 0.25  # as benchmarks/recipe_study.py


def scored(cfg: DemoConfig, stepper, reference) -> dict:
    """The demo's rollout of ``stepper`` from u0 = 0, scored at the demo's horizons."""
    x0 = reference.isel(sample=0, time=0).values
    started = time.perf_counter()
    ensemble = rollout(
        stepper,
        x0,
        cfg.n_steps,
        cfg.n_generate,
        seed=cfg.seed + 2,
        coords={"channel": reference["channel"].values, "x": reference["x"].values},
        t0=float(reference["time"][0]),
    )
    seconds = time.perf_counter() - started
    table = summary_table({"m": evaluate(ensemble, reference, seed=cfg.seed)}, {"m": 0.0})
    return {
        "ed_ratio": table["ed_ratio"].round(3).tolist(),
        "std_rel_error": table["std_rel_error"].round(3).tolist(),
        "mean_rel_error": table["mean_rel_error"].round(3).tolist(),
        "times": table["time"].tolist(),
        "spectrum_error": round(spectrum_error(ensemble, reference), 4),
        "sample_seconds": round(seconds, 1),
    }


def finetuned(cfg: DemoConfig, sl: StochasticLifting, train, reference) -> dict:
    """Energy-score fine-tuning of a trained SL model, scored like the others."""
    es = EnergyScoreLifting(
        copy.deepcopy(sl.backbone), (1, None), n_members=ES_MEMBERS, dt=cfg.dt, seed=cfg.seed
    )
    result = fit(
        es,
        TransitionDataset.from_xarray(train),  # same transitions: same normalisation
        epochs=max(1, round(FINETUNE_EPOCHS * cfg.epochs)),
        batch_size=cfg.batch_size,
        lr=FINETUNE_LR * cfg.lr,
        weight_decay=0.0,
        seed=cfg.seed,
        description="fit ES fine-tuning",
    )
    return scored(cfg, es, reference) | {
        "train_seconds": round(result.wall_time, 1),
        "train_loss": result.final_loss,
    }


def run(
    teacher_epochs: int,
    distil: bool,
    out: Path,
    es_finetune: bool = False,
    sl_epochs: tuple[int, ...] | None = None,
    seed: int = 0,
    embedding: str | None = "grid",
    sign_flip: bool = False,
    calibrations: tuple[str | None, ...] = (None,),
) -> dict:
    """Train the teacher once; distil it into one SL model per entry of ``sl_epochs`` and
    of ``calibrations``."""
    cfg = DemoConfig(
        teacher_epochs=teacher_epochs,
        seed=seed,
        positional_embedding=embedding,
        label_calibration=calibrations[0],
    )
    common = dict(n_steps=cfg.n_steps, dt=cfg.dt, n_grid=cfg.n_grid)
    train = allen_cahn(n_samples=cfg.n_train, seed=cfg.seed, **common)
    if sign_flip:
        train = with_sign_flips(train)
    reference = allen_cahn(n_samples=2 * cfg.n_generate, seed=cfg.seed + 1, **common)
    transitions = TransitionDataset.from_xarray(train)
    teacher = _teacher(cfg)
    fitted = _fit(cfg, teacher, transitions, "teacher (CFM)", cfg.teacher_epochs)
    record = {
        "config": asdict(cfg),
        "teacher": scored(cfg, teacher, reference)
        | {"train_seconds": round(fitted.wall_time, 1), "train_loss": fitted.final_loss},
    }
    for calibration in calibrations if distil else ():
        started = time.perf_counter()
        labels = teacher_labels(
            teacher, transitions, n_steps=cfg.inversion_steps, calibrate=calibration
        )
        record["teacher"]["inversion_seconds"] = round(time.perf_counter() - started, 1)
        for epochs in sl_epochs or (cfg.epochs,):
            key = "sl" if sl_epochs is None else f"sl{epochs}"
            key += "" if calibration is None else f"-{calibration}"
            student = replace(cfg, epochs=epochs, label_calibration=calibration)
            record.update(distilled(student, train, labels, reference, key))
            if es_finetune:  # a share of the student's own epochs
                record[f"{key}+es"] = finetuned(student, record.pop("_model"), train, reference)
            record.pop("_model", None)
    out.mkdir(parents=True, exist_ok=True)
    name = f"teacher{teacher_epochs}" + ("-es" if es_finetune else "")
    if sl_epochs is not None:
        name += "-sl" + "-".join(map(str, sl_epochs))
    if seed:
        name += f"-seed{seed}"
    if embedding is None:
        name += "-noembed"
    if sign_flip:
        name += "-signflip"
    if calibrations != (None,):
        name += "-calibrate-" + "-".join(str(c).lower() for c in calibrations)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    return record


def with_sign_flips(train: xr.DataArray) -> xr.DataArray:
    """``train`` and its mirror image ``-train``: the Allen-Cahn law is symmetric under
    ``u -> -u`` (odd drift, additive noise), so every trajectory's negative is as likely."""
    n = train.sizes["sample"]
    flipped = train.copy(data=-train.values).assign_coords(sample=np.arange(n, 2 * n))
    return xr.concat([train.assign_coords(sample=np.arange(n)), flipped], dim="sample")


def distilled(cfg: DemoConfig, train, labels, reference, key: str) -> dict:
    """The demo's SL-FNO trained for ``cfg.epochs`` on the coupled labels, scored."""
    sl = StochasticLifting(_fno(cfg, label_dim=1), (1, None), dt=cfg.dt)
    data = TransitionDataset.from_xarray(train, labels=labels)
    result = _fit(cfg, sl, data, f"SL ({cfg.epochs} epochs)", cfg.epochs)
    return {
        key: scored(cfg, sl, reference)
        | {
            "epochs": cfg.epochs,
            "train_seconds": round(result.wall_time, 1),
            "train_loss": result.final_loss,
        },
        "_model": sl,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-epochs", type=int, nargs="+", default=[60, 120])
    parser.add_argument(
        "--distil", type=int, nargs="*", default=[120], help="teacher epochs to distil into SL"
    )
    parser.add_argument(
        "--sl-epochs",
        type=int,
        nargs="+",
        default=None,
        help="SL training epochs, one model each (default: the demo's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (data and models)")
    parser.add_argument(
        "--no-grid-embedding",
        action="store_true",
        help="FNOs without neuraloperator's positional embedding (translation-equivariant)",
    )
    parser.add_argument(
        "--sign-flip",
        action="store_true",
        help="train on every trajectory and its negative (twice the transitions per epoch)",
    )
    parser.add_argument(
        "--calibrate",
        nargs="+",
        default=["none"],
        choices=["none", "fourier", "coordinates"],
        help="teacher_labels(calibrate=...) of the labels, one SL model each (default: none, "
        "the demo's labels until 2026-12-02)",
    )
    parser.add_argument("--es-finetune", action="store_true", help="also ES-fine-tune SL")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu/demo_teacher"))
    args = parser.parse_args(argv)
    sl_epochs = tuple(args.sl_epochs) if args.sl_epochs else None
    for epochs in args.teacher_epochs:
        record = run(
            epochs,
            epochs in args.distil,
            args.out,
            args.es_finetune,
            sl_epochs,
            args.seed,
            None if args.no_grid_embedding else "grid",
            args.sign_flip,
            tuple(None if c == "none" else c for c in args.calibrate),
        )
        for model, r in record.items():
            if model != "config":
                print(
                    f"seed {args.seed}, teacher {epochs} epochs, {model}: ED ratio at t = "
                    f"{r['times']}: {r['ed_ratio']}, std error {r['std_rel_error']}, "
                    f"spectrum error {r['spectrum_error']}, train {r['train_seconds']} s",
                    flush=True,
                )


if __name__ == "__main__":
    torch.manual_seed(0)  # nothing draws from it; the demo's pieces seed themselves
    main()
