"""The main job: Stochastic Lifting vs plain MSE on the stochastic Allen-Cahn equation.

1. generate training trajectories and a held-out reference ensemble, both from ``u0 = 0``
   (random nucleation of +1/-1 domains, see :mod:`slift_plugin.systems.allen_cahn`);
2. train an SL-FNO with coupled labels and the same FNO with plain MSE (no labels), same
   budget. The labels come from a flow-matching FNO teacher of the same budget, run
   backwards from every training transition (:func:`slift_plugin.teacher_labels`): the
   recommended one-evaluation stepper of BENCHMARKS.md;
3. roll both out, evaluate against the reference, print a table;
4. write ensembles (netCDF), metrics (CSV, JSON), checkpoints and a figure to ``out``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from .checkpoint import save_stepper
from .data import TransitionDataset, atomic_write, save_netcdf
from .labels import StoredLabels
from .methods import FlowMatching, MeanRegression, StochasticLifting, teacher_labels
from .metrics import evaluate
from .rollout import rollout
from .systems import allen_cahn
from .train import fit

__all__ = ["HORIZON_FRACTIONS", "DemoConfig", "run_demo", "summary_table"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (the defaults: README.md gives their wall time on a 2-core CPU).

    Attributes
    ----------
    n_train : int
        Training trajectories (``n_steps`` transitions each).
    n_generate : int
        Generated trajectories per model; the reference ensemble has twice as many.
    n_steps : int
        Output steps per trajectory.
    dt : float
        Output step of the Allen-Cahn data.
    n_grid : int
        Grid cells.
    inversion_steps : int
        Euler steps of the teacher's backward flow that gives the SL labels.
    label_calibration : str or None
        ``calibrate`` of :func:`slift_plugin.teacher_labels`. ``"fourier"`` rescales every
        Fourier mode of the labels to unit power: the 20 Euler steps contract them to
        0.85-0.94 by mode, and SL sampled with unit noise then comes out too rough (seed 0:
        spectrum error 0.080 without, 0.028 with; a solver ensemble: 0.028).
    teacher_epochs : int
        Training epochs of the flow-matching teacher. The teacher bounds the student on
        this field: with 30, 60 and 90 teacher epochs the SL model's ED ratio at t = 8 is
        2.27, 1.62 and 1.38 (seed 0). With 90, ``make demo`` takes 8.2 minutes on 2
        cores, the teacher about 65% of it (319 s of 494 s, measured 2026-12-02;
        ``benchmarks/demo_teacher_study.py``, BENCHMARKS.md).
    hidden_channels, n_modes, n_layers : int
        FNO width, Fourier modes and layers (the same for the teacher, SL and MSE).
        ``n_modes`` counts as neuraloperator does (``n_modes // 2 + 1`` real-FFT modes),
        so 128 keeps every mode of the 128-cell grid: the label is a white noise field
        and the model must shape it at every wavenumber. With 16 (9 modes) the spectrum
        error of the SL ensemble was 0.42, with 128 it is 0.073 (a solver ensemble:
        0.028), at about the same ED ratio and up to 1.3x the training time
        (``benchmarks/demo_rollout_loss_study.py``, BENCHMARKS.md).
    positional_embedding : str or None
        neuraloperator's ``positional_embedding`` of every FNO. Its default, ``"grid"``,
        appends the cell coordinates as input channels, and the FNO then learns the
        chance spatial pattern of the 128 training trajectories (mean error 9-17% of the
        reference spread). None keeps the FNO equivariant under shifts of the periodic
        grid, right for this homogeneous field: the SL model's ED ratio went from
        1.26 / 1.68 / 2.10 to 0.90 / 1.19 / 1.62 at the same budget (seed 0).
    epochs, batch_size : int
        Training budget of the SL and MSE models. 30 epochs are within 1-5% of 60 for
        SL (BENCHMARKS.md); the teacher is where training time pays.
    lr : float
        Peak learning rate.
    seed : int
        Seeds the data, the weight initialisation, the training and the rollouts.
    threads : int or None
        CPU threads torch uses during the demo; None keeps torch's own setting (which
        honours ``OMP_NUM_THREADS``), so a shared machine is not oversubscribed.
    """

    n_train: int = 128  # training trajectories (20 transitions each)
    n_generate: int = 256  # generated trajectories per model
    n_steps: int = 20
    dt: float = 0.4
    n_grid: int = 128
    inversion_steps: int = 20
    label_calibration: str | None = "fourier"
    teacher_epochs: int = 90
    hidden_channels: int = 32
    n_modes: int = 128
    n_layers: int = 4
    positional_embedding: str | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    threads: int | None = None

    @classmethod
    def quick(cls) -> DemoConfig:
        """A CI-sized run (well under a minute): same pipeline, tiny sizes.

        Returns
        -------
        DemoConfig
            The tiny configuration.
        """
        return cls(
            n_train=16,
            n_generate=32,
            n_steps=6,
            hidden_channels=8,
            n_modes=8,
            n_layers=2,
            inversion_steps=4,
            teacher_epochs=2,
            epochs=3,
            batch_size=32,
        )


def _fno(cfg: DemoConfig, **kwargs: int) -> torch.nn.Module:
    """The demo's FNO backbone, seeded; labels enter as a noise field of the state's shape."""
    from .adapters.neuralop import lifted_operator

    with torch.random.fork_rng():  # seeded weight init, global RNG left as it was
        torch.manual_seed(cfg.seed)
        return lifted_operator(
            "fno",
            state_channels=1,
            injection="noise_field",
            n_modes=(cfg.n_modes,),
            hidden_channels=cfg.hidden_channels,
            n_layers=cfg.n_layers,
            positional_embedding=cfg.positional_embedding,
            **kwargs,
        )


def _fit(cfg: DemoConfig, stepper, data: TransitionDataset, name: str, epochs: int):
    return fit(
        stepper,
        data,
        epochs=epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=0.0,
        seed=cfg.seed,
        description=f"fit {name}",
    )


def _teacher(cfg: DemoConfig) -> FlowMatching:
    """The untrained flow-matching teacher: the demo's FNO as a velocity ``v(z, x_k, s)``."""
    velocity = _fno(cfg, label_dim=0, history=2, n_cond=1)
    return FlowMatching(velocity, (1, None), n_euler=cfg.inversion_steps, dt=cfg.dt)


def _coupled_labels(cfg: DemoConfig, train: xr.DataArray) -> tuple[StoredLabels, float]:
    """Train the flow-matching teacher and invert it on every training transition."""
    started = time.perf_counter()
    transitions = TransitionDataset.from_xarray(train)
    teacher = _teacher(cfg)
    _fit(cfg, teacher, transitions, "teacher (CFM)", cfg.teacher_epochs)
    labels = teacher_labels(
        teacher, transitions, n_steps=cfg.inversion_steps, calibrate=cfg.label_calibration
    )
    return labels, time.perf_counter() - started


HORIZON_FRACTIONS = (0.25, 0.5, 1.0)


def summary_table(metrics: dict[str, xr.Dataset], losses: dict[str, float]) -> pd.DataFrame:
    """ED ratio and mean/std errors at a few horizons, with the final training loss.

    Parameters
    ----------
    metrics : dict of str to xarray.Dataset
        :func:`slift_plugin.evaluate` results per model name, over the same times.
    losses : dict of str to float
        Final training loss per model name.

    Returns
    -------
    pandas.DataFrame
        One row per model and horizon (the steps at :data:`HORIZON_FRACTIONS` of the
        rollout): ``model``, ``step``, ``time``, ``ed_ratio``, ``mean_rel_error``,
        ``std_rel_error``, ``train_loss``.
    """
    rows = []
    first = next(iter(metrics.values()))
    n = first.sizes["time"] - 1
    picks = sorted({max(1, round(f * n)) for f in HORIZON_FRACTIONS})
    for name, m in metrics.items():
        for k in picks:
            sel = m.isel(time=k)
            rows.append(
                {
                    "model": name,
                    "step": k,
                    "time": float(sel["time"]),
                    "ed_ratio": float(sel["ed_ratio"]),
                    "mean_rel_error": float(sel["mean_rel_error"]),
                    "std_rel_error": float(sel["std_rel_error"]),
                    "train_loss": losses[name],
                }
            )
    return pd.DataFrame(rows)


def run_demo(out: str | os.PathLike = "demo_output", cfg: DemoConfig | None = None) -> pd.DataFrame:
    """Run the whole demo (see the module docstring).

    Parameters
    ----------
    out : str or os.PathLike
        Output folder for ensembles, metrics, checkpoints and the figure; created.
    cfg : DemoConfig or None
        Sizes; None uses the defaults.

    Returns
    -------
    pandas.DataFrame
        The summary table of :func:`summary_table` (also written to ``out``).
    """
    cfg = cfg or DemoConfig()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(Path(out), cfg)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, cfg: DemoConfig) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stages = tqdm(total=4, desc="demo", unit="stage", position=0)

    stages.set_postfix_str("generating Allen-Cahn data")
    common = dict(n_steps=cfg.n_steps, dt=cfg.dt, n_grid=cfg.n_grid)
    train = allen_cahn(n_samples=cfg.n_train, seed=cfg.seed, **common)
    reference = allen_cahn(n_samples=2 * cfg.n_generate, seed=cfg.seed + 1, **common)
    stages.update()

    stages.set_postfix_str("training the teacher")
    labels, teacher_seconds = _coupled_labels(cfg, train)
    models, losses, train_time = {}, {}, {"teacher": teacher_seconds}
    for name, labelled in (("SL", True), ("MSE", False)):
        stages.set_postfix_str(f"training {name}")
        net = _fno(cfg, label_dim=1 if labelled else 0)
        stepper = (StochasticLifting if labelled else MeanRegression)(net, (1, None), dt=cfg.dt)
        ds = TransitionDataset.from_xarray(train, labels=labels if labelled else None)
        result = _fit(cfg, stepper, ds, name, cfg.epochs)
        models[name], losses[name], train_time[name] = stepper, result.final_loss, result.wall_time
        save_stepper(out / f"{name.lower()}.pt", stepper, config=asdict(cfg))
    stages.update()

    stages.set_postfix_str("generating ensembles")
    x0 = reference.isel(sample=0, time=0).values  # u0 = 0, shared by all samples
    coords = {"channel": reference["channel"].values, "x": reference["x"].values}
    generated, sample_time = {}, {}
    for name, stepper in models.items():
        t = time.perf_counter()
        generated[name] = rollout(
            stepper,
            x0,
            cfg.n_steps,
            cfg.n_generate,
            seed=cfg.seed + 2,
            coords=coords,
            t0=float(reference["time"][0]),
        )
        sample_time[name] = time.perf_counter() - t
    stages.update()

    stages.set_postfix_str("evaluating")
    metrics = {name: evaluate(ens, reference, seed=cfg.seed) for name, ens in generated.items()}
    table = summary_table(metrics, losses)
    save_netcdf(reference, out / "reference.nc")
    save_netcdf(train, out / "train.nc")
    for name, ens in generated.items():
        save_netcdf(ens, out / f"{name.lower()}.nc")
    per_time = pd.concat(
        [m.to_dataframe().reset_index().assign(model=name) for name, m in metrics.items()]
    )
    atomic_write(out / "metrics.csv", lambda p: per_time.to_csv(p, index=False))
    summary = {
        "config": asdict(cfg),
        "train_loss": losses,
        "train_seconds": train_time,
        "sample_seconds": sample_time,
        "horizons": table.to_dict(orient="records"),
        "total_seconds": time.perf_counter() - started,
    }
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    from .plotting import field_ensemble_figure

    field_ensemble_figure(
        reference,
        generated,
        metrics,
        out / "demo.png",
        title="Stochastic Allen-Cahn from u0 = 0: Stochastic Lifting vs MSE (same FNO)",
    )
    stages.update()
    stages.close()

    print(f"\nEnergy-distance ratio (1 = noise floor) and relative errors; outputs in {out}/")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"total {time.perf_counter() - started:.0f} s")
    return table
