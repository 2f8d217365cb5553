"""benchmarks/gpu_check.sh and the CUDA paths it exists for.

Without a GPU (CI): the script's syntax, its skip (exit 0, "no GPU: skipped", a valid
file), a dry run of every step on the CPU (GPU_CHECK_DEVICE=cpu: one CUDA-only test that
skips, the throughput benchmark at toy sizes, the merged report), the report's reading of
pytest's JUnit XML, and the convention that selects the CUDA-only tests (``-k cuda``).

With a GPU (gpu_check.sh runs them): CUDA graph rollouts against eager ones, bf16
autocast against float32, the pinned double-buffered copies to the host against a
rollout of one chunk, and (two GPUs) the NCCL gather and fail_together over NCCL.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from steppers import ALL_STEPPERS, StepperCase, step_inputs

from slift_plugin import rollout
from slift_plugin._rollout.sinks import HostDrain

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CASES = pytest.mark.parametrize("case", ALL_STEPPERS, ids=[c.name for c in ALL_STEPPERS])
NO_GPU = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # the CPU path, on any machine


def _load_gpu_throughput():
    """benchmarks/gpu_throughput.py (not a package), imported by path."""
    path = SCRIPT.with_name("gpu_throughput.py")
    spec = importlib.util.spec_from_file_location("gpu_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_throughput = _load_gpu_throughput()


def run_script(tmp_path: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    out = tmp_path / "gpu_check.json"
    return subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        env={**os.environ, **NO_GPU, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


# -- the script, without a GPU --------------------------------------------------------------
def test_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_check_without_a_gpu_says_skipped_and_exits_0(tmp_path):
    done = run_script(tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no GPU: skipped (no Python whose torch sees a CUDA device")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "skipped" and report["problems"] == []
    assert report["reason"] == done.stdout.strip().replace('"', "")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """Every step of the script on the CPU: the tests of one file, the toy benchmark."""
    tmp = tmp_path_factory.mktemp("dry_run")
    done = run_script(
        tmp,
        timeout=600,
        GPU_CHECK_DEVICE="cpu",
        GPU_CHECK_PYTHON=sys.executable,
        GPU_CHECK_TESTS="tests/test_gpu_check.py -k cuda",  # this file's CUDA tests skip
        GPU_CHECK_INSTALL="0",  # never pip install into the environment running the tests
    )
    return done, json.loads((tmp / "gpu_check.json").read_text())


def test_dry_run_reports_the_tests_as_pytest_ran_them(dry_run):
    done, report = dry_run
    tests = report["tests"]
    assert tests["command"] == "tests/test_gpu_check.py -k cuda"
    assert tests["exit_code"] == 0 and not tests["timed_out"]
    # two tests per stepper case, the staging one, the NCCL one, and the naming check
    n_cuda = 2 * len(ALL_STEPPERS) + 2
    assert tests["counts"] == {"passed": 1, "failed": 0, "errors": 0, "skipped": n_cuda}
    outcomes = {c["id"].removeprefix("tests.test_gpu_check::"): c for c in tests["cases"]}
    naming = outcomes.pop("test_every_test_that_skips_without_cuda_has_cuda_in_its_name")
    assert naming["outcome"] == "passed"
    nccl = outcomes.pop("test_nccl_gather_and_failing_together_on_two_cuda_gpus")
    assert (nccl["outcome"], nccl["message"]) == ("skipped", "needs 2 CUDA GPUs (NCCL)")
    assert {(c["outcome"], c["message"]) for c in outcomes.values()} == {("skipped", "needs CUDA")}
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["device"] == "cpu"
    assert report["setup"]["missing_modules"] == []
    assert 0 < report["seconds"] < report["limit_s"] == 470


def test_dry_run_benchmark_rows_have_the_columns_and_consistent_numbers(dry_run):
    done, report = dry_run
    rows = report["throughput"]["rows"]
    assert report["throughput"]["columns"] == list(gpu_throughput.COLUMNS)
    assert [(r["case"], r["mode"]) for r in rows] == [
        (case, mode) for case in ("mlp", "fno") for mode in gpu_throughput.MODES
    ]
    for r in rows:
        assert list(r) == list(gpu_throughput.COLUMNS)
        assert r["batch"] == {"mlp": 64, "fno": 4}[r["case"]] and r["n_steps"] == 2
        if "graph" in r["mode"]:  # the one thing a CPU cannot do
            assert r["error"] == (
                "ValueError: cuda_graph=True needs a CUDA device; this rollout runs on cpu"
            )
            assert r["ms_per_step"] is None
            continue
        assert r["error"] is None and r["ms_per_step"] > 0
        assert r["traj_steps_per_s"] == pytest.approx(r["batch"] / (r["ms_per_step"] / 1e3))
        bare = next(b for b in rows if b["case"] == r["case"] and b["mode"] == "bare")
        assert r["ratio_to_bare"] == pytest.approx(r["ms_per_step"] / bare["ms_per_step"])


def test_dry_run_verdict_names_exactly_what_failed(dry_run):
    done, report = dry_run
    assert report["status"] == "failed"
    assert report["problems"] == [
        "benchmark modes that raised: mlp/graph/64, mlp/graph-bf16/64, fno/graph/4, "
        "fno/graph-bf16/4"
    ]
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == f"failed: {report['problems'][0]}"


def test_report_counts_outcomes_as_pytest_reports_them(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "def test_fails(): assert 1 == 2\n"
        "@pytest.mark.skip(reason='not here')\n"
        "def test_skipped(): pass\n"
        "@pytest.fixture\n"
        "def broken(): raise RuntimeError('fixture broke')\n"
        "def test_errors(broken): pass\n"
    )
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    done = subprocess.run([*cmd, "test_sample.py"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout  # tests failed
    summary = gpu_throughput.junit_summary(junit)
    assert summary["counts"] == {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    outcomes = {c["id"].rsplit("::", 1)[1]: c["outcome"] for c in summary["cases"]}
    assert outcomes == {
        "test_passes": "passed",
        "test_fails": "failed",
        "test_skipped": "skipped",
        "test_errors": "errors",
    }
    bench = tmp_path / "bench.json"
    row = {"case": "mlp", "mode": "graph", "batch": 8, "error": "RuntimeError: x"}
    bench.write_text(json.dumps({"rows": [row]}))
    files = ["--out", str(tmp_path / "r.json"), "--junit", str(junit), "--bench", str(bench)]
    exits = ["--tests-exit", "1", "--bench-exit", "124"]
    args = gpu_throughput.parse(["report", *files, *exits, "--missing", "zarr"])
    report = gpu_throughput.build_report(args)
    assert report["problems"] == [
        "missing modules: zarr",
        "CUDA tests: 1 failed, 1 errors",
        "the throughput benchmark ran out of time",
        "benchmark modes that raised: mlp/graph/8",
    ]


def _skips_without_cuda(decorator: ast.expr, markers: set[str]) -> bool:
    if isinstance(decorator, ast.Name):
        return decorator.id in markers
    return (
        isinstance(decorator, ast.Call)
        and ast.unparse(decorator.func).endswith("mark.skipif")
        and "cuda" in ast.unparse(decorator.args[0] if decorator.args else decorator)
    )


def test_every_test_that_skips_without_cuda_has_cuda_in_its_name():
    """gpu_check.sh selects the CUDA-only tests with ``-k cuda``: a test that skips without
    CUDA and lacks "cuda" in its name would never run anywhere."""
    unnamed, found = [], 0
    for path in sorted(ROOT.glob("tests/*.py")):
        tree = ast.parse(path.read_text())
        markers = {  # module-level NAME = pytest.mark.skipif(<...cuda...>)
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign) and _skips_without_cuda(node.value, set())
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                if any(_skips_without_cuda(d, markers) for d in node.decorator_list):
                    found += 1
                    if "cuda" not in node.name.lower():
                        unnamed.append(f"{path.name}::{node.name}")
    assert found >= 6  # test_contract, test_metrics and this file's own
    assert not unnamed, f"CUDA-only tests that `-k cuda` misses: {unnamed}"


# -- the CUDA paths (run by gpu_check.sh on a GPU) ------------------------------------------
def on_cuda(case: StepperCase) -> tuple:
    """A fresh stepper normalised on its data, on the GPU, and 6 windows as ``x0``."""
    stepper = case.build()
    data = case.dataset(stepper)
    stepper.prepare(data)
    window, mu = step_inputs(stepper, data, 6)
    x0 = window.reshape(6, stepper.history, stepper.n_channels, *window.shape[2:])
    return stepper.cuda(), x0, mu


def relative_error(values: np.ndarray, reference: np.ndarray) -> float:
    """Error over the steps' movement (not over the states: they barely move in 2 steps)."""
    moved = reference[:, 1:] - reference[:, :1]
    return float(np.linalg.norm(values[:, 1:] - reference[:, 1:]) / np.linalg.norm(moved))


@NEEDS_CUDA
@CASES
def test_cuda_graph_rollout_equals_the_eager_rollout_on_cuda(case):
    stepper, x0, mu = on_cuda(case)
    # 6 samples in chunks of 4: two batch sizes, two captured graphs
    kw = dict(n_steps=3, mu=mu, seed=4, chunk_size=4)
    if not stepper.cuda_graph_safe:
        with pytest.raises(ValueError, match="declares cuda_graph_safe = False"):
            rollout(stepper, x0, cuda_graph=True, **kw)
        return
    for dtype in (None, torch.bfloat16):
        eager = rollout(stepper, x0, autocast_dtype=dtype, **kw).values
        graphed = rollout(stepper, x0, cuda_graph=True, autocast_dtype=dtype, **kw).values
        np.testing.assert_allclose(graphed, eager, rtol=1e-5, atol=1e-6, err_msg=str(dtype))
        assert np.abs(eager[:, -1] - eager[:, 0]).max() > 0  # the states moved


@NEEDS_CUDA
@CASES
def test_bf16_autocast_rollout_on_cuda_stays_close_to_float32(case):
    """On the CPU, bf16 moves every case's states by 0.02% to 1.8% of their movement in
    two steps (measured); 5% leaves a margin, a bf16 state fed back would be far off."""
    stepper, x0, mu = on_cuda(case)
    kw = dict(n_steps=2, mu=mu, seed=4)
    full = rollout(stepper, x0, **kw).values
    half = rollout(stepper, x0, autocast_dtype=torch.bfloat16, **kw)
    assert half.dtype == np.float32 and np.isfinite(half.values).all()
    assert 0 < relative_error(half.values, full) < 0.05  # > 0: autocast took effect


@NEEDS_CUDA
def test_pinned_staging_on_cuda_hands_over_every_chunk(tmp_path):
    """Chunks of 256, 256 and 88 reuse both pinned buffers; one chunk of 600 reuses none.
    The noise does not depend on the chunking, so all must agree."""
    (case,) = [c for c in ALL_STEPPERS if c.name == "sl_mlp"]
    stepper, _, _ = on_cuda(case)
    kw = dict(n_steps=5, n_samples=600, seed=2)
    one_chunk = rollout(stepper, torch.zeros(1), chunk_size=600, **kw).values
    chunks = rollout(stepper, torch.zeros(1), chunk_size=256, **kw).values
    zarr = rollout(stepper, torch.zeros(1), chunk_size=256, out=tmp_path / "e.zarr", **kw)
    np.testing.assert_allclose(chunks, one_chunk, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zarr.values, chunks, rtol=1e-6, atol=1e-7)
    assert np.abs(chunks[:, -1]).max() > 0
    drain = HostDrain(None, torch.device("cuda"), (4, 3), torch.float32)
    assert drain.staged and all(b.is_pinned() for b in drain._buffers)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_nccl_gather_and_failing_together_on_two_cuda_gpus(tmp_path):
    from test_distributed import launch, scenario

    ranks = launch(tmp_path, "nccl", timeout=180)
    for result in scenario(ranks, "gather"):
        expected = torch.arange(5.0).reshape(-1, 1)
        assert torch.equal(result["from_host"], expected)
        assert torch.equal(result["from_device"], expected)
        assert result["device"].startswith("cuda")
    rank0, rank1 = scenario(ranks, "rank0_fails")
    assert rank0["error"] == "OSError" and rank1["error"] == "RankFailedError"
    assert "rank 0 failed while writing the checkpoint: OSError" in rank1["message"]
