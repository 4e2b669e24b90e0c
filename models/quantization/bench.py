"""Bytes model and a CPU timing ratio for quantized linear layers.

  python -m models.quantization.bench [--preset llama-3.1-8b] [--output-json PATH]

`param_bytes_report` counts the device bytes of a preset's parameters (models/presets.py)
with its linear layers in bfloat16 or int4 (group 128, bfloat16 scales; symmetric without
zero points, asymmetric with int8 zero points), embeddings and the LM head in bfloat16 (as
GPTQ / AWQ / llm-compressor checkpoints leave them) or the head in int4 too, and the KV
blocks the saved bytes buy. `cpu_matmul_ratio` times the jnp int4 dequant matmul (the CPU
path) against a bfloat16 matmul of the same shape: a CPU ratio, not a GPU figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.quant_layout import QuantLayout
from pallas_kernels.quant_matmul import quant_matmul_reference

BF16_BYTES = 2


def linear_shapes(cfg) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of one decoder layer's linear layers."""
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    return [("q_proj", h, cfg.num_heads * hd), ("k_proj", h, cfg.num_kv_heads * hd),
            ("v_proj", h, cfg.num_kv_heads * hd), ("o_proj", cfg.num_heads * hd, h),
            ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]


def int4_layout(in_features: int, out_features: int, *, group_size: int = 128,
                symmetric: bool = True) -> QuantLayout:
    return QuantLayout("int4", in_features, out_features, group_k=group_size,
                       has_zeros=not symmetric, scale_dtype="bfloat16")


def param_bytes_report(cfg, *, group_size: int = 128, block_size: int = 16) -> dict:
    """Device bytes of `cfg`'s parameters, bf16 vs int4 linear layers, and the KV blocks gained."""
    shapes = linear_shapes(cfg)
    linear_bf16 = cfg.num_layers * sum(k * n * BF16_BYTES for _, k, n in shapes)
    int4 = {sym: cfg.num_layers * sum(int4_layout(k, n, group_size=group_size, symmetric=sym).param_bytes()
                                      for _, k, n in shapes) for sym in (True, False)}
    embed = cfg.vocab_size * cfg.hidden_size * BF16_BYTES
    head = 0 if cfg.tie_word_embeddings else embed
    head_int4 = 0 if cfg.tie_word_embeddings else \
        int4_layout(cfg.hidden_size, cfg.vocab_size, group_size=group_size).param_bytes()
    norms = (2 * cfg.num_layers + 1) * cfg.hidden_size * BF16_BYTES
    total_bf16 = linear_bf16 + embed + head + norms
    total_int4 = int4[True] + embed + head + norms
    total_int4_head = int4[True] + embed + head_int4 + norms
    bytes_per_block = block_size * cfg.kv_bytes_per_token(BF16_BYTES)
    return {
        "group_size": group_size,
        "linear_bf16_bytes": linear_bf16,
        "linear_int4_sym_bytes": int4[True],
        "linear_int4_asym_bytes": int4[False],
        "linear_ratio_sym": int4[True] / linear_bf16,
        "linear_ratio_asym": int4[False] / linear_bf16,
        "embedding_bytes": embed,
        "lm_head_bf16_bytes": head,
        "total_bf16_bytes": total_bf16,
        "total_int4_bytes": total_int4,
        "total_ratio": total_int4 / total_bf16,
        "total_int4_with_int4_head_bytes": total_int4_head,
        "total_ratio_with_int4_head": total_int4_head / total_bf16,
        "kv_block_size": block_size,
        "kv_bytes_per_block": bytes_per_block,
        "kv_blocks_gained": (total_bf16 - total_int4) // bytes_per_block,
        "kv_tokens_gained": (total_bf16 - total_int4) // bytes_per_block * block_size,
    }


def _median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_matmul_ratio(tokens: int, in_features: int, out_features: int, *, group_size: int = 128,
                     repeats: int = 5, seed: int = 0) -> dict:
    """Median time of the jnp int4 dequant matmul and of a bf16 matmul, same shape, this device."""
    layout = int4_layout(in_features, out_features, group_size=group_size)
    rng = np.random.default_rng(seed)
    specs = layout.param_specs()
    arrays = {"qweight": jnp.asarray(rng.integers(-2**31, 2**31 - 1, specs["qweight"].shape), jnp.int32),
              "scales": jnp.asarray(rng.uniform(0.001, 0.01, specs["scales"].shape), jnp.bfloat16)}
    x = jnp.asarray(rng.normal(size=(tokens, in_features)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(in_features, out_features)) * 0.02, jnp.bfloat16)
    quant = jax.jit(lambda x, a: quant_matmul_reference(x, a, layout=layout))
    dense = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype))
    t_quant = _median_seconds(quant, x, arrays, repeats=repeats)
    t_dense = _median_seconds(dense, x, w, repeats=repeats)
    return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "shape": [tokens, in_features, out_features], "group_size": group_size,
            "int4_dequant_matmul_ms": t_quant * 1e3, "bf16_matmul_ms": t_dense * 1e3,
            "time_ratio_int4_over_bf16": t_quant / t_dense}


def main(argv=None) -> int:
    from models.presets import preset_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-3.1-8b")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--layer", default="gate_proj", help="which linear layer's shape to time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-json")
    args = parser.parse_args(argv)
    cfg = preset_config(args.preset)
    report = param_bytes_report(cfg)
    shapes = {name: (k, n) for name, k, n in linear_shapes(cfg)}
    if args.layer not in shapes:
        raise ValueError(f"--layer must be one of {sorted(shapes)}, got {args.layer!r}")
    timing = cpu_matmul_ratio(args.tokens, *shapes[args.layer], repeats=args.repeats)
    print(f"{args.preset}: linear layers int4 g128 / bf16 = {report['linear_ratio_sym']:.3f}"
          f" (asym {report['linear_ratio_asym']:.3f}); all parameters"
          f" {report['total_int4_bytes'] / 2**30:.2f} / {report['total_bf16_bytes'] / 2**30:.2f} GiB"
          f" = {report['total_ratio']:.3f} (int4 head too: {report['total_ratio_with_int4_head']:.3f});"
          f" KV blocks gained {report['kv_blocks_gained']} ({report['kv_tokens_gained']} tokens)")
    print(f"{timing['backend']} ({timing['device']}) {args.layer} {timing['shape']}: int4 dequant"
          f" matmul {timing['int4_dequant_matmul_ms']:.2f} ms, bf16 matmul {timing['bf16_matmul_ms']:.2f} ms,"
          f" ratio {timing['time_ratio_int4_over_bf16']:.2f} (jnp path; a {timing['backend']} figure)")
    if args.output_json:
        result = {"preset": args.preset, "jax_version": jax.__version__, "machine": platform.machine(),
                  "param_bytes": report, f"{timing['backend']}_timing": timing}
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
