"""Count what one SL step must do: FLOPs and device-memory bytes of the default backbones.

The roofline floor of a step is ``max(FLOPs / peak rate, bytes / bandwidth)``, with the
fewest bytes a step must move: the weights, the input window and the label read once, the
next state written once. No implementation runs faster. The script also counts the bytes
an eager (unfused) step moves, every operator reading its inputs and writing its outputs,
which is what PyTorch without fusion pays; the gap between the two is what fusion (e.g.
``torch.compile``) could win. Rates are arguments, not measurements: pass the ceilings you
measured on the device (a large copy for the bandwidth, a large matmul for the rate).

FLOPs: ``torch.utils.flop_counter`` counts matmuls and convolutions; FFTs are not in it
and are added as ``5 N log2 N`` real FLOPs per complex transform of length ``N`` (2.5 for
a real one).

    # H100 SXM datasheet rates (TF32 dense 4.9e14 FLOP/s, HBM3 3.35e12 B/s), not measured:
    python benchmarks/backbone_floor.py --flops 4.9e14 --bandwidth 3.35e12
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from slift_plugin import MLP, StochasticLifting
from slift_plugin.adapters.neuralop import lifted_operator

FFT_OPS = {"_fft_r2c", "_fft_c2r", "_fft_c2c"}


class TrafficCounter(TorchDispatchMode):
    """Bytes read and written by every operator, and the FLOPs of the FFTs."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.fft_flops = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name in ("view", "_unsafe_view", "t", "transpose", "expand", "permute", "slice"):
            return out  # views move no data
        inputs = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        seen = {x.data_ptr() for x in inputs}
        for x in inputs:
            self.bytes += x.numel() * x.element_size()
        for y in tree_flatten(out)[0]:
            # an in-place or out= result is the input it overwrote: written, counted once
            if isinstance(y, torch.Tensor) and y.data_ptr() not in seen:
                self.bytes += y.numel() * y.element_size()
        if name in FFT_OPS:
            x = args[0]
            dims = args[1]
            n = math.prod(x.shape[d] for d in dims) if name != "_fft_c2r" else args[-1]
            batch = x.numel() // math.prod(x.shape[d] for d in dims)
            per = 5 * n * math.log2(max(n, 2))
            self.fft_flops += batch * per * (1.0 if name == "_fft_c2c" else 0.5)
        return out


def count(stepper: StochasticLifting, window: torch.Tensor, label: torch.Tensor) -> dict:
    stepper.eval()
    with torch.inference_mode():
        stepper.step(window, label)  # warm-up: lazy buffers stay out of the count
        with FlopCounterMode(display=False) as flops, TrafficCounter() as traffic:
            out = stepper.step(window, label)
    weights = sum(p.numel() * p.element_size() for p in stepper.parameters())
    io = sum(t.numel() * t.element_size() for t in (window, label, out))
    return {
        "batch": window.shape[0],
        "flops": flops.get_total_flops() + traffic.fft_flops,
        "bytes": weights + io,
        "eager_bytes": traffic.bytes,
        "parameters": sum(p.numel() for p in stepper.parameters()),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops", type=float, default=4.9e14, help="peak FLOP/s (fp32 or bf16)")
    parser.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s")
    parser.add_argument("--out", default=None, help="JSON file for the counts")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for batch in (4096, 65536):
        mlp = StochasticLifting(MLP(1, 1, label_dim=32, hidden=256), (1,))
        row = count(mlp, torch.randn(batch, 1), torch.randn(batch, 32))
        rows.append({"backbone": "MLP 256x3, label 32", **row})
    for batch in (256, 4096):
        net = lifted_operator(
            "fno", state_channels=1, label_dim=32, n_modes=(16,), hidden_channels=32, n_layers=4
        )
        fno = StochasticLifting(net, (1, None))
        row = count(fno, torch.randn(batch, 1, 128), torch.randn(batch, 32))
        rows.append({"backbone": "FNO 32ch x4, 16 modes, grid 128, label 32", **row})
    print(
        f"{'backbone':45s} {'batch':>6s} {'GFLOP':>8s} {'min MB':>8s} {'eager MB':>9s} "
        f"{'FLOP/B':>7s} {'floor us':>9s} {'bound':>7s} {'eager us':>9s} "
        f"{'floor traj-steps/s':>19s}"
    )
    for r in rows:
        t_flops, t_bytes = r["flops"] / args.flops, r["bytes"] / args.bandwidth
        r["floor_seconds"] = max(t_flops, t_bytes)
        r["bound"] = "memory" if t_bytes > t_flops else "compute"
        r["floor_traj_steps_per_second"] = r["batch"] / r["floor_seconds"]
        r["eager_seconds"] = max(t_flops, r["eager_bytes"] / args.bandwidth)
        print(
            f"{r['backbone']:45s} {r['batch']:6d} {r['flops'] / 1e9:8.3f} "
            f"{r['bytes'] / 1e6:8.2f} {r['eager_bytes'] / 1e6:9.1f} "
            f"{r['flops'] / r['bytes']:7.0f} {1e6 * r['floor_seconds']:9.1f} {r['bound']:>7s} "
            f"{1e6 * r['eager_seconds']:9.1f} {r['floor_traj_steps_per_second']:19.3g}"
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
