"""Mixture-of-experts step cost follows the routed tokens: the routed MoE (tokens sorted by expert,
grouped matmuls: `impl="tiled"`) against a dense all-experts compute (`impl="dense"`: every expert
on every token, weighted by the routing) and jax's `ragged_dot` (`impl="ragged_dot"`, dense
underneath in jax 0.10.2), in one run, on one MoE block (models/blocks/moe.py) with the same
weights and inputs, for a few token counts and top-k.

Per case it reports:
  * FLOPs from XLA's cost analysis of the compiled function (`compiled.cost_analysis()`). XLA
    counts a while loop's body once, whatever its trip count; the tiled impl's three grouped
    matmuls are such loops, with one trip per work item (`tile` rows of one expert), so its
    executed FLOPs are the cost analysis' + (work items - 1) x the cost analysis of one work
    item (a grouped matmul compiled alone: its loop body, once), work items counted from this
    input's routing. Cross-checked against the analytic count 2 x rows multiplied x 3 x H x I
    (+ the router).
  * the median time of the compiled function (warm-up first, `block_until_ready`), and
  * max |tiled - dense| of the outputs (they compute the same thing).

    PYTHONPATH=. python benchmarks/moe_bench.py --output-json benchmarks/results/moe-cpu-DATE.json
    PYTHONPATH=. python benchmarks/moe_bench.py --smoke --output-json /tmp/moe.json   (tiny; checks it runs)

CPU times are only meaningful as ratios within one run (the JSON records the host's load).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.blocks.grouped_matmul import default_tile_rows, grouped_matmul
from models.blocks.moe import MOE_IMPLS, MoE, route
from models.config import ModelConfig, MoeConfig
from pagedjax.bench.common import environment, write_json


@dataclasses.dataclass(frozen=True)
class BenchShape:
    """The MoE block measured: `num_experts` experts of width `intermediate` over `hidden`."""

    hidden: int
    intermediate: int
    num_experts: int

    def model_config(self, top_k: int) -> ModelConfig:
        moe = MoeConfig(num_experts=self.num_experts, top_k=top_k, intermediate_size=self.intermediate,
                        norm_topk_prob=True)
        return ModelConfig(architecture="MixtralForCausalLM", vocab_size=8, hidden_size=self.hidden,
                           intermediate_size=self.intermediate, num_layers=1, num_heads=1, num_kv_heads=1,
                           head_dim=8, max_position_embeddings=16, moe=moe)


FULL = dict(shape=BenchShape(hidden=256, intermediate=512, num_experts=16), tokens=(16, 64, 256, 1024),
            top_k=(1, 2, 4), iters=5)
SMOKE = dict(shape=BenchShape(hidden=32, intermediate=48, num_experts=8), tokens=(8, 32), top_k=(2,), iters=2)


def hlo_flops(compiled) -> float:
    """FLOPs of a compiled function by XLA's cost analysis (while-loop bodies counted once)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def median_ms(fn, args, *, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def work_item_flops(rows: int, fan_in: int, fan_out: int, num_experts: int, tile: int) -> float:
    """XLA's FLOPs of one tiled work item (`tile` rows times one expert's [fan_in, fan_out]): a
    grouped matmul compiled alone, whose loop body the cost analysis counts once."""
    x = jax.ShapeDtypeStruct((rows, fan_in), jnp.float32)
    w = jax.ShapeDtypeStruct((num_experts, fan_in, fan_out), jnp.float32)
    sizes = jax.ShapeDtypeStruct((num_experts,), jnp.int32)
    fn = jax.jit(lambda x, w, s: grouped_matmul(x, w, s, tile_rows=tile))
    return hlo_flops(fn.lower(x, w, sizes).compile())


def measure(shape: BenchShape, tokens: int, top_k: int, *, iters: int, seed: int = 0) -> dict:
    """One case: every impl's FLOPs and time on the same weights and tokens."""
    cfg = shape.model_config(top_k)
    x = jax.random.normal(jax.random.key(seed + 1), (tokens, shape.hidden), jnp.float32)  # [T, H]
    result = dict(tokens=tokens, top_k=top_k, impls={})
    outputs = {}
    for impl in MOE_IMPLS:
        graphdef, state = nnx.split(MoE(cfg, dtype=jnp.float32, rngs=nnx.Rngs(seed), impl=impl))  # same weights
        fn = jax.jit(lambda state, x, graphdef=graphdef: nnx.merge(graphdef, state)(x))
        compiled = fn.lower(state, x).compile()
        outputs[impl] = np.asarray(compiled(state, x))
        result["impls"][impl] = dict(hlo_flops=hlo_flops(compiled), ms=median_ms(compiled, (state, x), iters=iters))
        if impl == "tiled":
            module = nnx.merge(graphdef, state)
            _, experts = route(module.router(x), cfg.moe)  # this input's routing
    sizes = np.bincount(np.asarray(experts).reshape(-1), minlength=shape.num_experts)  # [E] rows per expert
    tile = default_tile_rows(tokens * top_k, shape.num_experts)
    items = int(sum(math.ceil(n / tile) for n in sizes))
    rows, h, i, e = tokens * top_k, shape.hidden, shape.intermediate, shape.num_experts
    per_item = 2 * work_item_flops(rows, h, i, e, tile) + work_item_flops(rows, i, h, e, tile)  # gate, up; down
    tiled = result["impls"]["tiled"]
    tiled.update(hlo_flops_loops_once=tiled["hlo_flops"], work_items=items, tile_rows=tile,
                 hlo_flops=tiled["hlo_flops"] + (items - 1) * per_item,
                 analytic_flops=2 * items * tile * 3 * h * i + 2 * tokens * h * e)
    dense = result["impls"]["dense"]
    result.update(
        group_sizes=sizes.tolist(), routed_rows=rows,
        analytic_routed_flops=2 * rows * 3 * h * i, analytic_dense_flops=2 * tokens * e * 3 * h * i,
        flop_ratio_dense_over_tiled=dense["hlo_flops"] / tiled["hlo_flops"],
        time_ratio_dense_over_tiled=dense["ms"] / tiled["ms"], ideal_ratio=e / top_k,
        max_abs_diff_tiled_vs_dense=float(np.abs(outputs["tiled"] - outputs["dense"]).max()),
        max_abs_diff_ragged_dot_vs_dense=float(np.abs(outputs["ragged_dot"] - outputs["dense"]).max()))
    return result


def table(results: list[dict]) -> str:
    head = (f"{'tokens':>6} {'top_k':>5} {'tiled GFLOP':>11} {'dense GFLOP':>11} {'ragged GFLOP':>12} "
            f"{'dense/tiled':>11} {'E/k':>5} {'tiled ms':>9} {'dense ms':>9} {'ragged ms':>9} {'t dense/tiled':>13}")
    lines = [head, "-" * len(head)]
    for r in results:
        t, d, g = (r["impls"][k] for k in ("tiled", "dense", "ragged_dot"))
        lines.append(f"{r['tokens']:>6} {r['top_k']:>5} {t['hlo_flops'] / 1e9:>11.4f} {d['hlo_flops'] / 1e9:>11.4f} "
                     f"{g['hlo_flops'] / 1e9:>12.4f} {r['flop_ratio_dense_over_tiled']:>11.2f} "
                     f"{r['ideal_ratio']:>5.1f} {t['ms']:>9.3f} {d['ms']:>9.3f} {g['ms']:>9.3f} "
                     f"{r['time_ratio_dense_over_tiled']:>13.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-json", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks that the benchmark runs")
    parser.add_argument("--iters", type=int, default=None, help="timed runs per impl (median)")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    iters = args.iters or plan["iters"]
    if iters < 1:
        raise ValueError(f"--iters must be >= 1, got {iters}")
    results = [measure(plan["shape"], tokens, k, iters=iters) for k in plan["top_k"] for tokens in plan["tokens"]]
    print(table(results))
    report = dict(benchmark="moe", smoke=args.smoke, **environment(), shape=dataclasses.asdict(plan["shape"]),
                  iters=iters, flops_method="XLA cost_analysis; tiled: + (work items - 1) x one work item's",
                  results=results)
    write_json(report, args.output_json)
    print(f"wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
