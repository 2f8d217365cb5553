#!/usr/bin/env bash
# The CUDA check: every CUDA-only test, then a short GPU throughput benchmark
# (benchmarks/gpu_throughput.py), all results in one JSON file, in under 8 minutes.
#
#   benchmarks/gpu_check.sh [OUT_FILE]
#
# OUT_FILE defaults to $GPU_CHECK_OUT, else $OUT/gpu_check.json when $OUT is set, else
# benchmarks/results/gpu/gpu_check.json. Exit status: 0 when every check passed, or when
# there is no GPU (it prints "no GPU: skipped" and writes a file with status "skipped");
# 1 when a check failed or ran out of time (the file's "problems" say which); 2 when the
# script itself cannot run (no GNU timeout, no writable output).
#
# Assumptions (the GPU machine runs a copy of the working tree, offline):
# * A Python with a CUDA build of torch is already there: $GPU_CHECK_PYTHON if set, else
#   the first of .venv/bin/python, python3, python whose torch sees a GPU. Nothing is
#   downloaded: the script cannot install torch.
# * The project's other dependencies (neuraloperator, torchsde, zarr, xarray, ...; the
#   test extras for the tests) are installed in that Python, or brought as wheels in
#   $GPU_CHECK_WHEELS (default: .whl/ in the repo), which are then installed with
#   --no-index into a scratch folder on PYTHONPATH. Whatever is still missing is reported
#   in the file, and the checks run anyway (those that need it fail).
# * The project is installed into that Python with `pip install -e . --no-deps
#   --no-index --no-build-isolation` (setuptools must be there), unless this checkout is
#   already installed there in editable mode (or GPU_CHECK_INSTALL=0).
# * GNU `timeout` enforces the limit: $GPU_CHECK_LIMIT seconds in all (default 470). The
#   steps share it; if the whole script is stopped, the file says so.
#
# CUDA-only tests are selected by name, `pytest tests -k cuda`: a test that needs CUDA has
# "cuda" in its name (tests/test_gpu_check.py checks that every test that skips without
# CUDA does). $GPU_CHECK_TESTS replaces "tests -k cuda". For this script's own tests,
# GPU_CHECK_DEVICE=cpu runs every step on the CPU, the benchmark at toy sizes.
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_FILE=${1:-${GPU_CHECK_OUT:-${OUT:+$OUT/gpu_check.json}}}
OUT_FILE=${OUT_FILE:-$REPO/benchmarks/results/gpu/gpu_check.json}
case $OUT_FILE in /*) ;; *) OUT_FILE=$PWD/$OUT_FILE ;; esac # relative to the caller
cd "$REPO" || exit 2
LIMIT=${GPU_CHECK_LIMIT:-470}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}
read -r -a TEST_ARGS <<<"${GPU_CHECK_TESTS:-tests -k cuda}"

T0=$(date +%s)
log() { echo "[gpu_check $(($(date +%s) - T0)) s] $*" >&2; }

# JSON without a JSON library: one status, one problem (quotes and backslashes dropped).
write_bare_json() { # status text
    local text
    text=$(printf '%s' "$2" | tr -d '"\\' | tr '\n\t' '  ')
    local problems="[]"
    [ "$1" = skipped ] || problems="[\"$text\"]"
    printf '{\n "status": "%s",\n "problems": %s,\n "reason": "%s"\n}\n' \
        "$1" "$problems" "$text" >"$OUT_FILE"
}

if ! command -v timeout >/dev/null; then
    log "GNU timeout is needed to enforce the time limit (coreutils)"
    exit 2
fi
mkdir -p "$(dirname "$OUT_FILE")" && rm -f "$OUT_FILE" || exit 2

# The whole script runs under `timeout`; the steps below also budget their own time, so
# that this hard stop is only a backstop.
if [ -z "${GPU_CHECK_INNER:-}" ]; then
    GPU_CHECK_INNER=1 timeout -k 5 "$LIMIT" bash "$REPO/benchmarks/gpu_check.sh" "$OUT_FILE"
    status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        write_bare_json failed "gpu_check.sh was stopped after its limit of $LIMIT s"
        log "stopped after $LIMIT s"
        status=1
    fi
    exit "$status"
fi

START=$(date +%s)
DEADLINE=$((START + LIMIT - 60)) # the last 60 s: device facts and the report
# seconds left before the deadline less $2, but at least $1 (timeout 0 would mean none)
budget() {
    local s=$((DEADLINE - $(date +%s) - ${2:-0}))
    [ "$s" -lt "$1" ] && s=$1
    echo "$s"
}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT

# -- a Python whose torch sees the device ---------------------------------------------------
PROBE='import sys, torch
ok = torch.cuda.is_available() if sys.argv[1] == "cuda" else True
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, sees {sys.argv[1]}: {ok}")
sys.exit(0 if ok else 3)'
PY=""
TRIED=""
for candidate in ${GPU_CHECK_PYTHON:-$REPO/.venv/bin/python python3 python}; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    said=$(timeout "$(budget 10 0)" "$candidate" -c "$PROBE" "$DEVICE" 2>&1 | tail -n 1)
    status=$?
    TRIED="$TRIED $candidate: ${said:-no output};"
    if [ "$status" -eq 0 ]; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    reason="no GPU: skipped (no Python whose torch sees a CUDA device; tried$TRIED)"
    echo "$reason"
    write_bare_json skipped "$reason"
    exit 0
fi
log "python: $PY"

# -- dependencies and the project ----------------------------------------------------------
MODULES=(torch numpy xarray zarr neuralop torchsde tqdm pandas h5netcdf matplotlib
    pytest hypothesis scipy dcor ot scoringrules)
FIND='import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))'
SETUP_LOG=$WORK/setup.log
MISSING=$(timeout 60 "$PY" -c "$FIND" "${MODULES[@]}" 2>>"$SETUP_LOG")
if [ -n "$MISSING" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    log "missing: $MISSING; installing the wheels of $WHEELS"
    timeout "$(budget 30 200)" "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --target "$WORK/site" "$WHEELS"/*.whl >>"$SETUP_LOG" 2>&1
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    MISSING=$(timeout 60 "$PY" -c "$FIND" "${MODULES[@]}" 2>>"$SETUP_LOG")
fi
[ -n "$MISSING" ] && log "still missing: $MISSING (the checks that need them will fail)"

# Installed from this checkout in editable mode? Read from pip's metadata (importing the
# package would also fail on a missing dependency, which a reinstall does not cure), in /:
# from the checkout, a stray slift_plugin.egg-info there would answer instead.
EDITABLE='import json, os, sys
from importlib.metadata import PackageNotFoundError, distribution
try:
    url = json.loads(distribution("slift-plugin").read_text("direct_url.json") or "{}")
except PackageNotFoundError:
    sys.exit(4)
here = url.get("dir_info", {}).get("editable") and url.get("url", "").startswith("file://")
sys.exit(0 if here and os.path.samefile(url["url"][7:], sys.argv[1]) else 4)'
if (cd / && timeout 60 "$PY" -c "$EDITABLE" "$REPO") >>"$SETUP_LOG" 2>&1; then
    log "the project is installed from this checkout"
elif [ "${GPU_CHECK_INSTALL:-1}" = 0 ]; then
    log "the project is not installed from this checkout (GPU_CHECK_INSTALL=0: left as is)"
else
    log "installing the project: pip install -e . --no-deps"
    timeout "$(budget 30 200)" "$PY" -m pip install -q --no-deps --no-index \
        --no-build-isolation -e "$REPO" >>"$SETUP_LOG" 2>&1 ||
        log "pip install -e . failed (the file's setup.log_tail says why)"
fi

# -- the CUDA-only tests, then the benchmark ------------------------------------------------
tests_time=$(budget 30 120) # the benchmark keeps 120 s
log "pytest ${TEST_ARGS[*]} (at most $tests_time s)"
timeout -k 10 "$tests_time" "$PY" -m pytest "${TEST_ARGS[@]}" -q -rA -p no:cacheprovider \
    --continue-on-collection-errors --junitxml="$WORK/junit.xml" >"$WORK/tests.log" 2>&1
TESTS_EXIT=$?
tail -n 5 "$WORK/tests.log" >&2

BENCH_ARGS=(--device "$DEVICE" --out "$WORK/bench.json")
[ "$DEVICE" = cuda ] || BENCH_ARGS+=(--tiny)
bench_time=$(budget 20)
log "benchmarks/gpu_throughput.py ${BENCH_ARGS[*]} (at most $bench_time s)"
timeout -k 10 "$bench_time" "$PY" benchmarks/gpu_throughput.py "${BENCH_ARGS[@]}" \
    >"$WORK/bench.log" 2>&1
BENCH_EXIT=$?
cat "$WORK/bench.log" >&2

if ! grep -q '"info"' "$WORK/bench.json" 2>/dev/null; then # else the benchmark's facts
    timeout 25 "$PY" benchmarks/gpu_throughput.py info --device "$DEVICE" \
        --out "$WORK/info.json" >>"$SETUP_LOG" 2>&1
fi
# shellcheck disable=SC2086  # MISSING: one word per module
timeout 25 "$PY" benchmarks/gpu_throughput.py report --out "$OUT_FILE" \
    --info "$WORK/info.json" --junit "$WORK/junit.xml" --bench "$WORK/bench.json" \
    --setup-log "$SETUP_LOG" --tests-log "$WORK/tests.log" --bench-log "$WORK/bench.log" \
    --tests-exit "$TESTS_EXIT" --bench-exit "$BENCH_EXIT" --tests-command "${TEST_ARGS[*]}" \
    --seconds "$(($(date +%s) - START))" --limit "$LIMIT" --missing $MISSING
status=$?
if [ ! -s "$OUT_FILE" ]; then
    write_bare_json failed "the report could not be written (exit $status); pytest exited \
$TESTS_EXIT, the benchmark $BENCH_EXIT"
    status=1
fi
log "wrote $OUT_FILE"
exit "$status"
