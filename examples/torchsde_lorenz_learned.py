"""Stochastic Lorenz-63 with torchsde: an ensemble from one state, summarised over time.

A plain torchsde script, in the style of torchsde's README. It has a twin,
``examples/torchsde_lorenz_learned.py``: the same file with two lines changed, the import
of ``sdeint`` and the first argument of its call, where the SDE object becomes the file
of a trained Stochastic Lifting stepper (one network call per 0.05 time units, where
torchsde takes 50 Euler steps). ``diff examples/torchsde_lorenz_solver.py
examples/torchsde_lorenz_learned.py`` shows the change; tests/test_torchsde_dropin.py
checks that nothing else differs and that the two ensembles agree. The learned script
reads ``lorenz_sl.pt`` in the working directory; write it first with
``python examples/replace_sdeint_lorenz.py --save lorenz_sl.pt`` (a few minutes).

    python examples/torchsde_lorenz_solver.py
    python examples/torchsde_lorenz_learned.py
    LORENZ_BATCH=200 LORENZ_T=1 python examples/torchsde_lorenz_solver.py  # a smaller run
"""

# ruff: noqa: I001 (the learned twin swaps the sdeint import in place: line for line)
import os

import torch
import torchsde
from slift_plugin.adapters.torchsde import sdeint  # was: from torchsde import sdeint

batch_size, state_size = int(os.environ.get("LORENZ_BATCH", "1000")), 3
t_end = float(os.environ.get("LORENZ_T", "2"))
t_size = round(t_end / 0.05) + 1  # one output every 0.05 time units


class StochasticLorenz(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, s=10.0, r=28.0, b=8 / 3, noise=1.0):
        super().__init__()
        self.s, self.r, self.b, self.noise = s, r, b, noise

    # Drift
    def f(self, t, y):
        x1, x2, x3 = y.unbind(dim=1)
        dx = (self.s * (x2 - x1), x1 * (self.r - x3) - x2, x1 * x2 - self.b * x3)
        return torch.stack(dx, dim=1)  # shape (batch_size, state_size)

    # Diffusion
    def g(self, t, y):
        return torch.full_like(y, self.noise)  # shape (batch_size, state_size)


sde = StochasticLorenz()
y0 = torch.tensor([13.79, 12.95, 34.90]).repeat(batch_size, 1)  # a point on the attractor
ts = torch.linspace(0, t_end, t_size)
bm = torchsde.BrownianInterval(t0=0.0, t1=t_end, size=(batch_size, state_size), entropy=1, dt=1e-3)
with torch.no_grad():
    ys = sdeint("lorenz_sl.pt", y0, ts, method="euler", dt=1e-3, bm=bm)  # (t_size, batch_size, 3)

print(f"{batch_size} paths of stochastic Lorenz-63 from", [round(v, 2) for v in y0[0].tolist()])
print("    t   mean x   mean y   mean z    std x    std y    std z")
for k in range(0, t_size, max(1, (t_size - 1) // 4)):
    mean, std = ys[k].mean(dim=0).tolist(), ys[k].std(dim=0).tolist()
    print(f"{float(ts[k]):5.2f}" + "".join(f"{v:9.3f}" for v in mean + std))
