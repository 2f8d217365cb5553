"""An FNO on stochastic Allen-Cahn, in neuraloperator's documented style, two ways.

``neuralop_trainer_deterministic.py`` is the script a neuraloperator user already has:
``TensorDataset`` of ``{"x", "y"}`` pairs, a ``DefaultDataProcessor`` with
``UnitGaussianNormalizer``s, ``FNO``, ``AdamW``, ``H1Loss``/``LpLoss`` and ``Trainer``
with ``save_every``/``resume_from_dir``. ``neuralop_trainer_sl.py`` is the same script
made stochastic by three added lines: the import, ``lift`` and ``rollout`` (README,
"Fields with neuraloperator"; ``tests/test_neuralop_dropin.py`` counts them). There,
``ensemble`` holds 256 diverse trajectories from u = 0, in physical units.

    python examples/neuralop_trainer_deterministic.py --quick
    python examples/neuralop_trainer_sl.py --quick
"""

import argparse
import os

import torch
from neuralop import H1Loss, LpLoss, Trainer
from neuralop.data.datasets.tensor_dataset import TensorDataset
from neuralop.data.transforms.data_processors import DefaultDataProcessor
from neuralop.data.transforms.normalizers import UnitGaussianNormalizer
from neuralop.models import FNO
from torch.utils.data import DataLoader

from slift_plugin.systems import allen_cahn  # the simulator that made the training data


def transition_pairs(n_samples, n_steps, seed):
    """(x_k, x_{k+1}) pairs of stochastic Allen-Cahn trajectories, each (N, 1, 128)."""
    states = torch.as_tensor(allen_cahn(n_samples, n_steps, DT, seed=seed).values)
    return states[:, :-1].flatten(0, 1), states[:, 1:].flatten(0, 1)


parser = argparse.ArgumentParser(description="FNO on stochastic Allen-Cahn")
parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
parser.add_argument("--save-dir", default="neuralop_ckpt", help="checkpoints (save_every)")
parser.add_argument("--resume", action="store_true", help="resume from --save-dir")
parser.add_argument("--epochs", type=int, default=None, help="default: 3 quick, 100 full")
args, _ = parser.parse_known_args()
DT, N_STEPS = 0.4, 20
N_TRAIN, N_TEST, EPOCHS = (16, 4, 3) if args.quick else (128, 16, 100)
EPOCHS = args.epochs or EPOCHS
torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"

train_x, train_y = transition_pairs(N_TRAIN, N_STEPS, seed=0)
test_x, test_y = transition_pairs(N_TEST, N_STEPS, seed=1)
in_normalizer = UnitGaussianNormalizer(dim=[0, 2])
out_normalizer = UnitGaussianNormalizer(dim=[0, 2])
in_normalizer.fit(train_x)
out_normalizer.fit(train_y)
data_processor = DefaultDataProcessor(in_normalizer, out_normalizer).to(device)
train_loader = DataLoader(TensorDataset(train_x, train_y), batch_size=64, shuffle=True)
test_loaders = {"128": DataLoader(TensorDataset(test_x, test_y), batch_size=64)}

model = FNO(n_modes=(16,), in_channels=1, out_channels=1, hidden_channels=32, n_layers=4)
model = model.to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
l2loss = LpLoss(d=1, p=2)
h1loss = H1Loss(d=1)

trainer = Trainer(
    model=model,
    n_epochs=EPOCHS,
    device=device,
    data_processor=data_processor,
    eval_interval=max(1, EPOCHS // 5),
    verbose=True,
)
metrics = trainer.train(
    train_loader=train_loader,
    test_loaders=test_loaders,
    optimizer=optimizer,
    scheduler=scheduler,
    regularizer=False,
    training_loss=h1loss,
    eval_losses={"h1": h1loss, "l2": l2loss},
    save_every=1,
    save_dir=args.save_dir,
    resume_from_dir=args.save_dir if args.resume else None,
)
print({name: round(float(value), 4) for name, value in metrics.items() if value is not None})
print("checkpoints in", os.path.abspath(args.save_dir))
