"""An FNO trained the neuraloperator way on stochastic Allen-Cahn, made stochastic.

This is a plain neuraloperator script (FNO, dict DataLoader, LpLoss, ``Trainer``). The
lines marked ``# SL:`` are the only differences from the deterministic version: wrap the
model, wrap the dataset, and sample ensembles with ``rollout``.

    python examples/fno_allen_cahn.py            # full run (a few minutes on 2 cores)
    python examples/fno_allen_cahn.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import warnings

import torch
from neuralop import LpLoss, Trainer
from neuralop.models import FNO
from torch.utils.data import DataLoader

from slift_plugin import TransitionDataset, WithFixedLabels, evaluate, rollout
from slift_plugin.adapters.neuralop import lift
from slift_plugin.systems import allen_cahn


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    n_train, n_test, n_gen = (16, 8, 32) if quick else (128, 32, 256)
    epochs = args.epochs or (3 if quick else 100)
    n_steps = 6 if quick else 20
    torch.manual_seed(0)

    # Data: trajectories of the stochastic Allen-Cahn SPDE, as (x_k, x_{k+1}) dict pairs.
    train_data = allen_cahn(n_samples=n_train, n_steps=n_steps, seed=0)
    test_data = allen_cahn(n_samples=n_test, n_steps=n_steps, seed=1)
    train_pairs = TransitionDataset.from_xarray(train_data)  # items {"x", "y"}
    test_pairs = TransitionDataset.from_xarray(test_data)

    model = FNO(n_modes=(16,), in_channels=1, out_channels=1, hidden_channels=32, n_layers=4)
    model = lift(model, label_dim=32, dt=0.4)  # SL: same FNO, input widened for the label
    labels = model.fixed_labels(seed=0, grid_shape=(128,))  # SL: one fixed label per pair
    train_pairs = WithFixedLabels(train_pairs, labels)  # SL: items gain "label"
    test_pairs = WithFixedLabels(test_pairs, model.fixed_labels(seed=1, grid_shape=(128,)))  # SL
    model.prepare(train_pairs)  # SL: per-channel normalisation, stored in the model

    shuffle = torch.Generator().manual_seed(0)
    train_loader = DataLoader(train_pairs, batch_size=64, shuffle=True, generator=shuffle)
    test_loader = DataLoader(test_pairs, batch_size=256)
    l2loss = LpLoss(d=1, p=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    trainer = Trainer(
        model=model, n_epochs=epochs, device="cpu", eval_interval=max(1, epochs // 5), verbose=True
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unexpected keyword arguments.*")
        trainer.train(
            train_loader,
            {"test": test_loader},
            optimizer,
            scheduler,
            training_loss=l2loss,
            eval_losses={"l2": l2loss},
        )

    # SL: fresh labels at every step give an ensemble; score it against a reference.
    reference = allen_cahn(n_samples=2 * n_gen, n_steps=n_steps, seed=2)
    generated = rollout(
        model,
        reference.isel(sample=0, time=0),
        n_steps,
        n_gen,
        seed=3,  # SL
        coords={"x": reference["x"].values},
    )
    scores = evaluate(generated, reference)
    print(scores[["ed_ratio", "mean_rel_error", "std_rel_error"]].to_dataframe().round(3))
    return {"final_ed_ratio": float(scores["ed_ratio"].isel(time=-1))}


if __name__ == "__main__":
    main()
