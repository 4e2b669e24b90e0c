"""A request's constraints on its output: structured outputs and logit controls, validated at the edge.

Structured outputs come from OpenAI's `response_format`, vLLM's `structured_outputs` and its
older `guided_*` fields, or a tool choice that forces a call (its JSON schema); they are merged
by `structured_outputs_from_request` into one constraint, whose grammar the handler compiles
(off the event loop, `ServerState.check_grammar`) before the request reaches the engine, so a
grammar that does not compile is a 400 naming the field it came from. Logit controls:
`logit_bias` (OpenAI's string token ids, biases in [-100, 100]), `allowed_token_ids`,
`bad_words` (vLLM's), each bounded by `ServerLimits`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pagedjax.server.errors import bad_request
from pagedjax.server.protocol import SamplingFields
from pagedjax.structured_output import StructuredOutputsParams, structured_outputs_from_request

_KINDS = ("json", "regex", "choice", "grammar", "json_object")
_GUIDED_KINDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
_LEADING_NAME = re.compile(r"^([A-Za-z_]+)")


def constraint_sources(body: SamplingFields) -> list[str]:
    """The request fields that ask for a structured-output constraint, in a fixed order."""
    sources = []
    so = body.structured_outputs
    if so and any(so.get(kind) not in (None, False) for kind in _KINDS):
        sources.append("structured_outputs")
    sources += [name for name in _GUIDED_KINDS if getattr(body, name) is not None]
    if body.response_format is not None and body.response_format.type != "text":
        sources.append("response_format")
    return sources


def _param_of(error: ValueError, body: SamplingFields, sources: list[str]) -> str:
    """The request field an error of `structured_outputs_from_request` is about."""
    match = _LEADING_NAME.match(str(error))
    name = match.group(1) if match else None
    if name in type(body).model_fields and getattr(body, name) is not None:
        return name
    return sources[0] if sources else "structured_outputs"


def request_structured_outputs(body: SamplingFields, tool_schema: dict | None = None
                               ) -> tuple[StructuredOutputsParams | None, str | None]:
    """(the request's one constraint or None, the field it came from). `tool_schema` is the
    schema of a tool choice that forces a call; it cannot be combined with another constraint
    (options such as `structured_outputs.disable_any_whitespace` still apply to it)."""
    sources = constraint_sources(body)
    if tool_schema is not None and sources:
        raise bad_request(f"tool_choice forces a tool call, which cannot be combined with {sources[0]}",
                          param="tool_choice")
    response_format = body.response_format.as_dict() if body.response_format is not None else None
    try:
        params = structured_outputs_from_request(structured_outputs=body.structured_outputs,
                                                 response_format=response_format, tool_schema=tool_schema,
                                                 **body.guided_fields())
    except ValueError as error:
        raise bad_request(str(error), param=_param_of(error, body, sources)) from None
    if params is None:
        return None, None
    return params, "tools" if tool_schema is not None else (sources[0] if sources else "structured_outputs")


def _token_id(value: Any, vocab_size: int, field: str) -> int:
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise bad_request(f"{field}: keys must be token ids (decimal strings), got {value[:40]!r}", param=field)
        value = int(value)
    if not 0 <= value < vocab_size:
        raise bad_request(f"{field}: token id {value} is outside the vocabulary [0, {vocab_size})", param=field)
    return value


def logit_controls(body: SamplingFields, vocab_size: int, limits) -> dict[str, Any]:
    """`SamplingParams` fields for `logit_bias`, `allowed_token_ids` and `bad_words` (400s name the field)."""
    out: dict[str, Any] = {}
    if body.logit_bias:
        if len(body.logit_bias) > limits.max_logit_bias_entries:
            raise bad_request(f"logit_bias has {len(body.logit_bias)} entries; at most "
                              f"{limits.max_logit_bias_entries} (--max-logit-bias-entries)", param="logit_bias")
        bias = {}
        for key, value in body.logit_bias.items():
            token = _token_id(key, vocab_size, "logit_bias")
            if not (math.isfinite(value) and -100 <= value <= 100):
                raise bad_request(f"logit_bias[{key!r}] must be in [-100, 100], got {value!r}", param="logit_bias")
            bias[token] = float(value)
        out["logit_bias"] = bias
    if body.allowed_token_ids is not None:
        if not body.allowed_token_ids:
            raise bad_request("allowed_token_ids must not be empty", param="allowed_token_ids")
        out["allowed_token_ids"] = tuple(_token_id(t, vocab_size, "allowed_token_ids")
                                         for t in dict.fromkeys(body.allowed_token_ids))
    if body.bad_words:
        words = body.bad_words
        if len(words) > limits.max_bad_words:
            raise bad_request(f"{len(words)} bad_words; at most {limits.max_bad_words} (--max-bad-words)",
                              param="bad_words")
        if any(not w.strip() or len(w) > limits.max_stop_string_chars for w in words):
            raise bad_request(f"bad_words must be non-empty strings of at most {limits.max_stop_string_chars} "
                              f"characters", param="bad_words")
        out["bad_words"] = tuple(words)
    return out
