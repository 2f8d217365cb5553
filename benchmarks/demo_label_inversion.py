"""How should the teacher be inverted into SL labels? (issue 11, the spectrum score).

The demo's SL ensemble had the right ED ratio but a power spectrum 2.9x further from the
reference than a solver ensemble's, with too much power at fine scales. Explicit Euler
steps of the teacher's backward flow contract the labels, narrow (fine-scale) directions
most; SL then maps unit-variance labels to too wide a law. This trains the demo's teacher
once (cached in ``--cache``), inverts it with each of ``--variants``, prints the labels'
spread by Fourier mode, and trains and scores the demo's SL-FNO on each label set:

``u<K>``
    ``K`` uniform Euler steps (``teacher_labels(n_steps=K)``; the demo's labels until
    2026-12-02 are ``u20``);
``p2_<K>``
    ``K`` Euler steps on the flow-time grid ``s_i = 1 - (1 - i/K)^2``, denser near the data
    end where the velocity is stiffest for narrow modes (the library has no such grid;
    this measures whether one would be worth adding);
``w<K>``
    ``u<K>`` then every Fourier mode rescaled to unit power
    (``teacher_labels(n_steps=K, calibrate="fourier")``; the demo's labels now).

    OMP_NUM_THREADS=1 python benchmarks/demo_label_inversion.py u20 w20 p2_20 u160

Everything else is the demo's (``DemoConfig()``, seed 0). One JSON per variant in
``--out`` (default ``benchmarks/results/cpu/demo_calibration/inversion_variants``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from demo_teacher_study import distilled  # a sibling script

from slift_plugin import StoredLabels, TransitionDataset, teacher_labels
from slift_plugin.demo import DemoConfig, _fit, _teacher
from slift_plugin.methods import FlowMatching
from slift_plugin.systems import allen_cahn

REPORTED_MODES = [0, 1, 4, 16, 32, 48, 64]


def trained_teacher(cfg: DemoConfig, transitions: TransitionDataset, cache: Path) -> FlowMatching:
    """The demo's teacher, trained once and cached."""
    teacher = _teacher(cfg)
    path = cache / f"demo_teacher_seed{cfg.seed}_epochs{cfg.teacher_epochs}.pt"
    if path.exists():
        teacher.load_state_dict(torch.load(path, weights_only=True))
    else:
        _fit(cfg, teacher, transitions, "teacher (CFM)", cfg.teacher_epochs)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), path)
    return teacher


def squared_grid_labels(
    teacher: FlowMatching, transitions: TransitionDataset, n_steps: int
) -> StoredLabels:
    """Backward Euler on ``s_i = 1 - (1 - i/K)^2``, the velocity at each step's upper end.

    Uses the stepper's private flow helpers: the library's inversion has a uniform grid.
    """
    grid = 1 - (1 - torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)) ** 2
    parts = []
    teacher.eval()
    with torch.no_grad():
        for index in torch.arange(len(transitions)).split(1024):
            batch = transitions.get_batch(index)
            inputs, cond = teacher.standardized_inputs(batch["x"], batch.get("mu"))
            inputs_z, cond_s = teacher._flow_inputs(inputs, cond)
            z = inputs_z[:, -teacher.n_channels :]
            z.copy_(teacher.standardized_target(batch["x"], batch["y"]))
            for i in range(n_steps, 0, -1):
                cond_s[:, -1] = float(grid[i])
                step = float(grid[i] - grid[i - 1])
                z.add_(teacher._velocity(inputs_z, cond_s).mul_(-step))
            parts.append(z.clone())
    return StoredLabels(torch.cat(parts))


def labels_for(variant: str, teacher: FlowMatching, transitions: TransitionDataset):
    if variant.startswith("p2_"):
        return squared_grid_labels(teacher, transitions, int(variant[3:]))
    if variant[0] in "uw":
        calibrate = "fourier" if variant[0] == "w" else None
        return teacher_labels(teacher, transitions, n_steps=int(variant[1:]), calibrate=calibrate)
    raise ValueError(f"unknown variant {variant!r}: u<K>, w<K> or p2_<K>")


def spread_by_mode(labels: StoredLabels) -> list[float]:
    """Root mean power of every Fourier mode of the labels (white unit noise: 1)."""
    modes = torch.fft.rfft(labels.values.double().squeeze(1), dim=-1, norm="ortho")
    return modes.abs().pow(2).mean(0).sqrt().tolist()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="u<K>, w<K> or p2_<K>")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/slift_label_inversion_cache"))
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/cpu/demo_calibration/inversion_variants"),
    )
    args = parser.parse_args(argv)
    cfg = DemoConfig(label_calibration=None)  # each variant sets its own labels
    sizes = dict(n_steps=cfg.n_steps, dt=cfg.dt, n_grid=cfg.n_grid)
    train = allen_cahn(n_samples=cfg.n_train, seed=cfg.seed, **sizes)
    reference = allen_cahn(n_samples=2 * cfg.n_generate, seed=cfg.seed + 1, **sizes)
    transitions = TransitionDataset.from_xarray(train)
    teacher = trained_teacher(cfg, transitions, args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        started = time.perf_counter()
        labels = labels_for(variant, teacher, transitions)
        spread = spread_by_mode(labels)
        record = {
            "variant": variant,
            "inversion_seconds": time.perf_counter() - started,
            "label_std_by_mode": [round(v, 3) for v in spread],
        }
        record |= distilled(cfg, train, labels, reference, "sl")
        record.pop("_model")
        (args.out / f"{variant}.json").write_text(json.dumps(record, indent=1))
        shown = {k: round(spread[k], 3) for k in REPORTED_MODES}
        print(f"{variant}: label spread by mode {shown}; SL {record['sl']}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
