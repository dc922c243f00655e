#!/usr/bin/env bash
# One prepared device call: compile and check every Pallas kernel with the Triton lowering,
# then the GPU benchmarks. Each step has its own time limit so that one hang cannot eat the
# call; every log and JSON lands in $OUT (default runs/gpu_suite).
#
#   PYTHONPATH=. bash experiments/gpu_suite.sh [step ...]     (steps: check nala hyper lip dora)
set -u
OUT=${OUT:-runs/gpu_suite}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
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

for s in $STEPS; do
  case $s in
    check) step gpu_check 210 python experiments/gpu_check.py --size small --size medium \
             --size large --out "$OUT" ;;
    nala) step bench_linear_attention 140 python experiments/bench_linear_attention.py \
            --implementation triton --dtype bfloat16 --batch 2 --heads 8 \
            --seq 4096 16384 65536 --reps 5 --json "$OUT/bench_linear_attention_gpu.json" ;;
    hyper) step bench_hyperattention 130 python experiments/bench_hyperattention.py \
             --implementation triton --n 32768 --n 131072 --reps 5 --json "$OUT/bench_hyperattention_gpu.json" ;;
    lip) step bench_constraints 100 python experiments/bench_constraints.py --size 4096 \
           --json "$OUT/bench_constraints_gpu.json" ;;
    dora) step bench_dora 100 python experiments/bench_dora.py --dtype bfloat16 ;;
  esac
done
cat "$OUT/summary.txt"
