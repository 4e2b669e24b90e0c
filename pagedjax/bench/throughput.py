"""`pagedjax bench throughput`: offline throughput against baselines measured in the same run.

Order of a run (it matters on a GPU): the model's checkpoint and the workload are prepared on
the host; the Hugging Face baselines run in a child process that has the whole GPU and
releases it when it exits; only then does this process start JAX (which reserves most of the
GPU's memory): copy bandwidth, our engine (warm-up compilation, the timed run, the timed run on
the baselines' subset when there is one), the decode roofline, and last `jax-static`, after the
engine's KV pool has been freed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile

from pagedjax.bench.baselines import ALL_BASELINES, HF_BASELINES, agreement, run_hf_baselines
from pagedjax.bench.common import environment
from pagedjax.bench.datasets import MAX_TOTAL_LEN, Workload, fixed_lengths, load_sharegpt, synthetic_sharegpt
from pagedjax.bench.report import compute_ratios
from pagedjax.bench.weights import ModelSource, prepare_model

logger = logging.getLogger("pagedjax.bench")

EXCLUDED = [
    "our engine: model loading and start-up (startup_s); the warm-up pass (warmup: fresh prompts with the first "
    "max_num_seqs requests' lengths, at most 8 output tokens each); compilation of buckets first met in the timed "
    "loop (excluded_compile_s, subtracted); KV-slot probes (excluded_probe_s, subtracted)",
    "hf-generate: model loading, one 2-token warm-up batch",
    "hf-continuous: model loading, the manager's set-up and (on CUDA) its CUDA-graph warm-up, a 2-token warm-up "
    "of 4 requests (setup_s)",
    "jax-static: one warm-up run of every (prompt width, cache length) shape (warmup_s)",
]


@dataclasses.dataclass(frozen=True)
class ThroughputConfig:
    """Options of a throughput run (the CLI's flags; see `pagedjax bench throughput --help`)."""

    model: str | None = None  # checkpoint dir, hub id or preset; None: the built-in tiny model
    dtype: str = "auto"
    num_prompts: int = 1000
    input_len: int | None = None  # with output_len: fixed lengths instead of the synthetic distribution
    output_len: int | None = None
    dataset: str | None = None  # a ShareGPT-format JSON
    seed: int = 0
    baselines: tuple[str, ...] = ALL_BASELINES
    hf_batch_size: int | None = None  # None: 32 on CUDA, 8 on CPU
    static_batch_size: int | None = None  # None: hf-generate's batch size
    baseline_num_prompts: int | None = None  # baselines run the first N requests (ours runs them too)
    run_engine: bool = True  # False: baselines only (one part of a split run; see `combine`)
    engine: dict = dataclasses.field(default_factory=dict)  # other LLM keyword arguments
    weights_dir: str | None = None  # where a preset's checkpoint is written / reused
    roofline_batches: tuple[int, ...] | None = None  # None: (64, 256) on GPU, (4, 16) elsewhere
    roofline_context: int | None = None  # None: 512 on GPU, 64 elsewhere
    roofline_steps: int = 20
    copy_bytes: int | None = None  # None: 1 GiB on GPU, 256 MiB elsewhere

    def __post_init__(self):
        if self.num_prompts < 1:
            raise ValueError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        if (self.input_len is None) != (self.output_len is None):
            raise ValueError("--input-len and --output-len go together")
        if self.dataset and self.input_len is not None:
            raise ValueError("--dataset and --input-len/--output-len exclude each other")
        if self.baseline_num_prompts is not None and not 1 <= self.baseline_num_prompts:
            raise ValueError(f"--baseline-num-prompts must be >= 1, got {self.baseline_num_prompts}")
        unknown = set(self.baselines) - set(ALL_BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}")
        if not self.run_engine and not self.baselines:
            raise ValueError("nothing to run: no engine (--no-engine) and no baselines")


def resolve_max_model_len(cfg: ThroughputConfig, source: ModelSource) -> int:
    """The engine's context length: as given, else min(model maximum, 2048 or the fixed lengths' total)."""
    if cfg.engine.get("max_model_len"):
        return int(cfg.engine["max_model_len"])
    need = MAX_TOTAL_LEN if cfg.input_len is None else max(MAX_TOTAL_LEN, cfg.input_len + cfg.output_len)
    return min(source.config.max_position_embeddings, need)


def build_workload(cfg: ThroughputConfig, source: ModelSource, max_model_len: int) -> Workload:
    """The requests: a ShareGPT file, fixed lengths, or (default) synthetic ShareGPT-like lengths."""
    vocab = source.config.vocab_size
    if cfg.dataset:
        tokenizer = None
        if source.has_tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source.model_dir)
        return load_sharegpt(cfg.dataset, tokenizer, cfg.num_prompts, seed=cfg.seed, max_model_len=max_model_len)
    if cfg.input_len is not None:
        return fixed_lengths(cfg.num_prompts, cfg.input_len, cfg.output_len, vocab, seed=cfg.seed)
    return synthetic_sharegpt(cfg.num_prompts, vocab, seed=cfg.seed, max_model_len=max_model_len)


def _warn_if_jax_started() -> None:
    from jax._src import xla_bridge

    if getattr(xla_bridge, "backends_are_initialized", lambda: False)():
        logger.warning("JAX was started before the Hugging Face baselines: on a GPU it holds most of the memory")


def _engine_part(cfg, source, workload, subset, max_model_len, on_gpu, report) -> tuple:
    """Our engine: warm-up, the timed run(s), the roofline. Returns (graphdef, params, our outputs)."""
    from pagedjax.bench.engine_run import build_llm, engine_config, reset_prefix_cache, run_engine, warm_up
    from pagedjax.bench.roofline import copy_bandwidth, decode_roofline

    batches = cfg.roofline_batches if cfg.roofline_batches is not None else ((64, 256) if on_gpu else (4, 16))
    bandwidth = copy_bandwidth(cfg.copy_bytes or ((1 << 30) if on_gpu else (256 << 20))) if batches else None
    llm = build_llm(source, {**cfg.engine, "max_model_len": max_model_len})
    warm = warm_up(llm, workload, seed=cfg.seed)
    ours = run_engine(llm, workload, tag="run")
    tokens = ours.pop("token_ids")
    report["kv_memory"] = ours.pop("kv_memory")
    report.update(ours)
    report["engine_config"] = engine_config(llm)
    report["timing"].update(startup_s=llm.engine.startup_seconds, warmup=warm)
    if subset is not workload:
        reset_prefix_cache(llm)
        part = run_engine(llm, subset, tag="subset", probe_kv=False)
        part.pop("token_ids"), part.pop("kv_memory")
        report["ours_on_baseline_subset"] = dict(part, workload_fingerprint=subset.fingerprint())
    if batches:
        context = cfg.roofline_context or (512 if on_gpu else 64)
        report["roofline"] = dict(copy_bandwidth=bandwidth, batches=[
            decode_roofline(llm, b, context, bytes_per_s=bandwidth["bytes_per_s"], steps=cfg.roofline_steps,
                            seed=cfg.seed) for b in batches])
    runner = llm.engine.runner
    graphdef, params = runner.graphdef, runner.params
    runner.kv_pool.delete()  # the engine is done: give its KV pool back before jax-static
    return graphdef, params, tokens


def run_throughput(cfg: ThroughputConfig) -> dict:
    """Runs the benchmark described by `cfg` (module docstring) and returns the JSON report."""
    with tempfile.TemporaryDirectory(prefix="pagedjax-bench-") as scratch:
        source = prepare_model(cfg.model, cfg.dtype, weights_dir=cfg.weights_dir, seed=cfg.seed, scratch_dir=scratch)
        max_model_len = resolve_max_model_len(cfg, source)
        workload = build_workload(cfg, source, max_model_len)
        k = cfg.baseline_num_prompts
        subset = workload.head(k) if k is not None and k < len(workload) else workload
        baselines, hf_meta = {}, None
        hf_names = [b for b in cfg.baselines if b in HF_BASELINES]
        if hf_names:
            _warn_if_jax_started()
            baselines, hf_meta = run_hf_baselines(source, subset, hf_names, batch_size=cfg.hf_batch_size,
                                                  scratch_dir=scratch)
        env = environment()  # starts JAX
        on_gpu = env["device"]["platform"] == "gpu"
        report = dict(benchmark="throughput", schema_version=1, **env, model=source.describe(),
                      workload=workload.describe(), engine_config=None,
                      timing=dict(clock="time.perf_counter; every step's sampled tokens are fetched to the host",
                                  excluded=EXCLUDED),
                      requests_per_s=None, output_tokens_per_s=None, total_tokens_per_s=None, elapsed_s=None)
        tokens = None
        if cfg.run_engine:
            graphdef, params, tokens = _engine_part(cfg, source, workload, subset, max_model_len, on_gpu, report)
        if "jax-static" in cfg.baselines:
            if not cfg.run_engine:
                from models.loader import load_params, resolve_dtype

                graphdef, params = load_params(source.config, source.model_dir,
                                               resolve_dtype(source.dtype, source.config))
            from pagedjax.bench.static_baseline import run_static

            hf_bs = baselines.get("hf-generate", {}).get("batch_size")
            static_bs = cfg.static_batch_size or hf_bs or (32 if on_gpu else 8)
            baselines["jax-static"] = run_static(graphdef, params, subset, batch_size=static_bs)
        for name, fig in baselines.items():
            fig["workload_fingerprint"] = subset.fingerprint()
            theirs = fig.pop("token_ids", None)
            if tokens is not None and theirs is not None:
                fig["agreement_with_ours"] = agreement(tokens[: len(subset)], theirs)
        report["baselines"] = baselines
        report["hf_environment"] = hf_meta
        report["ratios"] = compute_ratios(report)
        report["host_load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return report
