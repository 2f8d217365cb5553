"""Worker of tests/test_distributed.py: data-parallel fit() and sharded rollout() on CPU.

Run under torchrun (pytest does not collect this file)::

    python -m torch.distributed.run --nproc_per_node=2 --standalone \\
        tests/torchrun_worker.py OUT_DIR [training | failures | nccl]

``training`` (the default) runs fit() and rollout() scenarios; ``failures`` runs blocks of
:func:`slift_plugin.distributed.fail_together` in which ranks raise, sleep or time out, in
a launch of their own so that a hang there cannot take the other scenarios with it;
``nccl`` (one GPU per rank) gathers rows and fails together over NCCL.

Every rank writes ``OUT_DIR/rank{r}.pt`` (tensors, lists and strings only, readable with
``weights_only=True``). A scenario that raises records its traceback under ``errors``
instead, so the test names the scenario that broke. The problem builders are imported by
the test to compute the single-process references with the very same code.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from conftest import interrupt_fit

from slift_plugin import (
    DICE,
    MLP,
    EnergyScoreLifting,
    FitResult,
    FlowMatching,
    PotentialMLP,
    SnapshotDataset,
    StochasticLifting,
    TransitionDataset,
    WithFixedLabels,
    fit,
    rollout,
)
from slift_plugin import store as store_module
from slift_plugin import train as train_module
from slift_plugin.checkpoint import tensor_state
from slift_plugin.distributed import (
    all_gather_rows,
    barrier,
    fail_together,
    init_from_env,
    is_main_process,
    shard_bounds,
    world,
)
from slift_plugin.systems import ornstein_uhlenbeck

FIT = dict(epochs=3, batch_size=32, lr=3e-3, weight_decay=0.0, seed=5, progress=False)
RESUME = dict(FIT, epochs=4, checkpoint_every=2)
STOP_AFTER_EPOCHS = 3  # the interrupted run dies inside epoch 4, after checkpoint 2
ROLLOUT = dict(n_steps=4, n_samples=700, seed=3, chunk_size=256)  # 700: uneven seed blocks


def ou_ensemble(n_traj: int, n_steps: int):
    return ornstein_uhlenbeck(n_samples=n_traj, n_steps=n_steps, dt=0.1, dt_internal=0.01, seed=0)


def sl_stepper() -> StochasticLifting:
    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway; this is for the reference
    return StochasticLifting(MLP(1, 1, label_dim=8, hidden=32, depth=2), (1,), dt=0.1)


def sl_problem() -> tuple[StochasticLifting, TransitionDataset]:
    """111 transitions: 3 full batches of 32, then 15, split 8 + 7 over two ranks."""
    sl = sl_stepper()
    return sl, TransitionDataset.from_xarray(ou_ensemble(37, 3), labels=sl.fixed_labels(0))


def generic_problem() -> tuple[StochasticLifting, WithFixedLabels]:
    """DataLoader path with 33 transitions: the last batch has one example for two ranks."""
    sl = sl_stepper()
    data = WithFixedLabels(TransitionDataset.from_xarray(ou_ensemble(33, 1)), sl.fixed_labels(0))
    return sl, data


def cfm_problem() -> tuple[FlowMatching, TransitionDataset]:
    """sl_problem's transitions (uneven last batch): z_0 and s are drawn per example index."""
    torch.manual_seed(0)
    fm = FlowMatching(MLP(2, 1, label_dim=0, n_cond=1, hidden=32, depth=2), (1,), dt=0.1)
    return fm, TransitionDataset.from_xarray(ou_ensemble(37, 3))


def es_problem() -> tuple[EnergyScoreLifting, WithFixedLabels]:
    """DataLoader path, last batch of one example: the index comes from WithFixedLabels."""
    torch.manual_seed(0)
    es = EnergyScoreLifting(MLP(1, 1, label_dim=4, hidden=32, depth=2), (1,), n_members=3)
    return es, WithFixedLabels(TransitionDataset.from_xarray(ou_ensemble(33, 1)))


def dice_problem() -> tuple[DICE, SnapshotDataset]:
    """Self-drawn batches (x: (n_times, B, 1)); diffusion with the exact Laplacian."""
    torch.manual_seed(0)
    dice = DICE(PotentialMLP(1, hidden=16, depth=2), (1,), sigma=0.5, dt=0.1)
    return dice, SnapshotDataset.from_xarray(ou_ensemble(64, 3), n_times=3)


def summary(stepper: torch.nn.Module, res: FitResult) -> dict:
    return {
        "losses": list(res.losses),
        "params": tensor_state(stepper),
        "world_size": res.world_size,
        "resumed_from_epoch": res.resumed_from_epoch,
    }


def record_batches(stepper: torch.nn.Module, seen: list) -> None:
    """Log what identifies the examples of every batch that reaches this rank's loss: the
    transition indices (SL), or the sampled populations ``x`` (DICE, ``(n_times, B, 1)``)."""
    loss = stepper.loss

    def logged(batch):
        seen.append(batch["index" if "index" in batch else "x"].detach().cpu().clone())
        return loss(batch)

    stepper.loss = logged


def run_fit(problem: Callable, **kw) -> tuple[torch.nn.Module, dict]:
    stepper, data = problem()
    seen: list[torch.Tensor] = []
    record_batches(stepper, seen)
    out = summary(stepper, fit(stepper, data, **{**FIT, **kw}))
    out["batches"] = seen
    return stepper, out


def resume_scenario(out_dir: Path) -> dict:
    rank = world()[0]
    writes: list[str] = []
    save = train_module.save_checkpoint

    def counted_save(path, payload):
        writes.append(f"rank {rank} epoch {payload['epoch']}")
        return save(path, payload)

    train_module.save_checkpoint = counted_save
    try:
        full, data = sl_problem()
        uninterrupted = summary(full, fit(full, data, checkpoint_dir=out_dir / "a", **RESUME))
        # dies (on every rank at the same step) in epoch 4, after the epoch-2 checkpoint
        stopped, data = sl_problem()
        steps = STOP_AFTER_EPOCHS * math.ceil(len(data) / RESUME["batch_size"])
        interrupt_fit(stopped, data, steps, checkpoint_dir=out_dir / "b", **RESUME)
        if is_main_process():  # epoch-2 checkpoint, for a 1-process resume in the test
            shutil.copytree(out_dir / "b", out_dir / "b_epoch2")
        barrier()
        again, data = sl_problem()
        resumed = summary(again, fit(again, data, checkpoint_dir=out_dir / "b", **RESUME))
    finally:
        train_module.save_checkpoint = save
    return {
        "uninterrupted": uninterrupted,
        "resumed": resumed,
        "writes": writes,
        "epoch2_dir": str(out_dir / "b_epoch2"),
    }


def rollout_scenario(state: dict, out: Path | None = None) -> dict:
    """Rollout of a trained SL stepper (in memory, or into the zarr store ``out``); counts
    the rows this rank's stepper computed."""
    sl = sl_stepper()
    sl.load_state_dict(state)
    rows = [0]
    step = sl.step

    def counted_step(window, noise=None, **kw):
        rows[0] += window.shape[0]
        return step(window, noise, **kw)

    sl.step = counted_step
    ens = rollout(sl, torch.zeros(1), **ROLLOUT, out=out)
    return {"values": torch.as_tensor(ens.values), "rows_stepped": rows[0]}


def refusals() -> dict[str, str]:
    """fit() arguments that cannot run data-parallel: every rank must raise, none hang."""
    messages = {}
    stepper, data = sl_problem()
    try:
        fit(stepper, data, **{**FIT, "batch_size": 33})
    except ValueError as err:
        messages["odd batch"] = str(err)
    rank = world()[0]
    stepper, _ = sl_problem()
    other = TransitionDataset.from_xarray(ou_ensemble(37 + rank, 3), labels=stepper.fixed_labels(0))
    try:
        fit(stepper, other, **FIT)
    except RuntimeError as err:
        messages["different datasets"] = str(err)
    return messages


# -- failures -------------------------------------------------------------------------------
FAILURE_TIMEOUT = 0.5  # seconds; the "timeout" scenario's rank 0 sleeps SLOW_RANK_SLEEP
SLOW_RANK_SLEEP = 3.0
GROUP_TIMEOUT = 20.0  # any collective of the failures launch: a hang ends as an error


def write_planted_failure(rank: int) -> None:
    """Fail as a full disk (rank 0) or a bad argument (rank 1) would."""
    if rank == 0:
        raise OSError(28, "No space left on device (planted)")
    raise ValueError(f"planted failure on rank {rank}")


def outcome_of(body: Callable[[], object]) -> dict:
    """What this rank raised out of ``body`` (nothing: error None), and when it left."""
    outcome: dict = {"error": None, "message": "", "cause": "", "notes": []}
    start = time.monotonic()
    try:
        body()
    except Exception as err:
        outcome["error"] = type(err).__name__
        outcome["message"] = str(err)
        outcome["cause"] = str(err.__cause__ or "")
        outcome["notes"] = list(getattr(err, "__notes__", []))
    outcome["seconds"] = time.monotonic() - start
    outcome["left_at"] = time.time()
    return outcome


def failing_block(
    what: str,
    fail_on: tuple[int, ...],
    *,
    sleep_on: int | None = None,
    sleep: float = 0.0,
    timeout: float | None = None,
) -> dict:
    """One fail_together block: what this rank raised out of it, and when it left."""
    rank = world()[0]
    times: dict = {}

    def block() -> None:
        with fail_together(what, timeout=timeout):
            if rank == sleep_on:
                time.sleep(sleep)
            times["body_done_at"] = time.time()
            if rank in fail_on:
                write_planted_failure(rank)

    return outcome_of(block) | times


def rank0_write_fails(module: object, name: str, run: Callable[[], object]) -> dict:
    """``run()`` on every rank while ``module.name`` (a write only rank 0 does) fails there."""
    original = getattr(module, name)
    if world()[0] == 0:
        setattr(module, name, lambda *args, **kwargs: write_planted_failure(0))
    try:
        return outcome_of(run)
    finally:
        setattr(module, name, original)


def call_site_failures(out_dir: Path) -> dict[str, Callable[[], object]]:
    """Rank 0 fails inside fit's checkpoint write and inside the zarr store's creation."""
    state = tensor_state(sl_stepper())

    def fit_run() -> None:
        fit(*sl_problem(), checkpoint_dir=out_dir / "ckpt", **FIT)

    def store_run() -> None:
        sl = sl_stepper()
        sl.load_state_dict(state)
        rollout(sl, torch.zeros(1), out=out_dir / "ens.zarr", **ROLLOUT)

    return {
        "fit_checkpoint_fails": lambda: rank0_write_fails(train_module, "save_checkpoint", fit_run),
        "store_creation_fails": lambda: rank0_write_fails(store_module, "_create", store_run),
    }


def in_lockstep() -> dict:
    """After the failures: a block that waits for slow rank 0, then a collective."""
    outcome = failing_block("waiting for rank 0", (), sleep_on=0, sleep=1.0)
    total = torch.tensor([float(world()[0] + 1)])
    torch.distributed.all_reduce(total)
    outcome["sum_of_ranks_plus_one"] = float(total)
    return outcome


FAILURE_SCENARIOS: dict[str, Callable[[], object]] = {
    "rank0_fails": lambda: failing_block("writing the checkpoint", (0,)),
    "rank1_fails": lambda: failing_block("checking the store", (1,)),
    "both_fail": lambda: failing_block("creating the store", (0, 1)),
    "lockstep": in_lockstep,
    # last: the timed-out gather of rank 1 completes only when rank 0 wakes up
    "timeout": lambda: failing_block(
        "a slow block", (), sleep_on=0, sleep=SLOW_RANK_SLEEP, timeout=FAILURE_TIMEOUT
    ),
}


def failure_scenarios(out_dir: Path) -> dict[str, Callable[[], object]]:
    """FAILURE_SCENARIOS with the call-site failures before the timeout, which stays last."""
    blocks = dict(FAILURE_SCENARIOS)
    last = blocks.pop("timeout")
    return blocks | call_site_failures(out_dir) | {"timeout": last}


def nccl_gather() -> dict:
    """Rows 0..4 in blocks of 2, gathered from host and from device tensors over NCCL."""
    lo, hi = shard_bounds(5, world()[0], world()[1], 2)
    rows = torch.arange(lo, hi, dtype=torch.float32).reshape(-1, 1)
    on_device = all_gather_rows(rows.cuda(), 5, 2)
    return {
        "from_host": all_gather_rows(rows, 5, 2),
        "from_device": on_device.cpu(),
        "device": str(on_device.device),
    }


NCCL_SCENARIOS: dict[str, Callable[[], object]] = {
    "gather": nccl_gather,
    "rank0_fails": lambda: failing_block("writing the checkpoint", (0,)),
}


def training_scenarios(out_dir: Path, results: dict) -> dict[str, Callable[[], object]]:
    return {
        "sl": lambda: run_fit(sl_problem)[1],
        "generic": lambda: run_fit(generic_problem)[1],
        "dice": lambda: run_fit(dice_problem, batch_size=16, epochs=2)[1],
        "cfm": lambda: run_fit(cfm_problem)[1],
        "es": lambda: run_fit(es_problem)[1],
        "resume": lambda: resume_scenario(out_dir),
        "refusals": refusals,
        "rollout": lambda: rollout_scenario(results["sl"]["params"]),
        "rollout_zarr": lambda: rollout_scenario(results["sl"]["params"], out_dir / "ens.zarr"),
    }


def main(out_dir: Path, mode: str = "training") -> None:
    torch.set_num_threads(1)
    if mode not in ("training", "failures", "nccl"):
        raise SystemExit(f"mode must be 'training', 'failures' or 'nccl', got {mode!r}")
    backend = "nccl" if mode == "nccl" else "gloo"
    timeout = None if mode == "training" else GROUP_TIMEOUT
    if not init_from_env(backend, timeout=timeout):
        raise SystemExit("run me under torchrun (RANK and WORLD_SIZE are not set)")
    rank = world()[0]
    results: dict = {"errors": {}}
    scenarios = {
        "training": lambda: training_scenarios(out_dir, results),
        "failures": lambda: failure_scenarios(out_dir),
        "nccl": lambda: NCCL_SCENARIOS,
    }[mode]()
    for name, scenario in scenarios.items():
        try:
            results[name] = scenario()
        except Exception:  # recorded for the test; the other rank fails the same way
            results["errors"][name] = traceback.format_exc()
    torch.save(results, out_dir / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
