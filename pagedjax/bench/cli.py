"""argparse for `pagedjax bench {throughput,latency,combine,compile}` (registered by `pagedjax/cli.py`)."""

from __future__ import annotations

import argparse
import sys


def _ints(text: str) -> tuple[int, ...]:
    """'64,256' -> (64, 256); 'none' or '' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_model_and_engine(p) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory, hub id, or preset (llama-3.2-1b, llama-3.1-8b, qwen2.5-7b; random "
                        "weights); default: the built-in model, pydoc-llama")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's; bfloat16 for presets), float32, "
                                                   "bfloat16 or float16")
    p.add_argument("--seed", type=int, default=0, help="seed of the requests and of a preset's weights")
    p.add_argument("--weights-dir", default=None,
                   help="write a preset's checkpoint here and reuse it in later runs (default: a temporary directory)")
    from pagedjax.engine_args import add_engine_arguments

    add_engine_arguments(p, exclude=_OWN_OPTIONS, title="engine options (as LLM's)")


# Engine options the benchmarks set themselves (--dtype and --seed above; the tokenizer from the source).
_OWN_OPTIONS = ("dtype", "seed", "skip_tokenizer_init", "tokenizer")


def _engine_options(args) -> dict:
    """The `LLM` keyword arguments of the generated engine options."""
    from pagedjax.config import EngineConfig

    return {name: getattr(args, name) for name in EngineConfig.field_names()
            if name not in _OWN_OPTIONS and name != "model" and hasattr(args, name)}


def _add_output(p) -> None:
    p.add_argument("--output-json", default=None, help="write the report here")
    p.add_argument("--plot", action="store_true", help="also write a bar chart (matplotlib) beside the JSON, .png")


def _add_throughput(sub) -> None:
    from pagedjax.bench.baselines import ALL_BASELINES

    p = sub.add_parser("throughput", help="offline throughput against HF transformers and a static JAX baseline",
                       description="Offline throughput (vLLM's benchmark_throughput): all requests submitted at "
                                   "once, greedy, ignore_eos, exact output lengths; baselines measured in the same "
                                   "run on the same weights and requests.")
    _add_model_and_engine(p)
    w = p.add_argument_group("workload")
    w.add_argument("--num-prompts", type=int, default=1000)
    w.add_argument("--input-len", type=int, default=None, help="fixed prompt length (with --output-len)")
    w.add_argument("--output-len", type=int, default=None, help="fixed output length (with --input-len)")
    w.add_argument("--dataset", default=None,
                   help="ShareGPT-format JSON (default: synthetic ShareGPT-like lengths, random token ids)")
    b = p.add_argument_group("baselines")
    b.add_argument("--baselines", default="all",
                   help=f"comma-separated subset of {','.join(ALL_BASELINES)}, 'all' (default) or 'none'")
    b.add_argument("--hf-batch-size", type=int, default=None, help="hf-generate's static batch (default 32 on "
                                                                   "CUDA, 8 on CPU)")
    b.add_argument("--static-batch-size", type=int, default=None, help="jax-static's batch (default: hf's)")
    b.add_argument("--baseline-num-prompts", type=int, default=None,
                   help="run the baselines on the first N requests only (our engine then runs them too, and "
                        "ratios compare like with like)")
    b.add_argument("--no-engine", action="store_true",
                   help="skip our engine (one part of a split run; merge parts with 'bench combine')")
    r = p.add_argument_group("decode roofline")
    r.add_argument("--roofline-batches", type=_ints, default=None,
                   help="decode batch sizes (default 64,256 on GPU, 4,16 elsewhere; 'none' to skip)")
    r.add_argument("--roofline-context", type=int, default=None, help="prompt length (default 512 GPU, 64 CPU)")
    r.add_argument("--roofline-steps", type=int, default=20, help="timed decode steps per batch")
    r.add_argument("--copy-mib", type=int, default=None, help="copy-bandwidth array size (default 1024 GPU, 256 CPU)")
    _add_output(p)
    p.set_defaults(func=_run_throughput)


def require_torch_for(baselines: tuple[str, ...]) -> None:
    """ValueError (a one-line CLI error) when a Hugging Face baseline is asked for without PyTorch."""
    import importlib.util

    from pagedjax.bench.baselines import HF_BASELINES

    wanted = [b for b in baselines if b in HF_BASELINES]
    if wanted and importlib.util.find_spec("torch") is None:
        raise ValueError(f"the {' and '.join(wanted)} baseline{'s need' if len(wanted) > 1 else ' needs'} PyTorch, "
                         f"which is not installed: install the test extra (pip install -e '.[test]') or torch, or "
                         f"leave the HF baselines out with --baselines none (or --baselines jax-static)")


def _run_throughput(args) -> int:
    from pagedjax.bench.baselines import parse_baselines
    from pagedjax.bench.throughput import ThroughputConfig, run_throughput

    baselines = parse_baselines(args.baselines)
    require_torch_for(baselines)
    cfg = ThroughputConfig(
        model=args.model, dtype=args.dtype, num_prompts=args.num_prompts, input_len=args.input_len,
        output_len=args.output_len, dataset=args.dataset, seed=args.seed, baselines=baselines,
        hf_batch_size=args.hf_batch_size, static_batch_size=args.static_batch_size,
        baseline_num_prompts=args.baseline_num_prompts, run_engine=not args.no_engine,
        engine=_engine_options(args), weights_dir=args.weights_dir, roofline_batches=args.roofline_batches,
        roofline_context=args.roofline_context, roofline_steps=args.roofline_steps,
        copy_bytes=args.copy_mib << 20 if args.copy_mib else None)
    return _finish(run_throughput(cfg), args)


def _finish(report: dict, args) -> int:
    from pagedjax.bench.common import write_json
    from pagedjax.bench.report import format_table, plot_path, plot_throughput

    if report["benchmark"] == "latency":
        from pagedjax.bench.latency import format_latency_table

        print(format_latency_table(report))
    else:
        print(format_table(report))
    if args.output_json:
        write_json(report, args.output_json)
        print(f"wrote {args.output_json}", file=sys.stderr)
        if args.plot and report["benchmark"] == "throughput":
            print(f"wrote {plot_throughput(report, plot_path(args.output_json))}", file=sys.stderr)
    elif args.plot:
        raise ValueError("--plot needs --output-json (the PNG goes beside it)")
    return 0


def _add_latency(sub) -> None:
    p = sub.add_parser("latency", help="latency of one fixed batch (vLLM's benchmark_latency)",
                       description="Latency of a fixed batch: end-to-end, time to first token (the batch's prefill), "
                                   "per-step decode time and its memory-bandwidth floor.")
    _add_model_and_engine(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-iters-warmup", type=int, default=2)
    p.add_argument("--num-iters", type=int, default=10)
    p.add_argument("--roofline-batches", type=_ints, default=(),
                   help="also the decode roofline at these batch sizes (default: only the run's own batch)")
    p.add_argument("--roofline-context", type=int, default=None, help="prompt length (default 512 GPU, 64 CPU)")
    p.add_argument("--copy-mib", type=int, default=None, help="copy-bandwidth array size (default 1024 GPU, 256 CPU)")
    _add_output(p)
    p.set_defaults(func=_run_latency)


def _run_latency(args) -> int:
    from pagedjax.bench.latency import LatencyConfig, run_latency

    engine = _engine_options(args)
    cfg = LatencyConfig(model=args.model, dtype=args.dtype, seed=args.seed, weights_dir=args.weights_dir,
                        batch_size=args.batch_size, input_len=args.input_len, output_len=args.output_len,
                        num_iters_warmup=args.num_iters_warmup, num_iters=args.num_iters, engine=engine,
                        roofline_batches=args.roofline_batches, roofline_context=args.roofline_context,
                        copy_bytes=args.copy_mib << 20 if args.copy_mib else None)
    return _finish(run_latency(cfg), args)


def _add_combine(sub) -> None:
    p = sub.add_parser("combine", help="merge the parts of a split throughput run into one report",
                       description="Merges throughput reports of one split run (same model, weights, requests and "
                                   "device; e.g. our engine in one command, each HF baseline in another) and "
                                   "recomputes the ratios.")
    p.add_argument("parts", nargs="+", help="throughput JSON reports")
    _add_output(p)
    p.set_defaults(func=_run_combine)


def _run_combine(args) -> int:
    import json

    from pagedjax.bench.combine import combine

    parts = []
    for path in args.parts:
        with open(path) as f:
            parts.append(json.load(f))
    return _finish(combine(parts), args)


# The engine options that shape the compiled steps.
_COMPILE_OPTIONS = ("kv_cache_dtype", "block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
                    "gpu_memory_utilization")


def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="AOT-compile every engine step bucket of a preset for a GPU target (no GPU)",
                       description="Compiles every step bucket warm-up would compile, for the target GPU, on this "
                                   "machine (needs jax-cuda12-plugin and nvidia-cuda-nvcc-cu12, in the test extra; "
                                   "JAX_PLATFORMS=cpu): compile seconds, temp bytes against the KV pool, and per "
                                   "Triton kernel registers, spills and shared memory.")
    p.add_argument("--model", required=True, help="a preset (e.g. llama-3.1-8b; see models/presets.py)")
    p.add_argument("--target", default="h100", help="the GPU target (h100: sm_90, also right for H200)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    from pagedjax.config import EngineConfig
    from pagedjax.engine_args import add_engine_arguments

    add_engine_arguments(p, exclude=tuple(n for n in EngineConfig.field_names() if n not in _COMPILE_OPTIONS),
                         title="engine options (as LLM's)")
    p.add_argument("--max-buckets", type=int, default=None,
                   help="compile only N buckets, spread from the smallest to the largest")
    p.add_argument("--no-kernel-stats", action="store_true", help="skip ptxas -v (registers, spills)")
    p.add_argument("--output-json", default=None, help="write the report here")
    p.set_defaults(func=_run_compile)


def _run_compile(args) -> int:
    from pagedjax.bench.common import write_json
    from pagedjax.bench.compile_target import CompileConfig, format_compile_table, run_compile

    options = {name: getattr(args, name) for name in _COMPILE_OPTIONS if getattr(args, name) is not None}
    cfg = CompileConfig(model=args.model, target=args.target, dtype=args.dtype, max_buckets=args.max_buckets,
                        kernel_stats=not args.no_kernel_stats, **options)

    def progress(report):
        row = report["buckets"][-1]
        print(f"[{len(report['buckets'])}/{report['total_buckets']}] tokens {row['num_tokens']} seqs "
              f"{row['num_seqs']}: {row['compile_s']} s", file=sys.stderr, flush=True)
        if args.output_json:  # written as it goes: a long run's finished buckets are kept
            write_json(report, args.output_json)

    report = run_compile(cfg, progress)
    print(format_compile_table(report))
    if args.output_json:
        write_json(report, args.output_json)
        print(f"wrote {args.output_json}", file=sys.stderr)
    return 0


def add_bench_parser(sub) -> None:
    """Registers `bench` and its subcommands on the top-level subparsers `sub`."""
    p = sub.add_parser("bench", help="throughput and latency benchmarks (JSON + table)",
                       description="Benchmarks: throughput (with baselines), latency, combine (split runs).")
    bench_sub = p.add_subparsers(dest="bench_command", required=True)
    _add_throughput(bench_sub)
    _add_latency(bench_sub)
    _add_combine(bench_sub)
    _add_compile(bench_sub)
    from pagedjax.bench.serve_cli import register as add_serve  # `bench serve` (online serving)

    add_serve(bench_sub)
