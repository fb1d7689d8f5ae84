#!/usr/bin/env bash
# The GPU measurements of issue 16 in one command, about 8 minutes on one H100/H200:
#
#   benchmarks/gpu.sh [OUT_DIR]        (default: benchmarks/results/gpu-<UTC date and time>)
#
# Each part runs with its own time limit and writes its log and its JSON into OUT_DIR as it
# finishes; a part that fails or runs out of time is recorded in parts.json and the next one runs:
#
#   env           env.json                        GPU, driver, CUDA, torch, versions, commit
#   tests         tests-cuda.xml, tests-cuda.json the test suite's CUDA tests (pytest -m cuda)
#   speed-train   speed-train.json                training steps of DiT small beside GPT-2 small, bf16,
#                                                 batch 32 x 1024, with peak memory (speed.py)
#   speed-call    speed-call.json                 one denoiser call, batch 1 and 16, eager and static shapes
#   speed-sample  speed-sample.json               sampling 1,024 tokens, batch 1 and 16, T = 1000 and 128,
#                                                 eager and static shapes, beside GPT-2's generate
#   train         train-owt-small.json            two minutes of owt-small's model on random tokens
#   profile       profile.json                    where the time goes: the training step, and sampling
#                                                 (T = 128) plain and static, by kind of kernel, with wall time
#
# then summary.md: every part, and the figures against the issue's targets. Exit status 0 when
# every part passed, 1 when one did not, 2 when the machine cannot run it (checked first, one line).
#
# Settings (environment):
#   UNMASK_GPU_SMOKE=1       every part on the CPU at a tiny size, in a few minutes: checks the script
#                            itself on a machine without a GPU (its figures measure nothing)
#   UNMASK_GPU_DEADLINE_S    the whole run's limit in seconds (default 570): a part never runs past
#                            it, and one that would start with under 30 s left is skipped
#   PYTHON                   the interpreter (default python3)
#
# The code measured is this checkout's (src/ goes first on PYTHONPATH); see benchmarks/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
SMOKE=${UNMASK_GPU_SMOKE:-0}
DEADLINE_S=${UNMASK_GPU_DEADLINE_S:-570}
OUT=$(realpath -m "${1:-$ROOT/benchmarks/results/gpu-$(date -u +%Y-%m-%dT%H%MZ)}")
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$ROOT"

if [ "$SMOKE" = 1 ]; then
    "$PYTHON" benchmarks/gpu_preflight.py --smoke || exit 2
else
    "$PYTHON" benchmarks/gpu_preflight.py || exit 2
fi
mkdir -p "$OUT"

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu
    SPEED=(benchmarks/speed.py --device cpu --shape char-2x64-L64 --dtypes bf16 --static-shapes --threads 1)
    TRAIN_REPEATS=(--repeats 1) CALL_REPEATS=(--repeats 2) SAMPLE_REPEATS=(--repeats 1 --budget-s 2)
    TRAIN_RUN=(--seconds 3 model.n_layers=1 model.hidden=64 model.n_heads=2 data.length=64
               train.global_batch=4 train.micro_batch=2)
    PROFILE=(--device cpu --shape char-2x64-L64 --steps 8)
    LIMITS=(env=60 tests=300 speed-train=300 speed-call=180 speed-sample=300 train=180 profile=180)
    export OMP_NUM_THREADS=1
else
    DEVICE=cuda
    SPEED=(benchmarks/speed.py --device cuda --shape dit-small-L1024 --dtypes bf16)
    TRAIN_REPEATS=(--repeats 5) CALL_REPEATS=(--repeats 20) SAMPLE_REPEATS=(--repeats 2 --budget-s 25)
    TRAIN_RUN=(--seconds 120)
    PROFILE=(--device cuda --shape dit-small-L1024 --steps 128)
    LIMITS=(env=60 tests=180 speed-train=180 speed-call=90 speed-sample=240 train=210 profile=120)
fi

limit_of() {  # the time limit of part $1
    local entry
    for entry in "${LIMITS[@]}"; do
        [ "${entry%%=*}" = "$1" ] && echo "${entry#*=}" && return
    done
}

json_string() {  # $1 as a JSON string
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

RECORDS=()
FAILED=()
record() {  # part outcome exit_status seconds command: one more entry of parts.json, rewritten whole
    RECORDS+=("{\"part\": $(json_string "$1"), \"outcome\": \"$2\", \"exit_status\": $3, \"seconds\": $4, \
\"log\": $(json_string "$1.log"), \"command\": $(json_string "$5")}")
    local joined
    joined=$(printf ',\n  %s' "${RECORDS[@]}")
    printf '[\n  %s\n]\n' "${joined:4}" >"$OUT/parts.json.tmp"
    mv "$OUT/parts.json.tmp" "$OUT/parts.json"
}

part() {  # NAME COMMAND...: run it within its limit and the deadline, log it, record it; never stops the script
    local name=$1 limit status=0 outcome=passed started=$SECONDS left
    shift
    limit=$(limit_of "$name")
    left=$((DEADLINE_S - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 30 ]; then
        echo "== $name: skipped, ${left}s left of the run's ${DEADLINE_S}s"
        record "$name" skipped null 0 "$*"
        FAILED+=("$name")
        return
    fi
    echo "== $name (at most ${limit}s): $*"
    echo "\$ $*" >"$OUT/$name.log"
    timeout --kill-after=15 "$limit" "$@" >>"$OUT/$name.log" 2>&1 || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        outcome=timed_out
    elif [ "$status" -ne 0 ]; then
        outcome=failed
    fi
    [ "$outcome" = passed ] || FAILED+=("$name")
    record "$name" "$outcome" "$status" $((SECONDS - started)) "$*"
    echo "   $outcome in $((SECONDS - started))s; the end of $name.log:"
    tail -n 4 "$OUT/$name.log" | sed 's/^/   | /'
}

echo "gpu.sh: $([ "$SMOKE" = 1 ] && echo "SMOKE RUN on the CPU (plumbing only, no measurement)" || echo "on CUDA");" \
     "results in $OUT"
part env "$PYTHON" benchmarks/gpu_report.py env "$OUT/env.json"
part tests "$PYTHON" benchmarks/gpu_report.py tests "$OUT"
part speed-train "$PYTHON" "${SPEED[@]}" --what gemm,train "${TRAIN_REPEATS[@]}" --json "$OUT/speed-train.json"
part speed-call "$PYTHON" "${SPEED[@]}" --what call "${CALL_REPEATS[@]}" --skip-memory --json "$OUT/speed-call.json"
part speed-sample "$PYTHON" "${SPEED[@]}" --what sample "${SAMPLE_REPEATS[@]}" --skip-memory \
    --json "$OUT/speed-sample.json"
part train "$PYTHON" benchmarks/train_throughput.py --preset owt-small --random-tokens --precision bf16 \
    --device "$DEVICE" --json "$OUT/train-owt-small.json" "${TRAIN_RUN[@]}"
part profile "$PYTHON" benchmarks/time_profile.py "${PROFILE[@]}" --dtype bf16 --static-shapes \
    --json "$OUT/profile.json"

echo
"$PYTHON" benchmarks/gpu_report.py summary "$OUT" || FAILED+=(summary)
echo "gpu.sh: ${SECONDS}s; results in $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu.sh: not passed: ${FAILED[*]}" >&2
    exit 1
fi
