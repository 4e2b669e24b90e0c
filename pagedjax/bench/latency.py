"""`pagedjax bench latency`: one fixed batch, end to end (vLLM's benchmark_latency), step by step.

Each iteration submits `batch_size` fresh random prompts of `input_len` tokens (fresh, so the
prefix cache never hits) generating exactly `output_len` tokens, and drives `engine.step()`
to the end, timing every step. Reported over the timed iterations (after the warm-up ones,
which compile every shape the timed ones use):
* `latency_s`: end to end per iteration (submission to the last token);
* `ttft_s`: time to first token of the whole batch (the end of the step in which the last
  request sampled its first token, i.e. the batch's prefill), and its per-request mean;
* `decode_step_s`: every decode-only step (all iterations pooled), and its memory-bandwidth
  floor (`roofline.own_batch`); optionally the roofline at other batch sizes too.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from pagedjax.bench.common import environment, summary
from pagedjax.bench.datasets import MAX_TOTAL_LEN


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    """Options of a latency run (the CLI's flags; see `pagedjax bench latency --help`)."""

    model: str | None = None
    dtype: str = "auto"
    seed: int = 0
    weights_dir: str | None = None
    batch_size: int = 8
    input_len: int = 32
    output_len: int = 128
    num_iters_warmup: int = 2
    num_iters: int = 10
    engine: dict = dataclasses.field(default_factory=dict)
    roofline_batches: tuple[int, ...] = ()
    roofline_context: int | None = None
    copy_bytes: int | None = None

    def __post_init__(self):
        for name in ("batch_size", "input_len", "output_len", "num_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_iters_warmup < 0:
            raise ValueError(f"num_iters_warmup must be >= 0, got {self.num_iters_warmup}")


def run_iteration(llm, batch: int, input_len: int, output_len: int, rng: np.random.Generator, tag: str) -> dict:
    """One batch to the end: total seconds, batch and per-request TTFT, per-step records, compile seconds."""
    from pagedjax.bench.engine_run import observe_steps
    from pagedjax.sampling_params import SamplingParams

    engine = llm.engine
    runner = engine.runner
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, detokenize=False)
    records: list[dict] = []

    def on_step(so) -> None:
        records.append(dict(
            decode=all(s.num_tokens == 1 for s in so.scheduled) and all(
                s.start_position >= input_len for s in so.scheduled),
            num_seqs=len(so.scheduled), kv_tokens=sum(s.start_position + s.num_tokens for s in so.scheduled),
            first_tokens=sum(1 for s in so.scheduled if s.sample and s.start_position + s.num_tokens == input_len)))

    compile0 = runner.steps.compile_seconds
    first_token_times = []
    start = time.perf_counter()
    for i in range(batch):
        engine.add_request(f"{tag}-{i}", None, params,
                           prompt_token_ids=rng.integers(0, engine.model_config.vocab_size, input_len).tolist())
    with observe_steps(engine, on_step):
        while engine.has_unfinished_requests():
            n, h0, t0 = len(records), engine.host_seconds, time.perf_counter()
            engine.step()
            t1 = time.perf_counter()
            if len(records) > n:
                rec = records[-1]
                rec.update(seconds=t1 - t0, host_seconds=engine.host_seconds - h0)
                first_token_times += [t1 - start] * rec["first_tokens"]
    total = time.perf_counter() - start
    if len(first_token_times) != batch:
        raise RuntimeError(f"{len(first_token_times)} first tokens seen for a batch of {batch} (preemption?)")
    return dict(seconds=total, ttft_s=max(first_token_times), ttft_mean_s=float(np.mean(first_token_times)),
                records=records, compile_s=runner.steps.compile_seconds - compile0)


def run_latency(cfg: LatencyConfig) -> dict:
    """Runs the latency benchmark described by `cfg` (module docstring); returns the JSON report."""
    import tempfile

    from pagedjax.bench.engine_run import build_llm, engine_config
    from pagedjax.bench.roofline import copy_bandwidth, decode_roofline, step_roofline, weight_bytes_read
    from pagedjax.bench.weights import prepare_model

    with tempfile.TemporaryDirectory(prefix="pagedjax-bench-") as scratch:
        source = prepare_model(cfg.model, cfg.dtype, weights_dir=cfg.weights_dir, seed=cfg.seed, scratch_dir=scratch)
        env = environment()
        on_gpu = env["device"]["platform"] == "gpu"
        bandwidth = copy_bandwidth(cfg.copy_bytes or ((1 << 30) if on_gpu else (256 << 20)))
        max_model_len = cfg.engine.get("max_model_len") or min(
            source.config.max_position_embeddings, max(MAX_TOTAL_LEN, cfg.input_len + cfg.output_len))
        llm = build_llm(source, {**cfg.engine, "max_model_len": max_model_len})
        rng = np.random.default_rng(cfg.seed)
        warm_start = time.perf_counter()
        for i in range(cfg.num_iters_warmup):
            run_iteration(llm, cfg.batch_size, cfg.input_len, cfg.output_len, rng, f"warmup{i}")
        warmup_s = time.perf_counter() - warm_start
        iters = [run_iteration(llm, cfg.batch_size, cfg.input_len, cfg.output_len, rng, f"iter{i}")
                 for i in range(cfg.num_iters)]
        decode = [r for it in iters for r in it["records"] if r["decode"]]
        runner, mcfg = llm.engine.runner, llm.engine.model_config
        own = None
        if decode:
            context_range = f"{cfg.input_len}-{cfg.input_len + cfg.output_len}"
            own = dict(batch=cfg.batch_size, context=context_range, **step_roofline(
                decode, weight_bytes=weight_bytes_read(runner.params, mcfg, cfg.batch_size),
                kv_bytes_per_token=runner.kv_layout.bytes_per_block / runner.block_size,
                bytes_per_s=bandwidth["bytes_per_s"]))
        context = cfg.roofline_context or (512 if on_gpu else 64)
        others = [decode_roofline(llm, b, context, bytes_per_s=bandwidth["bytes_per_s"], seed=cfg.seed)
                  for b in cfg.roofline_batches]
        mean_latency = float(np.mean([it["seconds"] for it in iters]))
        return dict(
            benchmark="latency", schema_version=1, **env, model=source.describe(),
            workload=dict(batch_size=cfg.batch_size, input_len=cfg.input_len, output_len=cfg.output_len,
                          num_iters=cfg.num_iters, num_iters_warmup=cfg.num_iters_warmup, seed=cfg.seed,
                          prompts="fresh uniform random token ids every iteration"),
            engine_config=engine_config(llm),
            timing=dict(clock="time.perf_counter; every step's sampled tokens are fetched to the host",
                        excluded="model loading and start-up (startup_s), the warm-up iterations (warmup_s)",
                        startup_s=llm.engine.startup_seconds, warmup_s=warmup_s,
                        compile_s_in_timed_iters=sum(it["compile_s"] for it in iters)),
            latency_s=summary([it["seconds"] for it in iters]),
            ttft_s=summary([it["ttft_s"] for it in iters]),
            ttft_mean_per_request_s=summary([it["ttft_mean_s"] for it in iters]),
            decode_step_s=summary([r["seconds"] for r in decode]),
            decode_step_host_s=summary([r["host_seconds"] for r in decode]),
            output_tokens_per_s=cfg.batch_size * cfg.output_len / mean_latency,
            roofline=dict(copy_bandwidth=bandwidth, own_batch=own, batches=others))


def format_latency_table(report: dict) -> str:
    """The latency report as a few aligned lines (milliseconds)."""
    w = report["workload"]
    lines = [f"device: {report['device']['device_kind']} ({report['device']['platform']})   model: "
             f"{report['model']['name']} ({report['model']['dtype']})   batch {w['batch_size']}, "
             f"input {w['input_len']}, output {w['output_len']}, {w['num_iters']} iterations",
             f"{'metric':28s} {'mean ms':>10s} {'median ms':>10s} {'p90 ms':>10s} {'p99 ms':>10s}"]
    for key, label in (("latency_s", "end-to-end latency"), ("ttft_s", "time to first token (batch)"),
                       ("ttft_mean_per_request_s", "time to first token (mean)"),
                       ("decode_step_s", "decode step"), ("decode_step_host_s", "  of which host")):
        s = report[key]
        if s["mean"] is None:
            continue
        lines.append(f"{label:28s} {1e3 * s['mean']:10.3f} {1e3 * s['median']:10.3f} {1e3 * s['p90']:10.3f} "
                     f"{1e3 * s['p99']:10.3f}")
    lines.append(f"output tokens/s: {report['output_tokens_per_s']:.1f}")
    roof = report["roofline"]
    lines.append(f"copy bandwidth: {roof['copy_bandwidth']['gb_per_s']:.1f} GB/s (read + write)")
    for b in ([roof["own_batch"]] if roof["own_batch"] else []) + roof["batches"]:
        if "skipped" in b:
            lines.append(f"decode roofline batch {b['batch']}: skipped ({b['skipped']})")
        else:
            lines.append(f"decode roofline batch {b['batch']} ctx {b['context']}: step "
                         f"{1e3 * b['step_s']['median']:.3f} ms, floor {1e3 * b['floor_s']:.3f} ms -> "
                         f"{b['ratio_to_floor']:.2f}x the floor")
    return "\n".join(lines)
