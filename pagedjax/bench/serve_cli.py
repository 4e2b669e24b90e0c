"""Arguments and driver of `pagedjax bench serve` (argparse lives only in entry points).

Against a running server (`--base-url http://127.0.0.1:8000`), or one it starts in-process on a
free 127.0.0.1 port for the run (`--model DIR`, or neither option: the built-in tiny model).
Prints the table and writes the JSON (`--output-json`): figures, workload, per-request values,
the client's environment (device, jax, commit) and the server's (device, compiles during the run).
Also runnable as `python -m pagedjax.bench.serve_cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys

from pagedjax.bench import datasets
from pagedjax.bench.common import environment, write_json
from pagedjax.bench.serve import format_table, run_benchmark


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`bench serve`'s options (engine options apply when it starts the server itself)."""
    from pagedjax.server.cli import add_server_engine_arguments

    target = p.add_mutually_exclusive_group()
    target.add_argument("--base-url", default=None,
                        help="a running OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", default=None,
                        help="start a server in-process for this checkpoint (default: the built-in tiny model)")
    p.add_argument("--served-model-name", default=None, help="`model` sent in requests (default: the server's first)")
    p.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    p.add_argument("--dataset", default="fixed", choices=("fixed", "synthetic-sharegpt"),
                   help="fixed: --input-len/--output-len; synthetic-sharegpt: ShareGPT-like log-normal lengths")
    p.add_argument("--num-prompts", type=int, default=100, help="requests to send (default 100)")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens per request (fixed dataset)")
    p.add_argument("--output-len", type=int, default=128, help="generated tokens per request (fixed dataset)")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests per second, Poisson arrivals (default inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of inter-arrival times (1 = Poisson)")
    p.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most (default: no limit)")
    p.add_argument("--num-warmups", type=int, default=0,
                   help="requests sent (all at once, unmeasured) before the run, e.g. to compile step shapes")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the workload, the arrival times (and the engine it starts)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="vocabulary of the random prompt ids (default: from the server's /debug/stats or tokenizer)")
    p.add_argument("--tokenizer", default=None, help="tokenizer giving the vocabulary size (default: the model's root)")
    p.add_argument("--timeout", type=float, default=None, help="seconds a request may take (default: no limit)")
    p.add_argument("--output-json", default=None, help="write the results here")
    add_server_engine_arguments(p, exclude=("seed", "tokenizer"))


def register(sub) -> None:
    """Adds `serve` to the `pagedjax bench` subcommand parsers `sub`."""
    p = sub.add_parser("serve", help="online serving benchmark against an OpenAI-compatible server",
                       description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark (starting a server first unless --base-url); prints the table."""
    from pagedjax.server.cli import require_serve_extra

    require_serve_extra()
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.base_url:
        result = asyncio.run(benchmark(args.base_url, args))
    else:
        from pagedjax.default_model import default_model_dir
        from pagedjax.server.cli import engine_config_from_args
        from pagedjax.server.serve import ServerOptions, ServerThread, build_server_app

        config = engine_config_from_args(args, args.model or default_model_dir())
        names = (args.served_model_name,) if args.served_model_name else ()
        app = build_server_app(config, ServerOptions(api_key=args.api_key, served_model_names=names),
                               precompile=args.precompile)
        with ServerThread(app) as server:
            result = asyncio.run(benchmark(server.url, args))
        result["server"]["in_process"] = True
    print(format_table(result))
    if args.output_json:
        write_json(result, args.output_json)
        print(f"results written to {args.output_json}", file=sys.stderr)
    return 0 if result["figures"]["failed"] == 0 else 1


async def _get_json(client, path: str) -> dict | None:
    response = await client.get(path)
    return response.json() if response.status_code == 200 else None


def _vocab_size(args, stats: dict | None, root: str | None) -> int:
    if args.vocab_size:
        return args.vocab_size
    if stats and stats.get("vocab_size"):
        return int(stats["vocab_size"])
    from transformers import AutoTokenizer

    name = args.tokenizer or root
    if not name:
        raise ValueError("cannot tell the vocabulary size: pass --vocab-size or --tokenizer")
    return len(AutoTokenizer.from_pretrained(name))


def _workload(args, vocab_size: int, max_model_len: int) -> datasets.Workload:
    if args.dataset == "synthetic-sharegpt":
        return datasets.synthetic_sharegpt(args.num_prompts, vocab_size, seed=args.seed, max_model_len=max_model_len)
    if args.input_len + args.output_len > max_model_len:
        raise ValueError(f"--input-len + --output-len ({args.input_len + args.output_len}) exceeds the server's "
                         f"max_model_len ({max_model_len})")
    return datasets.fixed_lengths(args.num_prompts, args.input_len, args.output_len, vocab_size, seed=args.seed)


async def benchmark(base_url: str, args: argparse.Namespace) -> dict:
    """Asks the server what it serves, builds the workload, warms up, runs and reports."""
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60.0, trust_env=False) as client:
        models = await _get_json(client, "/v1/models")
        if not models or not models.get("data"):
            raise ValueError(f"{base_url}/v1/models did not list a model")
        card = models["data"][0]
        model = args.served_model_name or card["id"]
        max_model_len = int(card.get("max_model_len") or datasets.MAX_TOTAL_LEN)
        stats_before = await _get_json(client, "/debug/stats")
        workload = _workload(args, _vocab_size(args, stats_before, card.get("root")), max_model_len)
        common = dict(api_key=args.api_key, timeout_s=args.timeout)
        if args.num_warmups > 0:
            await run_benchmark(base_url, model, workload.head(min(args.num_warmups, len(workload))), **common)
            stats_before = await _get_json(client, "/debug/stats")
        figures, results = await run_benchmark(base_url, model, workload, request_rate=args.request_rate,
                                               burstiness=args.burstiness, max_concurrency=args.max_concurrency,
                                               seed=args.seed, **common)
        stats_after = await _get_json(client, "/debug/stats")
    server = dict(url=base_url, model=model, root=card.get("root"), max_model_len=max_model_len)
    if stats_before and stats_after:
        server.update(device=stats_after.get("device"), attention_backend=stats_after.get("attention_backend"),
                      num_kv_blocks=stats_after.get("num_kv_blocks"),
                      compiles_during_run=stats_after["num_compiles"] - stats_before["num_compiles"],
                      preemptions_during_run=stats_after["num_preemptions"] - stats_before["num_preemptions"])
    return dict(
        benchmark="serve", environment=environment(), server=server, workload=workload.describe(),
        request_rate="inf" if math.isinf(args.request_rate) else args.request_rate, burstiness=args.burstiness,
        max_concurrency=args.max_concurrency, num_warmups=args.num_warmups, figures=figures,
        per_request=dict(input_lens=[r.prompt_len for r in results], output_lens=[r.output_len for r in results],
                         ttfts_s=[r.ttft for r in results], latencies_s=[r.latency for r in results],
                         errors=[r.error for r in results]))


def main(argv: list[str] | None = None) -> int:
    """`python -m pagedjax.bench.serve_cli ...`."""
    parser = argparse.ArgumentParser(prog="pagedjax bench serve", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as error:
        print(f"pagedjax: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
