"""Quantized weights: parameter bytes and KV blocks gained, and the quantized matmul against bf16.

  python benchmarks/quant_bench.py [--preset llama-3.1-8b] [--memory-gib 80] [--gpu-memory-utilization 0.9]
      [--tokens 16,256] [--layers o_proj,gate_proj] [--repeats 5] --output-json benchmarks/results/quant-<device>-<date>.json

Bytes (no weights, no device memory: the model is built abstractly) for each scheme of
models/quantization/bench.py's SCHEMES, and the KV blocks the saved bytes buy within the memory
budget. Timing: the quantized matmul (`quantized_linear`; the jnp dequantizing path everywhere,
the Pallas kernel too on a GPU) against a bf16 matmul of the same shape, side by side in one run,
for each of the preset's layers named by --layers and each --tokens. On CPU only the ratios mean
anything. Prints two tables and writes JSON (environment, commit, rows).
"""

from __future__ import annotations

import argparse
import sys

import jax

from models.presets import PRESETS, preset_config
from models.quantization.bench import TIMED_SCHEMES, linear_shapes, matmul_timing, param_bytes_table
from pagedjax.bench.common import environment, write_json
from pagedjax.config import KV_CACHE_DTYPES


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 1, got {text!r}")
    return values


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-3.1-8b", choices=sorted(PRESETS))
    parser.add_argument("--memory-gib", type=float, default=80.0, help="device memory of the KV budget")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    parser.add_argument("--tokens", type=_ints, default=[16, 256], help="rows of x (decode 16, prefill 256)")
    parser.add_argument("--layers", default="o_proj,gate_proj", help="the preset's layer shapes to time")
    parser.add_argument("--schemes", default=",".join(TIMED_SCHEMES), help="timed schemes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--output-json")
    args = parser.parse_args(argv)
    if args.memory_gib <= 0 or not 0 < args.gpu_memory_utilization <= 1:
        parser.error("--memory-gib must be > 0 and --gpu-memory-utilization in (0, 1]")
    if args.repeats < 1 or args.block_size < 1:
        parser.error("--repeats and --block-size must be >= 1")
    unknown = set(args.schemes.split(",")) - set(TIMED_SCHEMES)
    if unknown:
        parser.error(f"--schemes: unknown {sorted(unknown)}; choose from {', '.join(TIMED_SCHEMES)}")
    return args


def print_bytes(rows: list[dict], preset: str, budget: str) -> None:
    print(f"\n{preset}: parameter bytes and KV blocks in {budget}")
    print(f"{'scheme':30} {'GiB':>7} {'ratio':>6} {'KV blocks':>10} {'gained':>8}")
    ratio = next(k for k in rows[0] if k.startswith("ratio_to_"))
    for r in rows:
        print(f"{r['scheme']:30} {r['param_bytes'] / 2**30:7.2f} {r[ratio]:6.3f} {r['kv_blocks']:10d}"
              f" {r['kv_blocks_gained']:8d}")


def print_timing(rows: list[dict], device: str) -> None:
    print(f"\nquantized matmul vs bf16 matmul on {device} (median ms)")
    print(f"{'layer':10} {'M,K,N':>17} {'scheme':18} {'backend':10} {'ms':>9} {'bf16 ms':>9} {'ratio':>6}")
    for r in rows:
        shape = ",".join(map(str, r["shape"]))
        print(f"{r['layer']:10} {shape:>17} {r['scheme']:18} {r['backend']:10} {r['ms']:9.3f}"
              f" {r['bf16_matmul_ms']:9.3f} {r['time_ratio_to_bf16']:6.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = preset_config(args.preset)
    budget = f"{args.gpu_memory_utilization} x {args.memory_gib:g} GiB"
    byte_rows = param_bytes_table(PRESETS[args.preset], memory_bytes=int(args.memory_gib * 2**30),
                                  gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size,
                                  kv_cache_dtype=args.kv_cache_dtype)
    print_bytes(byte_rows, args.preset, f"{budget} (KV cache {args.kv_cache_dtype})")
    timing_rows = []
    if not args.no_timing:
        shapes = {name: (k, n) for name, k, n in linear_shapes(cfg)}
        layers = args.layers.split(",")
        bad = [name for name in layers if name not in shapes]
        if bad:
            raise ValueError(f"--layers must name layers of {sorted(shapes)}, got {bad}")
        backends = ["reference", "pallas"] if jax.default_backend() == "gpu" else ["reference"]
        for layer in layers:
            for tokens in args.tokens:
                for row in matmul_timing(tokens, *shapes[layer], args.schemes.split(","), backends,
                                         repeats=args.repeats):
                    timing_rows.append(dict(layer=layer, **row))
        print_timing(timing_rows, f"{jax.default_backend()} ({jax.devices()[0].device_kind})")
    if args.output_json:
        write_json(dict(environment(), preset=args.preset, memory_budget=budget,
                        memory_bytes=int(args.memory_gib * 2**30), gpu_memory_utilization=args.gpu_memory_utilization,
                        kv_cache_dtype=args.kv_cache_dtype,
                        note="KV blocks: the pool of a bf16 model in kv_cache_dtype; budget minus parameters (step activations not counted: the"
                             " same for every scheme). Timing: CPU figures are only ratios.",
                        param_bytes=byte_rows, matmul_timing=timing_rows), args.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
