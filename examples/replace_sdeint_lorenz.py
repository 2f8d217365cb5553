"""Replace ``torchsde.sdeint`` by a learned Stochastic Lifting stepper: stochastic Lorenz-63.

A plain torchsde script integrates stochastic Lorenz-63 at ``dt = 1e-3``. It keeps one
state every 0.05 time units, so there are 50 internal steps per output step. Here an SL
stepper is trained once on such coarse transitions. The script's integration function
then runs with ``slift_plugin.adapters.torchsde.sdeint`` instead of ``torchsde.sdeint``
(the one-line change marked below), at one network evaluation per output step. Both
ensembles start from the same state. They are compared per time (energy distance against
the noise floor of two reference halves), with marginal histograms and the autocorrelation
of x(t), and the wall times of both are measured in the same run.

    python examples/replace_sdeint_lorenz.py            # full run (a few minutes on 2 cores)
    python examples/replace_sdeint_lorenz.py --quick    # CI smoke run
    python examples/replace_sdeint_lorenz.py --save lorenz_sl.pt  # also keep the stepper

``--save`` writes the trained stepper as a self-describing checkpoint
(:func:`slift_plugin.save_stepper`), the file that ``examples/torchsde_lorenz_learned.py``
passes to ``sdeint`` in place of the SDE object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchsde  # noqa: E402

from slift_plugin import (  # noqa: E402
    MLP,
    FitResult,
    StochasticLifting,
    TransitionDataset,
    evaluate,
    fit,
    save_stepper,
)
from slift_plugin.data import tensor_to_ensemble  # noqa: E402
from slift_plugin.systems import Lorenz63SDE, lorenz63  # noqa: E402
from slift_plugin.systems.sdes import LORENZ63_X0  # noqa: E402

DT_INTERNAL, DT_OUT = 1e-3, 0.05
FULL = dict(n_train=256, train_steps=200, epochs=150, n_samples=2000, n_steps=100)
QUICK = dict(n_train=32, train_steps=40, epochs=3, n_samples=200, n_steps=20)


def integrate(sdeint, sde, y0, ts, seed):
    """The user's existing code: unchanged whichever sdeint it is given."""
    bm = torchsde.BrownianInterval(
        t0=float(ts[0]), t1=float(ts[-1]), size=y0.shape, entropy=seed, dt=DT_INTERNAL
    )
    return sdeint(sde, y0, ts, bm=bm, method="euler", dt=DT_INTERNAL)


def train_stepper(
    n_train: int, train_steps: int, epochs: int, *, hidden: int = 256, depth: int = 3
) -> tuple[StochasticLifting, FitResult]:
    """Train SL once on coarse transitions of stochastic Lorenz-63 (50 solver steps each).

    Parameters
    ----------
    n_train, train_steps : int
        Trajectories of the training ensemble and output steps of ``DT_OUT`` in each.
    epochs : int
        Passes over the transitions.
    hidden, depth : int
        Width and depth of the MLP.

    Returns
    -------
    stepper : StochasticLifting
        The trained stepper, ``dt = DT_OUT``.
    trained : FitResult
        What :func:`slift_plugin.fit` reports.
    """
    data = lorenz63(n_samples=n_train, n_steps=train_steps, dt=DT_OUT, seed=0)
    torch.manual_seed(0)
    mlp = MLP(3, 3, label_dim=32, hidden=hidden, depth=depth)
    stepper = StochasticLifting(mlp, (3,), dt=DT_OUT)
    ds = TransitionDataset.from_xarray(data, labels=stepper.fixed_labels(seed=0))
    trained = fit(
        stepper,
        ds,
        epochs=epochs,
        batch_size=256,
        lr=2e-3,
        weight_decay=0.0,
        description="fit SL",
    )
    return stepper, trained


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Ensemble autocorrelation of x(t) over the second half of the run, per lag."""
    x = x[:, x.shape[1] // 2 :]
    x = (x - x.mean()) / x.std()
    return np.array([np.mean(x[:, : x.shape[1] - lag] * x[:, lag:]) for lag in range(max_lag)])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="lorenz_output")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's own setting)"
    )
    parser.add_argument(
        "--save", default=None, help="write the trained stepper to this checkpoint file"
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    stepper, trained = train_stepper(cfg["n_train"], cfg["train_steps"], cfg["epochs"])
    if args.save is not None:
        save_stepper(args.save, stepper)

    n, ts = cfg["n_samples"], DT_OUT * torch.arange(cfg["n_steps"] + 1)
    y0 = torch.tensor(LORENZ63_X0, dtype=torch.float32).expand(2 * n, 3).contiguous()

    start = time.perf_counter()
    reference = integrate(torchsde.sdeint, Lorenz63SDE(), y0, ts, seed=1)  # 2n: two halves
    torchsde_seconds = time.perf_counter() - start

    from slift_plugin.adapters.torchsde import sdeint  # <- the one-line change

    start = time.perf_counter()
    learned = integrate(sdeint, stepper, y0[:n], ts, seed=2)
    slift_seconds = time.perf_counter() - start
    ref_seconds_same_size = torchsde_seconds / 2  # torchsde cost is linear in the batch

    coords = {"channel": ["x", "y", "z"]}
    ref_ens = tensor_to_ensemble(reference.transpose(0, 1), ts.numpy(), coords=coords)
    sl_ens = tensor_to_ensemble(learned.transpose(0, 1), ts.numpy(), coords=coords)
    scores = evaluate(sl_ens, ref_ens, seed=0)
    max_lag = min(40, cfg["n_steps"] // 2)
    acf_ref = autocorrelation(ref_ens.sel(channel="x").values, max_lag)
    acf_sl = autocorrelation(sl_ens.sel(channel="x").values, max_lag)

    picks = [k for k in (1, 5, 10, 20, 50, 100) if k <= cfg["n_steps"]]
    print(f"\n{'':24s}{'torchsde (dt=1e-3)':>20s}{'slift SL (dt=0.05)':>20s}")
    print(f"{'evaluations / output step':24s}{'50 drift+diffusion':>20s}{'1 MLP':>20s}")
    print(f"{'wall time, n=' + str(n):24s}{ref_seconds_same_size:>19.3f}s{slift_seconds:>19.3f}s")
    print(f"{'speed-up':24s}{'':>20s}{ref_seconds_same_size / slift_seconds:>19.1f}x")
    print("\n  time   energy distance   noise floor   ratio")
    for k in picks:
        s = scores.isel(time=k)
        print(
            f"{float(s.time):6.2f}   {float(s.energy_distance):15.4g}   "
            f"{float(s.noise_floor):11.4g}   {float(s.ed_ratio):5.2f}"
        )
    summary = {
        "train_seconds": trained.wall_time,
        "final_train_loss": trained.final_loss,
        "torchsde_seconds": ref_seconds_same_size,
        "slift_seconds": slift_seconds,
        "speedup": ref_seconds_same_size / slift_seconds,
        "ed_ratio": {f"{float(scores.time[k]):.2f}": float(scores.ed_ratio[k]) for k in picks},
        "ed_ratio_median": float(np.nanmedian(scores.ed_ratio[1:])),
        "acf_max_abs_diff": float(np.abs(acf_ref - acf_sl).max()),
    }
    print(json.dumps(summary, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(ref_ens, sl_ens, acf_ref, acf_sl, out / "lorenz.png")
    return summary


def plot(ref, sl, acf_ref, acf_sl, path):
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), layout="constrained")
    late = slice(ref.sizes["time"] // 2, None)
    for ax, ch in zip(axes[:3], ("x", "y", "z"), strict=True):
        r = ref.sel(channel=ch).isel(time=late).values.ravel()
        s = sl.sel(channel=ch).isel(time=late).values.ravel()
        bins = np.linspace(min(r.min(), s.min()), max(r.max(), s.max()), 60)
        ax.hist(r, bins, density=True, histtype="step", color="k", lw=2, label="torchsde")
        ax.hist(s, bins, density=True, histtype="step", label="slift SL")
        ax.set(title=f"marginal of {ch} (second half)", xlabel=ch)
    lags = DT_OUT * np.arange(len(acf_ref))
    axes[3].plot(lags, acf_ref, "k-", lw=2, label="torchsde")
    axes[3].plot(lags, acf_sl, "o-", ms=3, label="slift SL")
    axes[3].set(title="autocorrelation of x(t)", xlabel="lag")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
