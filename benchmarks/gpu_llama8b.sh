#!/usr/bin/env bash
# The GPU throughput run of issue #5: llama-3.1-8b shape (random bf16 weights), 1000 synthetic
# ShareGPT-like requests, HF transformers generate (static batches) and generate_batch
# (continuous batching), decode roofline at batch 64 and 256, KV waste.
#
# One part per command, each well under 10 minutes (run them in this order on one machine):
#   bash benchmarks/gpu_llama8b.sh engine          # ours on 1000 (+ on the first 512), roofline, KV
#   bash benchmarks/gpu_llama8b.sh hf-generate     # HF generate on the first 512
#   bash benchmarks/gpu_llama8b.sh hf-continuous   # HF continuous batching on the first 512
#   bash benchmarks/gpu_llama8b.sh combine         # -> benchmarks/results/throughput-llama-3.1-8b-<gpu>-<date>.json/.png
#   bash benchmarks/gpu_llama8b.sh latency         # optional: batch 64, 512 in / 128 out
# Parts go to $PARTS (default /tmp/pagedjax-bench-parts) and, when $OUT is set, are copied there
# too, so `combine` (no GPU needed) can also run elsewhere:
#   pagedjax bench combine PARTS/*.json --output-json benchmarks/results/NAME.json --plot
# The weights are written once to $WEIGHTS (16 GB; the same seed rebuilds the same bytes).
# Needs: jax with CUDA, torch with CUDA (else the HF parts stop with a message), matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."

PART=${1:?usage: gpu_llama8b.sh engine|hf-generate|hf-continuous|combine|latency}
PARTS=${PARTS:-/tmp/pagedjax-bench-parts}
WEIGHTS=${WEIGHTS:-/tmp/pagedjax-weights-llama-3.1-8b-bf16}
NUM_PROMPTS=${NUM_PROMPTS:-1000}
BASELINE_PROMPTS=${BASELINE_PROMPTS:-512}   # HF generate on all 1000 would take ~8 min alone
GPU=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true) | head -1 | tr 'A-Z ' 'a-z-' \
      | tr -cd 'a-z0-9-')
GPU=${GPU:-gpu}
DATE=$(date -u +%Y-%m-%d)
mkdir -p "$PARTS"

COMMON=(--model llama-3.1-8b --dtype bfloat16 --seed 0 --weights-dir "$WEIGHTS" --num-prompts "$NUM_PROMPTS"
        --baseline-num-prompts "$BASELINE_PROMPTS")

run_part() {  # name, extra args...
  local name=$1; shift
  python -m pagedjax bench throughput "${COMMON[@]}" "$@" --output-json "$PARTS/$name.json"
  if [ -n "${OUT:-}" ]; then cp "$PARTS/$name.json" "$OUT/"; fi
}

case "$PART" in
  engine)        run_part engine --baselines none --roofline-batches 64,256 --roofline-context 512 ;;
  hf-generate)   run_part hf-generate --no-engine --baselines hf-generate --hf-batch-size 64 ;;
  hf-continuous) run_part hf-continuous --no-engine --baselines hf-continuous ;;
  combine)
    python -m pagedjax bench combine "$PARTS"/engine.json "$PARTS"/hf-generate.json "$PARTS"/hf-continuous.json \
      --output-json "benchmarks/results/throughput-llama-3.1-8b-$GPU-$DATE.json" --plot
    if [ -n "${OUT:-}" ]; then cp benchmarks/results/throughput-llama-3.1-8b-"$GPU"-"$DATE".* "$OUT/"; fi ;;
  latency)
    python -m pagedjax bench latency --model llama-3.1-8b --dtype bfloat16 --weights-dir "$WEIGHTS" \
      --batch-size 64 --input-len 512 --output-len 128 --num-iters-warmup 1 --num-iters 5 --roofline-batches 256 \
      --output-json "benchmarks/results/latency-llama-3.1-8b-$GPU-$DATE.json"
    if [ -n "${OUT:-}" ]; then cp benchmarks/results/latency-llama-3.1-8b-"$GPU"-"$DATE".json "$OUT/"; fi ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
esac
