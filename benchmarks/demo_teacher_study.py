"""Does a better teacher make a better coupled SL model? (issue 11, the demo's bar).

The demo's SL-FNO distils a flow-matching teacher (60 epochs, half the models' budget).
On Allen-Cahn the bench found coupled SL within 5% of its teacher at every horizon, so the
teacher may bound it. This trains the demo's teacher for each of ``--teacher-epochs``,
scores the teacher itself (CFM, ``inversion_steps`` Euler steps, the demo's rollout seed
and reference), and, for each of ``--distil``, inverts it and trains the demo's SL-FNO on
the coupled labels. With ``--es-finetune``, each distilled model is then fine-tuned with
the energy score as the recipe study does it (``EnergyScoreLifting`` on a copy of its
backbone, 30% of the epochs at a quarter of the learning rate, 2 members, fresh noise on
the plain transitions) and scored again. Everything else is the demo's
(``slift_plugin.demo.DemoConfig``).

    OMP_NUM_THREADS=2 python benchmarks/demo_teacher_study.py --teacher-epochs 60 120 \\
        --distil 120
    OMP_NUM_THREADS=2 python benchmarks/demo_teacher_study.py --teacher-epochs 60 \\
        --distil 60 --es-finetune

Results: one JSON per run in ``--out`` (default ``benchmarks/results/cpu/demo_teacher``)
and a table on stdout: the ED ratio at the demo's horizons (t = 2, 4, 8).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

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


def run(teacher_epochs: int, distil: bool, out: Path, es_finetune: bool = False) -> dict:
    cfg = DemoConfig(teacher_epochs=teacher_epochs)
    common = dict(n_steps=cfg.n_steps, dt=cfg.dt, n_grid=cfg.n_grid)
    train = allen_cahn(n_samples=cfg.n_train, seed=cfg.seed, **common)
    reference = allen_cahn(n_samples=2 * cfg.n_generate, seed=cfg.seed + 1, **common)
    transitions = TransitionDataset.from_xarray(train)
    teacher = _teacher(cfg)
    fitted = _fit(cfg, teacher, transitions, "teacher (CFM)", cfg.teacher_epochs)
    record = {
        "config": asdict(cfg),
        "teacher": scored(cfg, teacher, reference)
        | {"train_seconds": round(fitted.wall_time, 1), "train_loss": fitted.final_loss},
    }
    if distil:
        labels = teacher_labels(teacher, transitions, n_steps=cfg.inversion_steps)
        sl = StochasticLifting(_fno(cfg, label_dim=1), (1, None), dt=cfg.dt)
        result = _fit(
            cfg, sl, TransitionDataset.from_xarray(train, labels=labels), "SL", cfg.epochs
        )
        record["sl"] = scored(cfg, sl, reference) | {
            "train_seconds": round(result.wall_time, 1),
            "train_loss": result.final_loss,
        }
        if es_finetune:
            record["sl+es"] = finetuned(cfg, sl, train, reference)
    out.mkdir(parents=True, exist_ok=True)
    name = f"teacher{teacher_epochs}" + ("-es" if es_finetune else "")
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-epochs", type=int, nargs="+", default=[60, 120])
    parser.add_argument(
        "--distil", type=int, nargs="*", default=[120], help="teacher epochs to distil into SL"
    )
    parser.add_argument("--es-finetune", action="store_true", help="also ES-fine-tune SL")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu/demo_teacher"))
    args = parser.parse_args(argv)
    for epochs in args.teacher_epochs:
        record = run(epochs, epochs in args.distil, args.out, args.es_finetune)
        for model in ("teacher", "sl", "sl+es"):
            if model in record:
                r = record[model]
                print(
                    f"teacher {epochs} epochs, {model}: ED ratio at t = {r['times']}: "
                    f"{r['ed_ratio']}, std error {r['std_rel_error']}, "
                    f"train {r['train_seconds']} s",
                    flush=True,
                )


if __name__ == "__main__":
    torch.manual_seed(0)  # nothing draws from it; the demo's pieces seed themselves
    main()
