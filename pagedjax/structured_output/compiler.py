"""`GrammarCompiler`: structured-output params -> a compiled grammar, once per distinct constraint.

The grammar engine is llguidance (vLLM's `guidance` backend). Compiling builds the grammar and
a template matcher (the lexer and parser tables); every request then starts from a cheap copy
of the template. Results are kept in an LRU cache keyed by `StructuredOutputsParams.cache_key`
(kind, canonical spec, options), and the compile time of each is recorded.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import threading
import time
from typing import Any

from pagedjax.structured_output.matcher import GrammarMatcher
from pagedjax.structured_output.params import StructuredOutputsParams
from pagedjax.structured_output.tokenizer_info import TokenizerInfo

_ANY_JSON_OBJECT = {"type": "object"}


@dataclasses.dataclass(frozen=True)
class CompiledGrammar:
    """One compiled constraint; `new_matcher()` gives a fresh per-request matcher."""

    params: StructuredOutputsParams
    compile_seconds: float
    template: Any = dataclasses.field(repr=False, compare=False)   # llguidance.LLMatcher at the start
    tokenizer_info: TokenizerInfo = dataclasses.field(repr=False, compare=False)

    def new_matcher(self) -> GrammarMatcher:
        """A matcher at the start of this grammar (a copy of the template: microseconds)."""
        return GrammarMatcher(self.template.deep_copy(), self.tokenizer_info)


@dataclasses.dataclass(frozen=True)
class CompileStats:
    """Cache and timing counters of a `GrammarCompiler`."""

    hits: int
    misses: int
    entries: int
    total_compile_seconds: float
    max_compile_seconds: float


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "contains", "not", "if", "then", "else", "propertyNames",
                  "unevaluatedProperties", "additionalItems")


def _closed_objects(schema: Any) -> Any:
    """A copy of `schema` where each object schema that does not say otherwise gets additionalProperties: false.

    Walks only the keywords that hold subschemas, so `enum`/`const` values and property names
    are left alone.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed_objects(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_closed_objects(sub) for sub in out[key]]
    for key in _SCHEMA_VALUES:
        if isinstance(out.get(key), list):  # draft-4 tuple `items`
            out[key] = [_closed_objects(sub) for sub in out[key]]
        elif key in out:
            out[key] = _closed_objects(out[key])
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def serialize_grammar(params: StructuredOutputsParams) -> str:
    """The llguidance grammar text for `params` (not yet checked)."""
    import llguidance

    kind = params.kind
    if kind in ("json", "json_object"):
        schema = _ANY_JSON_OBJECT if kind == "json_object" else params.json
        if kind == "json" and params.disable_additional_properties:
            schema = _closed_objects(schema)
        options: dict[str, Any] = {"whitespace_flexible": not params.disable_any_whitespace}
        if params.whitespace_pattern is not None:
            options["whitespace_pattern"] = params.whitespace_pattern
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=options)
    if kind == "choice":
        return llguidance.grammar_from("choice", json.dumps(list(params.choice)))
    try:
        return llguidance.grammar_from("regex" if kind == "regex" else "grammar", params.spec)
    except ValueError as e:
        raise ValueError(f"structured_outputs.{kind} is not a valid {kind}: {e}") from None


class GrammarCompiler:
    """Compiles structured-output constraints for one tokenizer, with an LRU cache.

    tokenizer_info: the model's vocabulary. cache_size: compiled grammars kept (least recently
    used evicted). Thread-safe; `submit` compiles on a background thread (llguidance releases
    the GIL while it builds a grammar) so a slow schema does not stall the engine loop.
    """

    def __init__(self, tokenizer_info: TokenizerInfo, *, cache_size: int = 256, max_workers: int = 1):
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive integer, got {cache_size!r}")
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
        self.tokenizer_info = tokenizer_info
        self._cache_size = cache_size
        self._max_workers = max_workers
        self._cache: collections.OrderedDict[str, CompiledGrammar] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._hits = 0
        self._misses = 0
        self._total_seconds = 0.0
        self._max_seconds = 0.0

    def compile(self, params: StructuredOutputsParams) -> CompiledGrammar:
        """The compiled grammar of `params`, from the cache when seen before.

        Raises ValueError naming the field when the spec does not compile (bad regex, schema
        with unsupported keywords, grammar syntax error).
        """
        if not isinstance(params, StructuredOutputsParams):
            raise ValueError(f"expected StructuredOutputsParams, got {type(params).__name__}")
        with self._lock:
            cached = self._cache.get(params.cache_key)
            if cached is not None:
                self._cache.move_to_end(params.cache_key)
                self._hits += 1
                return cached
        compiled = self._build(params)
        with self._lock:
            self._misses += 1
            self._total_seconds += compiled.compile_seconds
            self._max_seconds = max(self._max_seconds, compiled.compile_seconds)
            self._cache[params.cache_key] = compiled
            self._cache.move_to_end(params.cache_key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, params: StructuredOutputsParams) -> GrammarMatcher:
        """A fresh matcher for one request (compiling `params` if needed)."""
        return self.compile(params).new_matcher()

    def submit(self, params: StructuredOutputsParams) -> concurrent.futures.Future:
        """Compiles on a background thread; the future gives the `CompiledGrammar` (or raises ValueError)."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(self._max_workers,
                                                                       thread_name_prefix="grammar-compile")
            executor = self._executor
        return executor.submit(self.compile, params)

    def stats(self) -> CompileStats:
        """Cache hits and misses, entries, and compile time so far."""
        with self._lock:
            return CompileStats(hits=self._hits, misses=self._misses, entries=len(self._cache),
                                total_compile_seconds=self._total_seconds, max_compile_seconds=self._max_seconds)

    def close(self) -> None:
        """Stops the background compile thread (if one was started)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _build(self, params: StructuredOutputsParams) -> CompiledGrammar:
        import llguidance

        start = time.perf_counter()
        grammar = serialize_grammar(params)
        ll_tokenizer = self.tokenizer_info.ll_tokenizer
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, ll_tokenizer)
        if is_error:
            raise ValueError(f"structured_outputs.{params.kind} does not compile: {messages[0]}"[:2000])
        template = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        if template.is_error():
            raise ValueError(f"structured_outputs.{params.kind} does not compile: {template.get_error()}"[:2000])
        return CompiledGrammar(params=params, compile_seconds=time.perf_counter() - start, template=template,
                               tokenizer_info=self.tokenizer_info)
