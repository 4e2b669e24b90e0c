"""Command-line arguments of `pagedjax serve` (argparse lives only in entry points like this one).

`add_engine_arguments` is shared with `pagedjax bench serve`, which can start a server itself.
"""

from __future__ import annotations

import argparse
import os

from pagedjax.config import ATTENTION_BACKENDS, SUPPORTED_BLOCK_SIZES, EngineConfig

DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048  # vLLM's API-server default (the offline LLM's is 8192)


def add_engine_arguments(parser: argparse.ArgumentParser, *, max_num_batched_tokens: int, seed: bool = True) -> None:
    """The engine's options (vLLM's names and defaults); `seed=False` leaves `--seed` to the caller."""
    group = parser.add_argument_group("engine")
    group.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    group.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    group.add_argument("--block-size", type=int, default=16, choices=SUPPORTED_BLOCK_SIZES, help="tokens per KV block")
    group.add_argument("--num-kv-blocks", type=int, default=None,
                       help="KV pool size in blocks (default: sized from free device memory)")
    group.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                       help="fraction of device memory for weights, activations and the KV pool (default 0.9)")
    group.add_argument("--max-num-seqs", type=int, default=256, help="sequences per step at most (default 256)")
    group.add_argument("--max-num-batched-tokens", type=int, default=max_num_batched_tokens,
                       help=f"tokens per step at most; longer prompts are chunked (default {max_num_batched_tokens})")
    group.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                       help="devices the model is split over (default 1)")
    group.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                       help="auto: Pallas kernels on GPU, the jnp reference elsewhere")
    if seed:
        group.add_argument("--seed", type=int, default=0,
                           help="the engine's random seed (requests may carry their own)")
    group.add_argument("--no-prefix-caching", action="store_true", help="do not reuse KV blocks of shared prefixes")
    group.add_argument("--precompile", action="store_true",
                       help="compile every step shape before serving (no compile stalls later; slow on a cold cache)")


def engine_config_from_args(args: argparse.Namespace, model: str) -> EngineConfig:
    """The `EngineConfig` of `add_engine_arguments`' options."""
    return EngineConfig(
        model=model, dtype=args.dtype, block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
        gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching, attention_backend=args.attention_backend, seed=args.seed,
        tensor_parallel_size=args.tensor_parallel_size)


def add_serve_parser(sub) -> None:
    """Registers `pagedjax serve` on the subcommand parsers `sub`."""
    p = sub.add_parser(
        "serve", help="run the OpenAI-compatible HTTP server",
        description="Serve a model over OpenAI's HTTP API (/v1/completions, /v1/chat/completions, /v1/models; "
                    "/health, /metrics). Listens on 127.0.0.1 unless --host says otherwise; Ctrl-C or SIGTERM "
                    "stops it after in-flight requests finish.")
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory or Hugging Face hub id (default: the built-in tiny Llama)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("PAGEDJAX_API_KEY"),
                   help="require `Authorization: Bearer KEY` on /v1/* (default: $PAGEDJAX_API_KEY, else none)")
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="names clients use in `model` (default: the MODEL argument)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM (default 10)")
    add_engine_arguments(p, max_num_batched_tokens=DEFAULT_MAX_NUM_BATCHED_TOKENS)
    p.set_defaults(func=run_serve)


def require_serve_extra() -> None:
    """ValueError (a clear CLI message) when the `serve` extra is not installed."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"the server needs {', '.join(missing)}: pip install 'pagedjax[serve]'")


def run_serve(args: argparse.Namespace) -> int:
    """Runs the server of `pagedjax serve`'s arguments until SIGINT/SIGTERM."""
    require_serve_extra()
    from pagedjax.default_model import DEFAULT_MODEL_NAME, default_model_dir
    from pagedjax.server.serve import ServerOptions, serve

    model = args.model or default_model_dir()
    names = tuple(args.served_model_name or ([args.model] if args.model else [DEFAULT_MODEL_NAME]))
    options = ServerOptions(host=args.host, port=args.port, api_key=args.api_key, served_model_names=names,
                            log_level=args.log_level, shutdown_timeout=args.shutdown_timeout)
    return serve(engine_config_from_args(args, model), options, precompile=args.precompile)
