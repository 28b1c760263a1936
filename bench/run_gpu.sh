#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): stages in order, each under its own time limit, each
# writing to the results folder as it goes, so that a call cut short still returns everything that ran.
#
#   bench/run_gpu.sh                                # run 1: env tests suite
#   STAGES="tests tune suite" SUITE_ARGS="--configs hr large ..." bench/run_gpu.sh
#
# Stages (STAGES, in the order given):
#   env     nvidia-smi, the versions, the device's properties
#   tests   the GPU-marked tests and the kernel tests on CUDA (model shapes, every dtype; the base model on
#           triton against eager; CUDA-graph capture): up to MAXFAIL failures, a per-test time limit, in
#           parallel processes when pytest-xdist is there (the time goes into compiling kernels)
#   suite   python -m bench: the measured ceilings (bf16 matrix rate, copy rate), base bf16 end to end at
#           batch 32, 1, 8 (then the torch.compile baselines, at COMPILE_BATCHES, default 32), then the
#           kernel microbenchmarks; rows are saved as they finish, and each part stops starting rows at its
#           budget
#   tune    python -m bench.tune: launch-configuration variants of the kernels timed side by side
#   ncu     Nsight Compute (clocks left alone) on one launch of each kernel's default configuration:
#           speed of light, memory workload, occupancy (ncu.csv)
#
# Results go to $OUT when it is set (the device tool brings back at most 8 files: log.txt, tests.txt,
# run.{json,md,png}, tune.{json,md}, ncu.csv), else to bench/results/<device>/. Time limits, in seconds:
# TESTS_S, SUITE_S, TUNE_S (hard, per stage), E2E_BUDGET_S, KERNELS_BUDGET_S and TUNE_BUDGET_S (no row starts
# after them). TEST_FILES, SUITE_ARGS (appended: later options win) and TUNE_ARGS change what a stage runs.
# These are shell words: quote a name with spaces ("timesformer triton"). TIMESFORMER_COMMIT names the commit
# in the results where the copied tree has no .git. Without a GPU: REHEARSAL=1 runs the plumbing (CPU suite on
# the tiny config; no speed claims), DRY_RUN=1 checks the suite's and tune's arguments as on a GPU; both only
# collect the tests stage's files.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STAGES=${STAGES:-env tests suite}
TESTS_S=${TESTS_S:-80} SUITE_S=${SUITE_S:-240} TUNE_S=${TUNE_S:-150}
E2E_BUDGET_S=${E2E_BUDGET_S:-120} KERNELS_BUDGET_S=${KERNELS_BUDGET_S:-40}
MAXFAIL=${MAXFAIL:-10} WORKERS=${WORKERS:-12}
REHEARSAL=${REHEARSAL:-0} DRY_RUN=${DRY_RUN:-}

if [ -n "${OUT:-}" ]; then
    dest=$OUT
else
    slug=cpu
    [ "$REHEARSAL" = 1 ] || slug=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-').lower())")
    dest=bench/results/$slug
fi
mkdir -p "$dest"
log=$dest/log.txt
summary=()
status=0  # 1 when a stage failed or ran out of time

# stage NAME SECONDS: run NAME_stage under a hard limit (SIGINT first, to the whole process group, so pytest
# and the suite report what ran), its output appended to log.txt and shown; its status and time go to the
# summary printed last.
stage() {
    local name=$1 limit=$2 start rc
    start=$(date +%s)
    printf '\n===== %s (limit %ss) %s =====\n' "$name" "$limit" "$(date -u +%H:%M:%S)" | tee -a "$log"
    timeout --signal=INT --kill-after=15 "$limit" bash -c "${name}_stage" 2>&1 | tee -ai "$log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || status=1
    [ "$rc" = 124 ] && rc="124 (time limit)"
    summary+=("$(printf '%-6s exit %-16s %4ss' "$name" "$rc" "$(($(date +%s) - start))")")
}

env_stage() {
    nvidia-smi || echo "nvidia-smi: not available"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu \
        --format=csv 2>/dev/null
    echo "commit ${TIMESFORMER_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    $PY - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
for dist in ("triton", "transformers", "numpy", "pytest", "pytest-xdist", "pytest-timeout", "av"):
    try:
        print(f"{dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist}: not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}: sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB, "
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
EOF
}

tests_stage() {
    # -v: each test's outcome as it finishes (a run cut short still names its failures).
    local opts=(-v -p no:cacheprovider -rfE --tb=short --maxfail="$MAXFAIL")
    $PY -c "import pytest_timeout" 2>/dev/null && opts+=(--timeout=90)
    $PY -c "import xdist" 2>/dev/null && [ "$WORKERS" -gt 1 ] && opts+=(-n "$WORKERS")
    local files
    eval "files=(${TEST_FILES:-tests/test_gpu.py tests/test_attention.py tests/test_temporal_attention.py \
        tests/test_linear.py tests/test_patch_embed.py tests/test_triton_backend.py \
        tests/test_triton_fast_path.py tests/test_cuda_graphs.py})"
    # Without a GPU (DRY_RUN, REHEARSAL) the files are collected, not run: the interpreter runs them in CI, and
    # here they would only spend the stage's limit (made for a GPU) on a CPU.
    if [ -n "$DRY_RUN" ] || [ "$REHEARSAL" = 1 ]; then opts=(--collect-only -q -p no:cacheprovider); fi
    $PY -m pytest "${opts[@]}" "${files[@]}" 2>&1 | tee -i "$dest/tests.txt"
    return "${PIPESTATUS[0]}"
}

suite_stage() {
    local args
    if [ "$REHEARSAL" = 1 ]; then
        args=(--device cpu --configs tiny --batches 2 1 --rounds 2 --no-kernels --no-evaluate)
    else
        # The targets are at batch 32 and at batch 1 with graphs: those first (the suite runs the torch.compile
        # baselines after every other row; each batch size is a compile of tens of seconds: at batch 32 only
        # here, COMPILE_BATCHES).
        args=(--configs base --dtypes bfloat16 --batches 32 1 8 --no-largest-batch --no-evaluate
            --compile-batches ${COMPILE_BATCHES:-32}
            --impls "transformers eager" "timesformer triton" "timesformer triton + graphs"
            "transformers + compile" "timesformer sdpa" "timesformer sdpa + compile")
    fi
    local extra
    eval "extra=(${SUITE_ARGS:-} ${DRY_RUN:+--dry-run})"  # shell words: quoted names keep their spaces
    $PY -m bench "${args[@]}" --e2e-budget-s "$E2E_BUDGET_S" --kernels-budget-s "$KERNELS_BUDGET_S" \
        "${extra[@]}" --out "$dest" --stem run
}

tune_stage() {
    local extra
    eval "extra=(${TUNE_ARGS:-} ${DRY_RUN:+--dry-run})"
    $PY -m bench.tune --budget-s "${TUNE_BUDGET_S:-110}" "${extra[@]}" --json "$dest/tune.json" \
        --markdown "$dest/tune.md"
}

ncu_stage() {
    local extra
    eval "extra=(${TUNE_ARGS:-})"
    command -v "${NCU:-ncu}" >/dev/null || { echo "ncu: not found"; return 1; }
    # --clock-control none: the card's clocks are left as they are (never changed on a lent machine).
    "${NCU:-ncu}" --clock-control none --target-processes all -k "regex:_kernel$" \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --csv --page details \
        --log-file "$dest/ncu.csv" $PY -m bench.tune --profile "${extra[@]}"
}

# The stages run in child shells (timeout runs programs, not functions).
export -f env_stage tests_stage suite_stage tune_stage ncu_stage
export dest PY MAXFAIL WORKERS REHEARSAL DRY_RUN E2E_BUDGET_S KERNELS_BUDGET_S
for s in $STAGES; do
    case $s in
        env) stage env 30 ;;
        tests) stage tests "$TESTS_S" ;;
        suite) stage suite "$SUITE_S" ;;
        tune) stage tune "$TUNE_S" ;;
        ncu) stage ncu "${NCU_S:-90}" ;;
        *) echo "unknown stage $s (expected env, tests, suite, tune, ncu)" | tee -a "$log" && status=1 ;;
    esac
done

# The reply shows the end of the output: the stages, the test summary and the targets, last.
{
    printf '\n===== summary =====\n'
    printf '%s\n' "${summary[@]}"
    if [ -f "$dest/tests.txt" ]; then tail -n 1 "$dest/tests.txt"; fi
    if [ -f "$dest/run.md" ]; then sed -n '/^## Targets/,$p' "$dest/run.md"; fi
} | tee -a "$log"
exit "$status"
