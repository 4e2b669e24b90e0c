"""The `pagedjax` command line: `generate`, `convert` (more subcommands register themselves below).

argparse lives only here and in other entry points; library code takes plain arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _add_generate(sub) -> None:
    from pagedjax.engine_args import add_engine_arguments

    p = sub.add_parser("generate", help="generate text for one prompt",
                       description="Generate a completion for one prompt (greedy unless --temperature is given).")
    p.add_argument("--model", default=None,
                   help="checkpoint directory, Hugging Face hub id or preset (default: the built-in model, no network)")
    p.add_argument("--prompt", default="The quick brown fox", help="the prompt text")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens to generate at most (default 32)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: greedy)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating after the end-of-sequence token")
    p.add_argument("--json", action="store_true",
                   help='print {"prompt_token_ids": [...], "token_ids": [...], "text": "..."} instead of text')
    add_engine_arguments(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from pagedjax.cli_output import ProgressLine, printable
    from pagedjax.engine_args import engine_config_from_args
    from pagedjax.llm import LLM
    from pagedjax.sampling_params import SamplingParams

    if not args.prompt:  # before loading anything, as LLM.generate and the server reject it
        raise ValueError("prompt is empty (--prompt ''): give at least one character")
    config = engine_config_from_args(args, args.model)
    with ProgressLine(f"loading {args.model or 'the built-in model'}"):
        llm = LLM(**{f: getattr(config, f) for f in config.field_names()})
    if llm.engine.loaded.model_dir is None:  # a preset: said once, on stderr
        print(f"pagedjax: note: {args.model} is a preset: real shapes but random weights, so its output is noise "
              f"(leave out --model for the built-in trained model)", file=sys.stderr)
    if llm.get_tokenizer() is None:
        raise ValueError(f"{args.model or 'the model'} has no tokenizer to turn --prompt into tokens: pass "
                         f"--tokenizer DIR_OR_HUB_ID" + (" (or drop --skip-tokenizer-init)"
                                                         if args.skip_tokenizer_init else ""))
    params = SamplingParams(temperature=0.0 if args.temperature is None else args.temperature,
                            max_tokens=args.max_tokens, ignore_eos=args.ignore_eos, seed=args.seed)
    compile_before = llm.stats()["compile_seconds"]
    start = time.perf_counter()
    # a new process compiles its steps; a warm persistent cache makes that quick (and the line stays unwritten)
    with ProgressLine("compiling the model's steps (the first run; later runs load them from the cache)"):
        (out,) = llm.generate(args.prompt, params, use_tqdm=False)
    compile_seconds = llm.stats()["compile_seconds"] - compile_before
    elapsed = time.perf_counter() - start - compile_seconds
    completion = out.outputs[0]
    if args.json:  # JSON escapes control characters itself
        print(json.dumps({"prompt_token_ids": out.prompt_token_ids, "token_ids": list(completion.token_ids),
                          "text": completion.text}))
    else:
        print(printable(completion.text))
    n = len(completion.token_ids)
    print(f"{n} tokens in {elapsed:.3f} s ({n / max(elapsed, 1e-9):.1f} tokens/s; "
          f"{compile_seconds:.1f} s of compilation excluded)", file=sys.stderr)
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="save a checkpoint as an orbax checkpoint (restored straight into any sharding)",
                       description="Load a Hugging Face checkpoint (directory or hub id) and save its parameters, "
                                   "optionally cast, as an orbax checkpoint directory with its config and tokenizer "
                                   "files. `LLM(OUT)` / `--model OUT` restore it straight into their sharding.")
    p.add_argument("model", help="checkpoint directory or Hugging Face hub id")
    p.add_argument("out", help="output directory (must not exist or be empty)")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from pagedjax.convert import convert_checkpoint

    summary = convert_checkpoint(args.model, args.out, dtype=args.dtype)
    print(f"wrote {summary['num_params']:,} parameters ({summary['bytes'] / 2**20:.1f} MiB, {summary['dtype']}) "
          f"to {summary['out_dir']} (load {summary['load_seconds']:.1f} s, save {summary['save_seconds']:.1f} s)")
    return 0


def _add_serve(sub) -> None:
    from pagedjax.server.cli import add_serve_parser

    add_serve_parser(sub)


def _add_bench(sub) -> None:
    from pagedjax.bench.cli import add_bench_parser

    add_bench_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedjax", description="PagedAttention LLM inference in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_convert(sub)
    _add_serve(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pagedjax.cli_output import quiet_transformers_notices

    quiet_transformers_notices()  # before anything imports transformers
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad input (incl. model_checks.ModelNotFoundError): one line, not a traceback
        print(f"pagedjax: error: {e}", file=sys.stderr)
        return 2
