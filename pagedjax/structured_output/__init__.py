"""Structured outputs: grammar-constrained decoding with a packed next-token bitmask.

    info = TokenizerInfo.from_huggingface(tokenizer, vocab_size=model_vocab_size)
    compiler = GrammarCompiler(info)                                  # one per engine
    matcher = compiler.matcher(StructuredOutputsParams(json=schema))  # one per sequence
    bitmask = allocate_bitmask(num_rows, info.vocab_size)             # host, int32[S, ceil(V/32)]
    fill_bitmask_rows(bitmask, [matcher, None, ...])                  # None rows: every token allowed
    logits = apply_token_bitmask(logits, jnp.asarray(bitmask))        # inside the jitted sampler
    matcher.accept(sampled_token)                                     # then next step

The grammar engine is llguidance (vLLM's "guidance" backend): a 3 MB wheel with no
dependencies, JSON schema / regex / Lark / GBNF, rollback, and bitmasks filled straight into
numpy. xgrammar (vLLM's default) would pull PyTorch and Triton into a JAX engine's install.
"""

from pagedjax.structured_output.bitmask import (allocate_bitmask, apply_token_bitmask, bitmask_width,
                                                 token_ids_row, unpack_bitmask)
from pagedjax.structured_output.compiler import CompiledGrammar, CompileStats, GrammarCompiler
from pagedjax.structured_output.matcher import GrammarMatcher, fill_bitmask_rows
from pagedjax.structured_output.params import StructuredOutputsParams
from pagedjax.structured_output.requests import fields_from_response_format, structured_outputs_from_request
from pagedjax.structured_output.tokenizer_info import TokenizerInfo

__all__ = [
    "StructuredOutputsParams", "TokenizerInfo", "GrammarCompiler", "CompiledGrammar", "CompileStats",
    "GrammarMatcher", "fill_bitmask_rows", "allocate_bitmask", "apply_token_bitmask", "bitmask_width",
    "token_ids_row", "unpack_bitmask", "structured_outputs_from_request", "fields_from_response_format",
]
