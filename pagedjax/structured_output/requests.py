"""Request fields -> `StructuredOutputsParams`: OpenAI's `response_format`, vLLM's
`structured_outputs` and its older `guided_*` fields, and a tool-choice schema.

As in vLLM, the sources are merged into one set of fields and the result must name exactly
one constraint: `structured_outputs={"regex": ...}` together with
`response_format={"type": "json_object"}` is refused, and a tool-choice schema (tool_choice
"required" or a named function) replaces the `json` field.
"""

from __future__ import annotations

from typing import Any, Mapping

from pagedjax.structured_output.params import StructuredOutputsParams

# vLLM's deprecated request fields -> `structured_outputs` field names
GUIDED_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
    "guided_whitespace_pattern": "whitespace_pattern",
}


def fields_from_response_format(response_format: Mapping[str, Any] | None) -> dict[str, Any]:
    """`structured_outputs` fields for an OpenAI `response_format` ({} for None or type "text").

    {"type": "json_object"} -> json_object=True; {"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": ...}} -> json=schema (a missing schema means any
    JSON object, as OpenAI allows).
    """
    if response_format is None:
        return {}
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format must be an object, got {response_format!r}"[:300])
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping):
            raise ValueError("response_format.json_schema must be an object with a schema when type is json_schema")
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"response_format.json_schema.name must be a string, got {name!r}")
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ValueError(f"response_format.json_schema.strict must be a boolean, got {strict!r}")
        schema = spec.get("schema")  # the SDK's field; some clients send it under the alias json_schema
        if schema is None:
            schema = spec.get("json_schema")
        if schema is None:
            return {"json_object": True}
        if not isinstance(schema, Mapping):
            raise ValueError(f"response_format.json_schema.schema must be an object, got {schema!r}"[:300])
        return {"json": schema}
    raise ValueError(f"response_format.type must be one of text, json_object, json_schema, got {kind!r}")


def structured_outputs_from_request(
    *,
    structured_outputs: Mapping[str, Any] | StructuredOutputsParams | None = None,
    response_format: Mapping[str, Any] | None = None,
    tool_schema: Mapping[str, Any] | None = None,
    **guided: Any,
) -> StructuredOutputsParams | None:
    """The one structured-output constraint of a request, or None when it has none.

    structured_outputs: vLLM's field (a dict, or params already built offline).
    response_format: OpenAI's. tool_schema: from `tool_choice_json_schema` (replaces json).
    guided: vLLM's older fields `guided_json`, `guided_regex`, `guided_choice`,
    `guided_grammar`, `guided_whitespace_pattern` (and `guided_decoding_backend`, which
    must be absent, "guidance" or "auto": this engine has one backend). JSON nulls mean absent.
    Raises ValueError naming the field on anything malformed or contradictory.
    """
    if isinstance(structured_outputs, StructuredOutputsParams):
        fields = structured_outputs.to_dict()
    elif structured_outputs is None:
        fields = {}
    elif isinstance(structured_outputs, Mapping):
        fields = {k: v for k, v in structured_outputs.items() if v is not None}
    else:
        raise ValueError(f"structured_outputs must be an object, got {structured_outputs!r}"[:300])
    backend = guided.pop("guided_decoding_backend", None)
    if backend is not None and backend not in ("auto", "guidance", "llguidance"):
        raise ValueError(f"guided_decoding_backend must be 'auto' or 'guidance' (the only backend here), "
                         f"got {backend!r}")
    for name, value in guided.items():
        if name not in GUIDED_FIELDS:
            raise TypeError(f"unexpected field {name!r}")
        if value is not None:
            target = GUIDED_FIELDS[name]
            if target in fields and fields[target] != value:
                raise ValueError(f"{name} contradicts structured_outputs.{target}")
            fields[target] = value
    for name, value in fields_from_response_format(response_format).items():
        if name in fields and fields[name] != value:
            raise ValueError(f"response_format contradicts structured_outputs.{name}")
        fields[name] = value
    if tool_schema is not None:
        fields["json"] = tool_schema
    if not any(k in fields for k in ("json", "regex", "choice", "grammar")) and not fields.get("json_object"):
        if fields.keys() - {"json_object"}:
            return StructuredOutputsParams.from_dict(fields)  # options without a constraint: the usual error
        return None
    return StructuredOutputsParams.from_dict(fields)
