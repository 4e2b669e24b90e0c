"""`StructuredOutputsParams`: vLLM's `structured_outputs` fields, validated at construction.

Exactly one kind of constraint is given: `json` (a JSON schema, dict or JSON text), `regex`,
`choice` (the output is one of these strings), `grammar` (EBNF/GBNF or Lark text) or
`json_object=True` (any JSON object). The options `disable_any_whitespace`,
`disable_additional_properties` and `whitespace_pattern` shape JSON grammars as in vLLM.
"""

from __future__ import annotations

import dataclasses
import json as _json
from typing import Any, Mapping

KINDS = ("json", "regex", "choice", "grammar", "json_object")

# Fields vLLM's `StructuredOutputsParams` accepts that change nothing here (one backend, so no
# fallback to disable); accepted so that requests written for vLLM are not refused.
_ACCEPTED_NO_OP_FIELDS = ("disable_fallback",)


def _bad(field: str, rule: str, value: Any) -> ValueError:
    return ValueError(f"structured_outputs.{field} must be {rule}, got {value!r}"[:500])


@dataclasses.dataclass(frozen=True, eq=False)
class StructuredOutputsParams:
    """One structured-output constraint of a request (vLLM's `StructuredOutputsParams`).

    json: JSON schema (a dict, or its JSON text; stored as a dict). regex: a regular expression
    (Rust `regex` syntax, anchored at both ends). choice: the output is exactly one of these
    strings (a list is accepted and stored as a tuple). grammar: a context-free grammar in
    GBNF/EBNF (`root ::= ...`) or Lark (`start: ...`). json_object: any JSON object.
    disable_any_whitespace: JSON without free whitespace between tokens (compact output).
    disable_additional_properties: objects of the schema that do not say otherwise get
    `additionalProperties: false`. whitespace_pattern: a regex for JSON's whitespace.

    Instances compare equal and hash alike when they compile to the same grammar
    (`cache_key`); the json dict is deep-copied, so later edits to the caller's dict are not seen.
    """

    json: Mapping[str, Any] | str | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    json_object: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    cache_key: str = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        self._normalise_and_validate()
        key = _json.dumps({"kind": self.kind, "spec": self.spec, "options": self.options}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False)
        object.__setattr__(self, "cache_key", key)

    def _normalise_and_validate(self):
        if self.json is not None:
            schema = self.json
            if isinstance(schema, str):
                try:
                    schema = _json.loads(schema)
                except ValueError as e:
                    raise _bad("json", "a JSON schema (object) or its JSON text", f"unparsable JSON ({e})") from None
            if not isinstance(schema, Mapping):
                raise _bad("json", "a JSON schema object", schema)
            try:  # a deep copy that also proves the schema is plain JSON
                schema = _json.loads(_json.dumps(schema))
            except (TypeError, ValueError) as e:
                raise _bad("json", "JSON-serialisable", f"{type(schema).__name__} ({e})") from None
            object.__setattr__(self, "json", schema)
        for field in ("regex", "grammar", "whitespace_pattern"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                raise _bad(field, "a string", value)
        if self.grammar is not None and not self.grammar.strip():
            raise _bad("grammar", "a non-empty grammar", self.grammar)
        if self.choice is not None:
            if isinstance(self.choice, str) or not hasattr(self.choice, "__iter__"):
                raise _bad("choice", "a list of strings", self.choice)
            choice = tuple(self.choice)
            if not choice:
                raise _bad("choice", "a non-empty list of strings", self.choice)
            if not all(isinstance(c, str) for c in choice):
                raise _bad("choice", "a list of strings", self.choice)
            object.__setattr__(self, "choice", choice)
        for field in ("json_object", "disable_any_whitespace", "disable_additional_properties"):
            if not isinstance(getattr(self, field), bool):
                raise _bad(field, "a boolean", getattr(self, field))
        given = [k for k in KINDS if (getattr(self, k) is True if k == "json_object" else getattr(self, k) is not None)]
        if len(given) != 1:
            rule = "exactly one of json, regex, choice, grammar, json_object"
            raise ValueError(f"structured_outputs must give {rule}; got {given or 'none'}")

    @property
    def kind(self) -> str:
        """Which constraint this is: one of `KINDS`."""
        for k in KINDS:
            if (self.json_object is True) if k == "json_object" else getattr(self, k) is not None:
                return k
        raise AssertionError("validated at construction")

    @property
    def spec(self) -> Any:
        """The constraint itself: schema dict, regex, list of choices, grammar text, or True."""
        value = getattr(self, self.kind)
        return list(value) if self.kind == "choice" else value

    @property
    def options(self) -> dict[str, Any]:
        """The options that change the compiled grammar (only JSON kinds have any)."""
        if self.kind not in ("json", "json_object"):
            return {}
        return {"disable_any_whitespace": self.disable_any_whitespace,
                "disable_additional_properties": self.disable_additional_properties,
                "whitespace_pattern": self.whitespace_pattern}

    def __eq__(self, other):
        return isinstance(other, StructuredOutputsParams) and other.cache_key == self.cache_key

    def __hash__(self):
        return hash(self.cache_key)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "StructuredOutputsParams":
        """From a request's `structured_outputs` object (JSON nulls are treated as absent)."""
        if not isinstance(fields, Mapping):
            raise ValueError(f"structured_outputs must be an object, got {fields!r}"[:300])
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for name, value in fields.items():
            if value is None or name in _ACCEPTED_NO_OP_FIELDS:
                continue
            if name not in known:
                raise ValueError(f"structured_outputs.{name} is not a supported field "
                                 f"(supported: {', '.join(sorted(known))})")
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The non-default fields, as `from_dict` accepts them."""
        out = {}
        for f in dataclasses.fields(self):
            if f.init and getattr(self, f.name) != f.default:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
