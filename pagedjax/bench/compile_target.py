"""`pagedjax bench compile`: every engine step bucket of a preset, compiled for a GPU target with no GPU.

The engine's steps (model forward through the Pallas kernels, sampler, KV writes into the donated
pool) are built exactly as the runner builds them, against abstract parameters and an abstract KV
pool sized as the target's memory would size it, and compiled ahead of time for the target
(`pallas_kernels.deviceless`: XLA's GPU pipeline, Triton -> PTX -> ptxas -> cubin on this CPU
machine). Per bucket it reports the compile seconds, XLA's temp and argument bytes against the KV
pool's, and per Triton kernel the launch (threads, shared memory) and ptxas' registers and spills.
A tile that does not fit the target (shared memory, registers) fails here as it would on the GPU.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import jax.numpy as jnp

from pagedjax.bench.common import environment
from pagedjax.config import KV_CACHE_DTYPES

# Device memory of the targets (bytes): what sizes the abstract KV pool.
TARGET_MEMORY_BYTES = {"h100": 80 * 10**9}


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    """Options of a compile run (the CLI's flags; see `pagedjax bench compile --help`)."""

    model: str  # a preset name (models/presets.py)
    target: str = "h100"
    dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"
    block_size: int = 16
    max_model_len: int | None = None  # None: the preset's context, at most 8192
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    gpu_memory_utilization: float = 0.9
    max_buckets: int | None = None  # compile only N buckets, spread from the smallest to the largest
    kernel_stats: bool = True  # ptxas -v on every Triton kernel (registers, spills)

    def __post_init__(self):
        if self.target not in TARGET_MEMORY_BYTES:
            raise ValueError(f"target must be one of {sorted(TARGET_MEMORY_BYTES)}, got {self.target!r}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.max_buckets is not None and self.max_buckets < 1:
            raise ValueError(f"max_buckets must be >= 1, got {self.max_buckets}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


def _abstract_runner(cfg: CompileConfig):
    """A ModelRunner of the preset's shapes on abstract parameters (allocates no weights, no pool),
    and the pool size the target's memory gives: (runner, num_blocks, param_bytes)."""
    from models.loader import abstract_model
    from models.presets import preset_config
    from pagedjax.runner import ModelRunner

    model_cfg = preset_config(cfg.model)
    dtype = jnp.dtype(cfg.dtype)
    graphdef, state = abstract_model(model_cfg, dtype)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    param_bytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params))
    max_model_len = cfg.max_model_len or min(model_cfg.max_position_embeddings, 8192)
    runner = ModelRunner(graphdef, params, model_cfg, block_size=cfg.block_size, max_model_len=max_model_len,
                         max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
                         backend="pallas", kv_dtype=dtype, kv_cache_dtype=cfg.kv_cache_dtype)
    budget = TARGET_MEMORY_BYTES[cfg.target] * cfg.gpu_memory_utilization - param_bytes
    num_blocks = int(budget // runner.kv_layout.bytes_per_block)
    if num_blocks < runner.max_blocks_per_seq:
        raise ValueError(f"{cfg.model}'s parameters ({param_bytes / 1e9:.1f} GB) leave no room for one sequence's "
                         f"KV blocks on {cfg.target}")
    return runner, num_blocks, param_bytes


def _kernel_rows(compilation) -> list[dict]:
    """One row per distinct Triton kernel of a compiled step: a kernel launched once per layer is
    one row with its launch count and the worst figures of its instances (each is compiled on its
    own; register counts may differ by a few). The Pallas attention kernels first."""
    rows: dict[str, dict] = {}
    for k in compilation.triton_kernels:
        base = re.sub(r"(_remat\d*|[_.]\d*)+$", "", k.name)  # XLA's per-instance suffixes
        row = rows.setdefault(base, dict(name=base, pallas="attention" in base, launches=0))
        row["launches"] += 1
        for field in ("threads_per_block", "shared_memory_bytes", "registers", "spill_store_bytes",
                      "spill_load_bytes"):
            value = getattr(k, field)
            row[field] = value if row.get(field) is None else max(row[field], value or 0)
    return sorted(rows.values(), key=lambda r: (not r["pallas"], r["name"]))


def run_compile(cfg: CompileConfig, progress=None) -> dict:
    """Compiles every plain-sampling step bucket (what warm-up compiles) of `cfg.model` for
    `cfg.target`; returns the report. `progress(report)` after each bucket, with the report so
    far (a long run can be written out as it goes)."""
    from pagedjax.model_step import step_function
    from pallas_kernels import deviceless

    runner, num_blocks, param_bytes = _abstract_runner(cfg)
    shapes = runner.steps.all_plain_shapes()
    total_buckets = len(shapes)
    if cfg.max_buckets and cfg.max_buckets < total_buckets:  # spread: the smallest, ..., the largest
        n = cfg.max_buckets
        shapes = [shapes[0]] if n == 1 else [shapes[round(i * (total_buckets - 1) / (n - 1))] for i in range(n)]
    pool = runner._pool_struct(num_blocks)
    pool_bytes = num_blocks * runner.kv_layout.bytes_per_block
    rows = []
    for i, shape in enumerate(shapes):
        start = time.perf_counter()
        fn = step_function(runner.graphdef, "pallas", None, shape, runner.max_num_seqs)
        result = deviceless.compile_for_target(fn, *runner.steps.abstract_args(shape, pool), target=cfg.target,
                                               kernel_stats=cfg.kernel_stats, donate_argnums=(1,))
        memory = result.memory_analysis()
        rows.append(dict(num_tokens=shape.num_tokens, num_seqs=shape.num_seqs, table_width=shape.table_width,
                         decode_only=shape.decode_only, compile_s=round(time.perf_counter() - start, 2),
                         temp_bytes=int(memory.temp_size_in_bytes),
                         argument_bytes=int(memory.argument_size_in_bytes),
                         temp_over_pool=round(memory.temp_size_in_bytes / pool_bytes, 6),
                         kernels=_kernel_rows(result)))
        if progress is not None:
            progress(_report(cfg, runner, rows, total_buckets, param_bytes, num_blocks))
    return _report(cfg, runner, rows, total_buckets, param_bytes, num_blocks)


def _report(cfg: CompileConfig, runner, rows: list[dict], total_buckets: int, param_bytes: int,
            num_blocks: int) -> dict:
    pool_bytes = num_blocks * runner.kv_layout.bytes_per_block
    return dict(benchmark="compile", config=dataclasses.asdict(cfg), environment=environment(),
                target=cfg.target, param_bytes=param_bytes, num_kv_blocks=num_blocks, kv_pool_bytes=pool_bytes,
                kv_bytes_per_block=runner.kv_layout.bytes_per_block, max_model_len=runner.max_model_len,
                total_buckets=total_buckets, buckets=rows,
                max_temp_over_pool=max((r["temp_over_pool"] for r in rows), default=None),
                max_spill_bytes=max((k["spill_store_bytes"] or 0 for r in rows for k in r["kernels"]), default=0),
                max_registers=max((k["registers"] or 0 for r in rows for k in r["kernels"]), default=0),
                max_shared_memory_bytes=max((k["shared_memory_bytes"] for r in rows for k in r["kernels"]),
                                            default=0),
                compile_s_total=round(sum(r["compile_s"] for r in rows), 1))


def format_compile_table(report: dict) -> str:
    """A plain-text table of a compile report: one line per bucket."""
    lines = [f"{report['config']['model']} on {report['target']}: params {report['param_bytes'] / 1e9:.2f} GB, "
             f"KV pool {report['num_kv_blocks']} blocks ({report['kv_pool_bytes'] / 1e9:.2f} GB), "
             f"{len(report['buckets'])}/{report['total_buckets']} buckets in {report['compile_s_total']} s",
             f"{'tokens':>7} {'seqs':>5} {'width':>6} {'decode':>6} {'compile s':>9} {'temp MB':>9} "
             f"{'temp/pool':>9}  Pallas kernels (regs, spills, smem KB)"]
    for r in report["buckets"]:
        pallas = [k for k in r["kernels"] if k["pallas"]]
        kernels = ", ".join(f"{k['name']} x{k['launches']} ({k['registers']}, {k['spill_store_bytes']}, "
                            f"{k['shared_memory_bytes'] // 1024})" for k in pallas)
        kernels += f" + {len(r['kernels']) - len(pallas)} XLA Triton fusions"
        lines.append(f"{r['num_tokens']:>7} {r['num_seqs']:>5} {r['table_width']:>6} {str(r['decode_only']):>6} "
                     f"{r['compile_s']:>9.2f} {r['temp_bytes'] / 1e6:>9.1f} {r['temp_over_pool']:>9.4f}  {kernels}")
    return "\n".join(lines)
