"""fit() and rollout() under torchrun: 2 CPU processes (gloo) against 1 process.

One torchrun launch (tests/torchrun_worker.py) runs every scenario; each test reads its
part of the ranks' results and compares it with the same code run here, in one process.

Tolerances: the 2-process run computes the same global-batch loss as one process, but
sums it in another order (two half-batch means, weighted), so losses and weights differ
by float32 round-off. Measured: at most 6e-8 on any weight after 12 Adam steps, 1e-7
relative on the losses. ``rtol=1e-5, atol=1e-6`` leaves a margin of ~100x; a sampler that
feeds the ranks other examples changes the losses in the 3rd digit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchrun_worker as worker

from slift_plugin import SnapshotDataset, TransitionDataset, fit, rollout
from slift_plugin.distributed import fail_together, init_from_env
from slift_plugin.train import _check_shardable, _index_shards

WORKER = Path(__file__).with_name("torchrun_worker.py")
N_PROC = 2
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def launch(out: Path, mode: str, timeout: float) -> list[dict]:
    """Run the worker's ``mode`` under torchrun; the results of rank 0 and rank 1."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={N_PROC}",
        "--standalone",
        str(WORKER),
        str(out),
        mode,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank hung?)\n{_output(err)}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited with {proc.returncode}\n{_output(proc)}")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(N_PROC)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """The training scenarios, run once."""
    return launch(tmp_path_factory.mktemp("torchrun"), "training", timeout=180)


@pytest.fixture(scope="module")
def failures(tmp_path_factory) -> list[dict]:
    """The fail_together scenarios, run once. Every collective there times out after
    GROUP_TIMEOUT (20 s) and the scenarios sleep 4 s in all: 120 s, slow imports
    included, is a hang."""
    return launch(tmp_path_factory.mktemp("failures"), "failures", timeout=120)


def _output(proc) -> str:
    return f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def scenario(ranks: list[dict], name: str) -> list[dict]:
    """Every rank's result of one scenario; fails with the worker's traceback if it raised."""
    for r, result in enumerate(ranks):
        if name in result["errors"]:
            pytest.fail(f"scenario {name!r} raised on rank {r}:\n{result['errors'][name]}")
    return [result[name] for result in ranks]


def assert_same_params(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"parameter {key}", **tol)


# -- training -------------------------------------------------------------------------------
PROBLEMS = {
    "sl": (worker.sl_problem, {}),  # get_batch, uneven last batch (8 + 7)
    "generic": (worker.generic_problem, {}),  # DataLoader, last batch of 1 for 2 ranks
    "dice": (worker.dice_problem, {"batch_size": 16, "epochs": 2}),  # iter_batches
    # fresh noise per step, keyed by the example index: the ranks draw one process's noise
    "cfm": (worker.cfm_problem, {}),  # get_batch, uneven last batch
    "es": (worker.es_problem, {}),  # DataLoader, last batch of 1
}


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_ddp_fit_matches_single_process_with_the_same_global_batch(ranks, name):
    results = scenario(ranks, name)
    problem, kw = PROBLEMS[name]
    _, single = worker.run_fit(problem, **kw)
    for r, result in enumerate(results):
        assert result["world_size"] == N_PROC
        torch.testing.assert_close(
            torch.tensor(result["losses"]),
            torch.tensor(single["losses"]),
            msg=f"rank {r} epoch losses",
            **TOLERANCE,
        )
        assert_same_params(result["params"], single["params"], **TOLERANCE)
    # DDP keeps the replicas identical: the all-reduced gradients are bit-equal.
    assert_same_params(results[0]["params"], results[1]["params"], rtol=0, atol=0)
    assert results[0]["losses"] == results[1]["losses"]


@pytest.mark.parametrize("name, batch_dim", [("sl", 0), ("dice", 1)])
def test_each_rank_trains_its_share_of_the_global_batch(ranks, name, batch_dim):
    """Rank 0 takes the first part of every single-process batch, rank 1 the rest."""
    results = scenario(ranks, name)
    problem, kw = PROBLEMS[name]
    _, single = worker.run_fit(problem, **kw)
    assert [len(result["batches"]) for result in results] == [len(single["batches"])] * N_PROC
    for step, whole in enumerate(single["batches"]):
        parts = [result["batches"][step] for result in results]
        sizes = [part.shape[batch_dim] for part in parts]
        assert max(sizes) - min(sizes) <= 1, f"step {step}: uneven split {sizes}"
        assert torch.equal(torch.cat(parts, batch_dim), whole), f"step {step}: ranks saw {parts}"


def test_index_shards_cover_every_batch_once_with_shares_summing_to_one():
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    per_rank = [list(_index_shards(perm, 8, r, 3)) for r in range(3)]  # batches 8, 8, 7
    for step, whole in enumerate(perm.split(8)):
        pieces = [shards[step] for shards in per_rank]
        assert torch.equal(torch.cat([idx for idx, _ in pieces]), whole)
        assert sum(share for _, share in pieces) == pytest.approx(1.0)
    one_left = [list(_index_shards(perm, 22, r, 3))[-1] for r in range(3)]  # last batch: 1
    assert [share for _, share in one_left] == [1.0, 0.0, 0.0]  # stand-ins weigh nothing
    assert [len(idx) for idx, _ in one_left] == [1, 1, 1]


def test_snapshot_batches_split_samples_and_give_each_rank_its_own_probes():
    data = SnapshotDataset([(torch.arange(3.0), [torch.zeros(4, 2)] * 3, None)])
    batch = {"x": torch.randn(3, 8, 2), "t": torch.arange(3.0), "probe_seed": torch.tensor(7)}
    shards = [data.shard_batch(batch, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([s["x"] for s in shards], 1), batch["x"])
    assert all(torch.equal(s["t"], batch["t"]) for s in shards)  # same times on every rank
    # Hutchinson probes: a shared seed would give every rank the same probe vectors.
    seeds = {int(s["probe_seed"]) for s in shards}
    assert len(seeds) == 2 and all(s["probe_seed"].dtype == torch.int64 for s in shards)


def test_what_cannot_be_split_is_refused_before_training():
    ds = TransitionDataset(torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="multiple of 2, got 33"):
        _check_shardable(ds, 33, 2)
    _check_shardable(ds, 33, 1)  # one process: any batch size

    class Drawn:
        def __len__(self):
            return 1

        def steps_per_epoch(self, batch_size):
            return 1

        def iter_batches(self, batch_size, generator):
            yield {}

    with pytest.raises(TypeError, match="Drawn draws its own batches"):
        _check_shardable(Drawn(), 32, 2)
    _check_shardable(SnapshotDataset([(torch.arange(2.0), [torch.zeros(4, 2)] * 2, None)]), 32, 2)


def test_ranks_refuse_together_what_they_cannot_train(ranks):
    for messages in scenario(ranks, "refusals"):
        assert "global batch" in messages["odd batch"]
        assert "multiple of 2, got 33" in messages["odd batch"]
        assert "disagree on ['config']" in messages["different datasets"]


# -- checkpoints ----------------------------------------------------------------------------
def test_rank_zero_writes_checkpoints_and_a_resumed_run_continues_the_same(ranks):
    results = scenario(ranks, "resume")
    # uninterrupted: epochs 2 and 4; interrupted: epoch 2; resumed: epoch 4
    assert results[0]["writes"] == [f"rank 0 epoch {e}" for e in (2, 4, 2, 4)]
    assert results[1]["writes"] == []
    for result in results:
        full, resumed = result["uninterrupted"], result["resumed"]
        assert resumed["resumed_from_epoch"] == 2
        assert resumed["losses"] == pytest.approx(full["losses"], rel=1e-6)
        assert_same_params(resumed["params"], full["params"], rtol=0, atol=1e-7)


def test_one_process_resumes_a_two_process_checkpoint(ranks):
    """Checkpoints hold nothing rank-specific: the global batch, not W, defines the run."""
    result = scenario(ranks, "resume")[0]
    full, ckpt = result["uninterrupted"], result["epoch2_dir"]
    stepper, data = worker.sl_problem()
    res = fit(stepper, data, checkpoint_dir=ckpt, **worker.RESUME)
    assert res.resumed_from_epoch == 2 and res.world_size == 1
    torch.testing.assert_close(torch.tensor(res.losses), torch.tensor(full["losses"]), **TOLERANCE)
    assert_same_params(worker.tensor_state(stepper), full["params"], **TOLERANCE)


# -- rollout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rollout", "rollout_zarr"])
def test_sharded_rollout_equals_the_single_process_rollout(ranks, name):
    """Uneven shards (700 samples, chunks of 256); in memory or streamed to one zarr store."""
    results = scenario(ranks, name)
    total_rows = worker.ROLLOUT["n_samples"] * worker.ROLLOUT["n_steps"]
    rows = [result["rows_stepped"] for result in results]
    assert sum(rows) == total_rows and max(rows) < total_rows, (
        f"each rank should step only its share of the {total_rows} sample-steps, got {rows}"
    )
    assert torch.equal(results[0]["values"], results[1]["values"])  # full ensemble everywhere
    stepper = worker.sl_stepper()
    stepper.load_state_dict(scenario(ranks, "sl")[0]["params"])
    single = rollout(stepper, torch.zeros(1), **worker.ROLLOUT)
    assert torch.equal(results[0]["values"], torch.as_tensor(single.values))


# -- failures ---------------------------------------------------------------------------------
# Without fail_together, the rank that did not raise waits at the next collective until the
# group's timeout (20 s here, 30 min by default) and then fails without the cause.
PROMPT = 10.0  # seconds: a rank learns of another's failure at once, not after a timeout
DISK_FULL = "OSError: [Errno 28] No space left on device (planted)"


def test_a_failure_of_rank_zero_fails_the_other_rank_at_once_with_the_cause(failures):
    rank0, rank1 = scenario(failures, "rank0_fails")
    assert rank0["error"] == "OSError" and "No space left on device" in rank0["message"]
    assert rank0["notes"] == []  # rank 1 did not fail
    assert rank1["error"] == "RankFailedError"
    assert rank1["message"] == (
        f"rank 0 failed while writing the checkpoint: {DISK_FULL} (seen from rank 1)"
    )
    assert "in write_planted_failure" in rank1["cause"]  # rank 0's traceback
    assert rank1["seconds"] < PROMPT


def test_a_failure_of_another_rank_fails_rank_zero(failures):
    rank0, rank1 = scenario(failures, "rank1_fails")
    assert rank1["error"] == "ValueError" and rank1["message"] == "planted failure on rank 1"
    assert rank0["error"] == "RankFailedError"
    assert rank0["message"] == (
        "rank 1 failed while checking the store: ValueError: planted failure on rank 1 "
        "(seen from rank 0)"
    )
    assert rank0["seconds"] < PROMPT


def test_ranks_that_fail_together_keep_their_own_errors_and_note_the_others(failures):
    rank0, rank1 = scenario(failures, "both_fail")
    assert rank0["error"] == "OSError"
    assert rank0["notes"] == [
        "rank 1 also failed while creating the store: ValueError: planted failure on rank 1"
    ]
    assert rank1["error"] == "ValueError"
    assert rank1["notes"] == [f"rank 0 also failed while creating the store: {DISK_FULL}"]


def test_after_failures_the_ranks_are_still_in_step_and_leave_blocks_together(failures):
    rank0, rank1 = scenario(failures, "lockstep")
    assert rank0["error"] is None and rank1["error"] is None
    # rank 0 slept 1 s in the block: rank 1 left only after rank 0's body was done
    assert rank1["left_at"] >= rank0["body_done_at"]
    assert rank1["seconds"] >= 0.9
    assert rank0["sum_of_ranks_plus_one"] == rank1["sum_of_ranks_plus_one"] == 3.0


def test_a_rank_that_waits_past_the_timeout_fails_with_a_timeout(failures):
    rank0, rank1 = scenario(failures, "timeout")
    assert rank1["error"] == "TimeoutError"
    assert "(timeout 0.5 s) for the other ranks to finish a slow block" in rank1["message"]
    # it gave up after the timeout, well before rank 0 woke up
    assert worker.FAILURE_TIMEOUT <= rank1["seconds"] < worker.SLOW_RANK_SLEEP - 0.5
    assert rank0["error"] is None  # rank 0 found rank 1's (timed-out) gather waiting


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("fit_checkpoint_fails", "writing the checkpoint of epoch 3"),  # the last of 3
        ("store_creation_fails", "creating or repairing the zarr store"),
    ],
)
def test_rank_zero_failing_in_fit_or_rollout_fails_the_other_rank_with_the_cause(
    failures, name, what
):
    # The call sites: rank 0's checkpoint write in fit() and its creation of the zarr store
    # in rollout() fail (a full disk); rank 1 must not wait at a barrier for the group's
    # timeout, but fail at once, naming rank 0's error.
    rank0, rank1 = scenario(failures, name)
    assert rank0["error"] == "OSError" and "No space left on device" in rank0["message"]
    assert rank1["error"] == "RankFailedError"
    assert rank1["message"].startswith(f"rank 0 failed while {what}")
    assert DISK_FULL in rank1["message"]
    assert rank1["seconds"] < PROMPT + 15  # includes building and training the small model


def test_fail_together_in_one_process_runs_the_block_as_it_is():
    ran = []
    with fail_together("nothing"):
        ran.append(True)
    assert ran == [True]
    with pytest.raises(KeyError, match="own"), fail_together("raising"):
        raise KeyError("own")


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda: fail_together(""), "what must be a non-empty description, got ''"),
        (lambda: fail_together("x", timeout=0), "timeout must be a number of seconds > 0"),
        (lambda: init_from_env("gloo", timeout=-1.0), "timeout must be .* got -1.0"),
    ],
)
def test_bad_failure_arguments_are_refused(call, expected):
    with pytest.raises(ValueError, match=expected):
        with call():
            pass
