"""The `pagedjax` command line: `generate` (more subcommands register themselves below).

argparse lives only here and in other entry points; library code takes plain arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text for one prompt",
                       description="Generate a completion for one prompt (greedy unless --temperature is given).")
    p.add_argument("--model", default=None,
                   help="checkpoint directory or Hugging Face hub id (default: a built-in tiny Llama, no network)")
    p.add_argument("--prompt", default="The quick brown fox", help="the prompt text")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens to generate at most (default 32)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: greedy)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating after the end-of-sequence token")
    p.add_argument("--json", action="store_true",
                   help='print {"prompt_token_ids": [...], "token_ids": [...], "text": "..."} instead of text')
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from pagedjax.default_model import default_model_dir
    from pagedjax.llm import LLM
    from pagedjax.sampling_params import SamplingParams

    model = args.model or default_model_dir()
    llm = LLM(model, dtype=args.dtype, seed=args.seed)
    params = SamplingParams(temperature=0.0 if args.temperature is None else args.temperature,
                            max_tokens=args.max_tokens, ignore_eos=args.ignore_eos, seed=args.seed)
    compile_before = llm.stats()["compile_seconds"]
    start = time.perf_counter()
    (out,) = llm.generate(args.prompt, params, use_tqdm=False)
    compile_seconds = llm.stats()["compile_seconds"] - compile_before
    elapsed = time.perf_counter() - start - compile_seconds
    completion = out.outputs[0]
    if args.json:
        print(json.dumps({"prompt_token_ids": out.prompt_token_ids, "token_ids": list(completion.token_ids),
                          "text": completion.text}))
    else:
        print(completion.text)
    n = len(completion.token_ids)
    print(f"{n} tokens in {elapsed:.3f} s ({n / max(elapsed, 1e-9):.1f} tokens/s; "
          f"{compile_seconds:.1f} s of compilation excluded)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedjax", description="PagedAttention LLM inference in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad input: a clear message, not a traceback
        print(f"pagedjax: error: {e}", file=sys.stderr)
        return 2
