"""Command-line arguments of `pagedjax serve` (argparse lives only in entry points like this one).

The engine's options are generated from `EngineConfig` (pagedjax/engine_args.py), with the
API server's default max_num_batched_tokens; `add_server_engine_arguments` is shared with
`pagedjax bench serve`, which can start a server itself.
"""

from __future__ import annotations

import argparse
import os

from pagedjax.config import DEFAULT_SERVER_MAX_NUM_BATCHED_TOKENS
from pagedjax.engine_args import (add_dataclass_arguments, add_engine_arguments, dataclass_from_args,  # noqa: F401
                                  engine_config_from_args)
from pagedjax.server.limits import ServerLimits


def add_server_engine_arguments(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """The engine's options as the server takes them (vLLM's API-server defaults), plus
    `--precompile/--no-precompile`."""
    add_engine_arguments(parser, defaults=dict(max_num_batched_tokens=DEFAULT_SERVER_MAX_NUM_BATCHED_TOKENS),
                         exclude=exclude)
    parser.add_argument("--precompile", action=argparse.BooleanOptionalAction, default=True,
                        help="compile every step shape before reporting healthy, so no request waits for a "
                             "compile (default: on; the persistent compilation cache makes a second start fast)")


def add_serve_parser(sub) -> None:
    """Registers `pagedjax serve` on the subcommand parsers `sub`."""
    p = sub.add_parser(
        "serve", help="run the OpenAI-compatible HTTP server",
        description="Serve a model over OpenAI's HTTP API (/v1/completions, /v1/chat/completions, /v1/embeddings, "
                    "/v1/models; /tokenize, /detokenize, /health, /metrics). Listens on 127.0.0.1 unless --host "
                    "says otherwise; Ctrl-C or SIGTERM "
                    "stops it after in-flight requests finish.")
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory or Hugging Face hub id (default: the built-in model, pydoc-llama)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get("PAGEDJAX_API_KEY"),
                   help="require `Authorization: Bearer KEY` on every route but /health (default: "
                        "$PAGEDJAX_API_KEY, else none)")
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="names clients use in `model` (default: the MODEL argument)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--shutdown-timeout", type=float, default=5.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM before they are cancelled "
                        "(default 5)")
    p.add_argument("--limit-concurrency", type=int, default=1024,
                   help="connections at once before new ones get 503 (default 1024)")
    p.add_argument("--timeout-keep-alive", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    p.add_argument("--max-header-bytes", type=int, default=64 * 1024,
                   help="the most bytes of a request line and headers (default 65536)")
    tools = p.add_argument_group("tool calling and reasoning")
    tools.add_argument("--enable-auto-tool-choice", action="store_true",
                       help='serve tool_choice "auto" (and tools without tool_choice), reading calls with '
                            '--tool-call-parser; without it such requests get a 400, as in vLLM')
    tools.add_argument("--tool-call-parser", default=None, metavar="NAME",
                       help="the model's tool-call format: hermes, qwen3, llama3_json, llama4_json, mistral")
    tools.add_argument("--reasoning-parser", default=None, metavar="NAME",
                       help="split <think> reasoning into reasoning_content: deepseek_r1, qwen3")
    add_dataclass_arguments(p, ServerLimits, title="request limits")
    add_server_engine_arguments(p)
    p.set_defaults(func=run_serve)


def require_serve_extra() -> None:
    """ValueError (a clear CLI message) when the `serve` extra is not installed."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"the server needs {', '.join(missing)}: pip install 'pagedjax[serve]'")


def server_options_from_args(args: argparse.Namespace):
    """The `ServerOptions` of `pagedjax serve`'s arguments (ValueError for inconsistent ones)."""
    from pagedjax.default_model import DEFAULT_MODEL_NAME
    from pagedjax.server.chat_options import ChatOptions
    from pagedjax.server.serve import ServerOptions

    names = tuple(args.served_model_name or ([args.model] if args.model else [DEFAULT_MODEL_NAME]))
    chat = ChatOptions(enable_auto_tool_choice=args.enable_auto_tool_choice, tool_call_parser=args.tool_call_parser,
                       reasoning_parser=args.reasoning_parser)
    return ServerOptions(host=args.host, port=args.port, api_key=args.api_key, served_model_names=names,
                         log_level=args.log_level, shutdown_timeout=args.shutdown_timeout,
                         limits=dataclass_from_args(ServerLimits, args), limit_concurrency=args.limit_concurrency,
                         timeout_keep_alive=args.timeout_keep_alive, max_header_bytes=args.max_header_bytes, chat=chat)


def run_serve(args: argparse.Namespace) -> int:
    """Runs the server of `pagedjax serve`'s arguments until SIGINT/SIGTERM."""
    require_serve_extra()
    from pagedjax.default_model import default_model_dir
    from pagedjax.server.serve import serve

    options = server_options_from_args(args)  # NOTE: before the model loads, so bad options fail fast
    model = args.model or default_model_dir()
    return serve(engine_config_from_args(args, model), options, precompile=args.precompile)
