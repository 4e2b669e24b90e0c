"""Random walks through compiled grammars with the real test tokenizer: every finished output is valid."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from pagedjax.structured_output import StructuredOutputsParams, unpack_bitmask
from tests.structured_output.walk import random_walk

SCHEMAS = {
    "flat": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                              "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                              "ok": {"type": "boolean"}},
             "required": ["name", "age", "ok"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                  "required": ["x", "y"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]},
                 "minItems": 1, "maxItems": 3}},
        "required": ["point", "tags"], "additionalProperties": False},
    "refs_and_unions": {"type": "object", "$defs": {"id": {"type": "string", "pattern": "^[a-z]{2,4}[0-9]$"}},
                        "properties": {"owner": {"$ref": "#/$defs/id"},
                                       "value": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                                       "kind": {"const": "item"}},
                        "required": ["owner", "value", "kind"], "additionalProperties": False},
    "array_root": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
                   "minItems": 2, "maxItems": 4},
    "optional_fields": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 4},
                                                         "b": {"type": "integer"}}, "additionalProperties": False},
}


def walk_text(compiler, tok, info, params, seed):
    tokens, _ = random_walk(compiler.matcher(params), tok, info, np.random.default_rng(seed))
    return tok.decode(tokens)


@pytest.mark.parametrize("compact", [False, True], ids=["any-whitespace", "compact"])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_walks_validate(compiler, tok, info, name, compact):
    schema = SCHEMAS[name]
    params = StructuredOutputsParams(json=schema, disable_any_whitespace=compact)
    for seed in range(6):
        text = walk_text(compiler, tok, info, params, seed)
        jsonschema.validate(json.loads(text), schema)
        if compact:  # no whitespace between tokens (strings may hold some)
            assert not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)), text
    assert compiler.stats().misses == 1 and compiler.stats().hits == 5


def test_json_object_walks_are_objects(compiler, tok, info):
    params = StructuredOutputsParams(json_object=True)
    for seed in range(6):
        assert isinstance(json.loads(walk_text(compiler, tok, info, params, seed)), dict)


def test_disable_additional_properties_closes_objects(compiler, tok, info):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}   # open: extra keys allowed
    params = StructuredOutputsParams(json=schema, disable_additional_properties=True)
    for seed in range(5):
        obj = json.loads(walk_text(compiler, tok, info, params, seed))
        jsonschema.validate(obj, {**schema, "additionalProperties": False})


# NOTE: [0-9], not \d: the grammar engine's \d is Unicode-aware and knows newer Unicode digits
# than this Python's `re` does.
@pytest.mark.parametrize("regex", [r"[0-9]{3}-[a-z]{2,5}", r"(yes|no|maybe)!?", r"[A-Z][a-z]+( [A-Z][a-z]+){0,2}",
                                   r"[0-9]+\.[0-9]{2}"])
def test_regex_walks_match(compiler, tok, info, regex):
    for seed in range(6):
        assert re.fullmatch(regex, walk_text(compiler, tok, info, StructuredOutputsParams(regex=regex), seed))


def test_choice_walks_pick_a_choice(compiler, tok, info):
    choices = ["positive", "negative", "neutral", 'with "quotes"', "héllo wörld", "a"]
    outputs = {walk_text(compiler, tok, info, StructuredOutputsParams(choice=choices), s) for s in range(24)}
    assert outputs <= set(choices) and len(outputs) >= 3


GBNF = r'''
root   ::= "(" expr ")"
expr   ::= term (("+" | "*") term)*
term   ::= [0-9]+ | "(" expr ")"
'''
LARK = r'''
start: pair ("," pair)*
pair: KEY "=" VALUE
KEY: /[a-z]{1,4}/
VALUE: /[0-9]{1,3}/
'''


def test_gbnf_grammar_walks(compiler, tok, info):
    params = StructuredOutputsParams(grammar=GBNF)
    for seed in range(6):
        text = walk_text(compiler, tok, info, params, seed)
        assert re.fullmatch(r"[()0-9+*]+", text) and text.startswith("(") and text.endswith(")")
        assert eval(text) >= 0  # noqa: S307 -- digits, parentheses, + and * only (checked above)


def test_lark_grammar_walks(compiler, tok, info):
    params = StructuredOutputsParams(grammar=LARK)
    for seed in range(6):
        text = walk_text(compiler, tok, info, params, seed)
        assert re.fullmatch(r"[a-z]{1,4}=[0-9]{1,3}(,[a-z]{1,4}=[0-9]{1,3})*", text)


def test_padding_ids_never_allowed_and_masks_are_bitwise_sane(compiler, tok, info):
    _, rows = random_walk(compiler.matcher(StructuredOutputsParams(json=SCHEMAS["nested"])), tok, info,
                          np.random.default_rng(0))
    allowed = unpack_bitmask(np.stack(rows), info.vocab_size)
    assert not allowed[:, len(tok):].any()                       # ids past the tokenizer are padding
    full_bits = unpack_bitmask(np.stack(rows), np.stack(rows).shape[1] * 32)
    assert not full_bits[:, info.vocab_size:].any()              # the last word's spare bits stay clear
    assert allowed[-1].sum() == 1 and allowed[-1][tok.eos_token_id]   # complete object: only EOS
