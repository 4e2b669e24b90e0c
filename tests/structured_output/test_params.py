"""StructuredOutputsParams validation and the request-field conversions (response_format, guided_*)."""

from __future__ import annotations

import pytest

from pagedjax.structured_output import StructuredOutputsParams, structured_outputs_from_request

SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}}


@pytest.mark.parametrize("kwargs, kind", [
    (dict(json=SCHEMA), "json"),
    (dict(json='{"type": "object"}'), "json"),
    (dict(regex="a+"), "regex"),
    (dict(choice=["a", "b"]), "choice"),
    (dict(grammar='root ::= "a"'), "grammar"),
    (dict(json_object=True), "json_object"),
])
def test_each_kind(kwargs, kind):
    params = StructuredOutputsParams(**kwargs)
    assert params.kind == kind
    assert StructuredOutputsParams.from_dict(params.to_dict()) == params


def test_json_text_and_dict_are_one_key_and_copied():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    from_dict = StructuredOutputsParams(json=schema)
    schema["properties"]["y"] = {"type": "string"}          # later edits are not seen
    from_text = StructuredOutputsParams(json='{"properties": {"x": {"type": "integer"}}, "type": "object"}')
    assert from_dict == from_text and hash(from_dict) == hash(from_text)
    assert "y" not in from_dict.json["properties"]
    assert StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True) != from_dict
    assert StructuredOutputsParams(choice=["a", "b"]).choice == ("a", "b")


@pytest.mark.parametrize("kwargs, field", [
    (dict(), "exactly one"),
    (dict(regex="a", choice=["a"]), "exactly one"),
    (dict(json=SCHEMA, json_object=True), "exactly one"),
    (dict(json="{not json"), "json"),
    (dict(json="[1, 2]"), "json"),
    (dict(json={"a": {1, 2}}), "json"),
    (dict(regex=5), "regex"),
    (dict(choice=[]), "choice"),
    (dict(choice="ab"), "choice"),
    (dict(choice=["a", 3]), "choice"),
    (dict(grammar="  "), "grammar"),
    (dict(json_object="yes"), "json_object"),
    (dict(regex="a", disable_any_whitespace=1), "disable_any_whitespace"),
    (dict(regex="a", whitespace_pattern=3), "whitespace_pattern"),
])
def test_invalid_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        StructuredOutputsParams(**kwargs)


def test_from_dict_ignores_nulls_and_refuses_unknown_fields():
    assert StructuredOutputsParams.from_dict({"regex": "a", "json": None, "disable_fallback": True}).kind == "regex"
    with pytest.raises(ValueError, match="structured_outputs.regexp"):
        StructuredOutputsParams.from_dict({"regexp": "a"})
    with pytest.raises(ValueError, match="structured_outputs must be an object"):
        StructuredOutputsParams.from_dict(["a"])


@pytest.mark.parametrize("response_format, expected", [
    (None, None),
    ({"type": "text"}, None),
    ({"type": "json_object"}, StructuredOutputsParams(json_object=True)),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
     StructuredOutputsParams(json=SCHEMA)),
    ({"type": "json_schema", "json_schema": {"name": "x", "json_schema": SCHEMA}},
     StructuredOutputsParams(json=SCHEMA)),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, StructuredOutputsParams(json_object=True)),
])
def test_response_format(response_format, expected):
    assert structured_outputs_from_request(response_format=response_format) == expected


@pytest.mark.parametrize("response_format, field", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": 3, "schema": SCHEMA}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA, "strict": "yes"}}, "response_format.json_schema.strict"),
    ({"type": "json_schema", "json_schema": {"schema": [1]}}, "response_format.json_schema.schema"),
    ("json", "response_format"),
])
def test_bad_response_format_names_the_field(response_format, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        structured_outputs_from_request(response_format=response_format)


@pytest.mark.parametrize("guided, expected", [
    (dict(guided_json=SCHEMA), StructuredOutputsParams(json=SCHEMA)),
    (dict(guided_regex="[0-9]+"), StructuredOutputsParams(regex="[0-9]+")),
    (dict(guided_choice=["a", "b"]), StructuredOutputsParams(choice=["a", "b"])),
    (dict(guided_grammar='root ::= "a"'), StructuredOutputsParams(grammar='root ::= "a"')),
    (dict(guided_json=SCHEMA, guided_whitespace_pattern=" ?", guided_decoding_backend="guidance"),
     StructuredOutputsParams(json=SCHEMA, whitespace_pattern=" ?")),
    (dict(guided_json=None, guided_regex=None), None),
])
def test_guided_fields(guided, expected):
    assert structured_outputs_from_request(**guided) == expected


def test_sources_merge_into_one_constraint():
    both = structured_outputs_from_request(structured_outputs={"disable_any_whitespace": True},
                                           response_format={"type": "json_object"})
    assert both == StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    tool = {"type": "array", "minItems": 1}
    assert structured_outputs_from_request(response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}},
                                           tool_schema=tool) == StructuredOutputsParams(json=tool)
    built = StructuredOutputsParams(regex="a")
    assert structured_outputs_from_request(structured_outputs=built) == built
    assert structured_outputs_from_request(structured_outputs={"regex": "a"}, guided_regex="a") == built


@pytest.mark.parametrize("kwargs, match", [
    (dict(structured_outputs={"regex": "a"}, response_format={"type": "json_object"}), "exactly one"),
    (dict(structured_outputs={"regex": "a"}, guided_regex="b"), "guided_regex"),
    (dict(structured_outputs={"json": SCHEMA}, response_format={"type": "json_schema",
                                                                "json_schema": {"schema": {"type": "array"}}}),
     "response_format"),
    (dict(structured_outputs={"disable_any_whitespace": True}), "exactly one"),
    (dict(guided_regex="a", guided_decoding_backend="xgrammar"), "guided_decoding_backend"),
    (dict(structured_outputs="regex"), "structured_outputs"),
])
def test_contradictions_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        structured_outputs_from_request(**kwargs)
