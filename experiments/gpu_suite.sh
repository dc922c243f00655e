#!/usr/bin/env bash
# One prepared device call: compile and check every Pallas kernel with the Triton lowering
# (recording the verified kernels), then the GPU benchmarks. Each step has its own time limit
# so that one hang cannot eat the call; every log and JSON lands in $OUT (default
# runs/gpu_suite), with the updated records in $OUT/gpu_verified.json.
#
#   bash experiments/gpu_suite.sh [step ...]     (steps: check nala hyper lip dora)
set -u
OUT=${OUT:-runs/gpu_suite}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=${*:-check nala hyper lip}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/card.txt" 2>&1
python -c "import jax; print(jax.__version__, jax.devices())" >> "$OUT/card.txt" 2>&1
cat "$OUT/card.txt"

step() {  # step NAME LIMIT_S command...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"
  tail -n 40 "$OUT/$name.log"
}

bench() {  # bench NAME LIMIT_S flags...: python -m experiments bench NAME --out $OUT flags...
  local name=$1 limit=$2
  shift 2
  step "bench_$name" "$limit" python -m experiments bench "$name" --out "$OUT" "$@"
}

for s in $STEPS; do
  case $s in
    check) step gpu_check 210 python -m experiments gpu-check --size small --size medium \
             --size large --out "$OUT" --record
           cp pallas_kernels/gpu_verified.json "$OUT/" 2>/dev/null ;;
    nala) bench linear_attention 140 --implementation triton --dtype bfloat16 --batch 2 \
            --heads 8 --seq 4096 16384 65536 --reps 5 ;;
    hyper) bench hyperattention 130 --implementation triton --n 32768 --n 131072 --reps 5 ;;
    lip) bench constraints 100 --size 4096 ;;
    dora) bench dora 100 --dtype bfloat16 ;;
  esac
done
cat "$OUT/summary.txt"
