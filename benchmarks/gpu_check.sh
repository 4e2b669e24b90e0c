#!/usr/bin/env bash
# The one GPU check: a single prepared command for a freshly started H100/H200 (jax 0.11 with CUDA,
# torch with CUDA and transformers preinstalled, no network), about 8 minutes in all. It writes
# everything to $OUT as it goes, cheapest and most informative first, so a run killed at its limit
# still returns what finished; $OUT/summary.json says which parts ran, how long, and how they ended.
#
#   OUT=/some/dir PYTHONPATH=$PWD bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run                                  # on CPU, tiny sizes (CI)
#
# Parts (planned seconds on an H100/H200; each part has its own time limit, a part that fails or
# times out is recorded and the next one still runs):
#   environment   10   GPU name and memory, jax/jaxlib/torch versions, missing Python packages
#   gpu-tests     60   pytest -m gpu: every kernel test compiled and run on the GPU
#   kernels       90   decode kernel bandwidth vs the measured copy bandwidth, ragged kernel vs the XLA
#                      reference, at Llama-3.1-8B attention shapes
#   engine-1b    120   llama-3.2-1b preset (random bf16 weights): output tokens/s on a ShareGPT-like
#                      workload vs hf-generate and hf-continuous on the same requests, decode step vs the
#                      bandwidth floor at batch 64 and 256, KV waste, compile time
#   engine-8b    150   the same for llama-3.1-8b (fewer requests; HF baselines on a subset)
#   latency-8b    40   time to first token and per-step decode at batch 64, compile time
# The limits add up to 540 s. Sizes are flags (below). Packages the machine lacks (flax, orbax-checkpoint, llguidance, ...) are
# installed from a wheel directory carried with the tree when $WHEELS is set (pip, --no-index).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
NUM_PROMPTS_1B=400
NUM_PROMPTS_8B=200
BASELINE_PROMPTS=96
DECODE_BATCHES=64,256
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --num-prompts-1b=*) NUM_PROMPTS_1B=${arg#*=} ;;
    --num-prompts-8b=*) NUM_PROMPTS_8B=${arg#*=} ;;
    --baseline-prompts=*) BASELINE_PROMPTS=${arg#*=} ;;
    --decode-batches=*) DECODE_BATCHES=${arg#*=} ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-/tmp/pagedjax-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.json"
echo '{"parts": []}' > "$SUMMARY"

record() {  # name, seconds, exit status
  "$PY" - "$SUMMARY" "$1" "$2" "$3" <<'EOF'
import json, sys
path, name, seconds, status = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
data = json.load(open(path))
data["parts"].append({"part": name, "seconds": round(seconds, 1), "exit_status": status,
                      "result": "ok" if status == 0 else ("timed out" if status == 124 else "failed")})
json.dump(data, open(path, "w"), indent=2)
EOF
}

part() {  # name, time limit in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit} s)" | tee -a "$OUT/log.txt"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.txt") 2>&1
  local status=$?
  record "$name" $((SECONDS - start)) "$status"
  echo "=== $name: exit $status after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
}

if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl >/dev/null 2>&1 || true
fi

part environment 30 "$PY" - "$OUT/environment.json" <<'EOF'
import importlib, json, subprocess, sys
env = {"python": sys.version.split()[0]}
for name in ("jax", "jaxlib", "flax", "torch", "transformers", "orbax.checkpoint", "llguidance", "numpy"):
    try:
        env[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as error:  # noqa: BLE001
        env[name] = f"MISSING ({type(error).__name__}: {error})"
try:
    import jax
    env["devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    stats = jax.devices()[0].memory_stats() or {}
    env["bytes_limit"] = stats.get("bytes_limit")
except Exception as error:  # noqa: BLE001
    env["devices"] = f"unavailable: {error}"
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                        "--format=csv,noheader"], capture_output=True, text=True,
                                       timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
    env["nvidia_smi"] = None
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env, indent=2))
EOF

if [ "$DRY_RUN" = 1 ]; then  # CPU: tiny sizes, the same commands
  part gpu-tests 300 "$PY" -m pytest -q -m gpu tests/kernels -p no:cacheprovider
  part kernels 300 "$PY" benchmarks/kernel_bench.py --smoke --output-json "$OUT/kernels.json"
  part engine-tiny 600 "$PY" -m pagedjax bench throughput --num-prompts 16 --baseline-num-prompts 8 \
    --input-len 16 --output-len 8 --baselines hf-generate,hf-continuous --roofline-batches 4 \
    --roofline-context 16 --roofline-steps 3 --copy-mib 8 --output-json "$OUT/throughput-tiny.json"
  part latency-tiny 300 "$PY" -m pagedjax bench latency --batch-size 4 --input-len 16 --output-len 8 \
    --num-iters-warmup 1 --num-iters 2 --copy-mib 8 --output-json "$OUT/latency-tiny.json"
else
  GPU=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true) | head -1 | tr 'A-Z ' 'a-z-' \
        | tr -cd 'a-z0-9-')
  GPU=${GPU:-gpu}
  part gpu-tests 80 "$PY" -m pytest -q -m gpu tests/kernels -p no:cacheprovider -x
  part kernels 100 "$PY" benchmarks/kernel_bench.py --tune corners --decode-batches 64 256 \
    --decode-contexts 1024 4096 --output-json "$OUT/kernels-$GPU.json"
  part engine-1b 140 "$PY" -m pagedjax bench throughput --model llama-3.2-1b --dtype bfloat16 \
    --num-prompts "$NUM_PROMPTS_1B" --baseline-num-prompts "$BASELINE_PROMPTS" \
    --baselines hf-generate,hf-continuous --roofline-batches "$DECODE_BATCHES" --roofline-context 512 \
    --weights-dir /tmp/pagedjax-weights-1b --output-json "$OUT/throughput-llama-3.2-1b-$GPU.json"
  part engine-8b 150 "$PY" -m pagedjax bench throughput --model llama-3.1-8b --dtype bfloat16 \
    --num-prompts "$NUM_PROMPTS_8B" --baseline-num-prompts "$((BASELINE_PROMPTS / 2))" \
    --baselines hf-continuous --roofline-batches "$DECODE_BATCHES" --roofline-context 512 \
    --weights-dir /tmp/pagedjax-weights-8b --output-json "$OUT/throughput-llama-3.1-8b-$GPU.json"
  part latency-8b 40 "$PY" -m pagedjax bench latency --model llama-3.1-8b --dtype bfloat16 \
    --weights-dir /tmp/pagedjax-weights-8b --batch-size 64 --input-len 512 --output-len 32 \
    --num-iters-warmup 1 --num-iters 3 --output-json "$OUT/latency-llama-3.1-8b-$GPU.json"
fi
cat "$SUMMARY"
