"""JsonStreamer: its pieces, under any path and for any chunking, add up to json.dumps of that value."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagedjax.tool_parsers.json_stream import JsonStreamer, JsonStreamError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=4)),
                      max_leaves=12)
roots = st.one_of(st.lists(values, max_size=4), st.dictionaries(st.text(max_size=5), values, max_size=4))


def messy_dumps(value, rng: random.Random) -> str:
    """Valid JSON text of `value` with random whitespace, escapes and number spellings."""
    ws = lambda: rng.choice(["", " ", "\n  ", "\t", "\r\n"])  # noqa: E731
    if isinstance(value, dict):
        items = [f"{ws()}{messy_dumps(k, rng)}{ws()}:{ws()}{messy_dumps(v, rng)}{ws()}" for k, v in value.items()]
        return "{" + ",".join(items) + ws() + "}"
    if isinstance(value, list):
        return "[" + ",".join(ws() + messy_dumps(v, rng) + ws() for v in value) + ws() + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=rng.random() < 0.5).replace("/", "\\/" if rng.random() < 0.5 else "/")
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 and rng.random() < 0.5:
        return f"{value:.1e}" if value else "0.0e0"
    return json.dumps(value)


def stream(text: str, rng: random.Random) -> tuple[list, str]:
    streamer, events, rest, pos = JsonStreamer(), [], "", 0
    while pos < len(text):
        n = rng.randint(1, 7)
        new, rest = streamer.feed(text[pos:pos + n])
        events += new
        pos += n
        if streamer.done:
            rest += text[pos:]
            break
    assert streamer.done
    return events, rest


def pieces_under(events, path):
    return "".join(e.text for e in events if e.path[:len(path)] == path)


def paths_of(value, path=()):
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_of(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_of(v, path + (i,))


@settings(max_examples=150, deadline=None)
@given(roots, st.integers(0, 2**32))
def test_pieces_add_up_to_canonical_json_at_every_path(value, seed):
    rng = random.Random(seed)
    text = messy_dumps(value, rng)
    parsed = json.loads(text)
    events, rest = stream(text + " tail", rng)
    assert rest == " tail"
    for path, sub in paths_of(parsed):
        if isinstance(sub, dict) and len(set(sub)) != len(sub):
            continue
        assert pieces_under(events, path) == json.dumps(sub, ensure_ascii=False)
    ends = [e.path for e in events if e.end]
    assert ends[-1] == () and sorted(map(str, ends)) == sorted(str(p) for p, _ in paths_of(parsed))


@pytest.mark.parametrize("text", [
    '{"a": "\\ud83d\\ude00"}', '{"a": "\\ud83d"}', '{"a": "\\ud83d\\n"}', '{"a": "\\ud83d\\u0041"}',
    '{"a": "\\ude00\\ud83d"}', '[1e400, -0, 1E-3, -Infinity, NaN, Infinity]', '{"": {}, "b": []}', '[[[]]]',
])
def test_edge_cases_match_json_module(text):
    events, rest = stream(text, random.Random(0))
    assert rest == "" and pieces_under(events, ()) == json.dumps(json.loads(text), ensure_ascii=False)


@pytest.mark.parametrize("text", ['{"a": 1,}', "[1 2]", '{"a" 1}', '{1: 2}', '{"a": tru}', '["a\nb"]', "[01]",
                                  '["\\x"]', "[1.]", "[-]", '{"a": "\\u12g4"}', "]", "{]"])
def test_invalid_json_is_refused_like_json_loads(text):
    with pytest.raises(ValueError):
        json.loads(text)
    streamer = JsonStreamer()
    with pytest.raises(JsonStreamError):
        for c in text:
            streamer.feed(c)
        if not streamer.done:
            raise JsonStreamError("incomplete")


def test_roots_restriction():
    with pytest.raises(JsonStreamError, match="root"):
        JsonStreamer(roots="{").feed("[1]")
    with pytest.raises(JsonStreamError, match="root"):
        JsonStreamer().feed('"a scalar"')
    with pytest.raises(ValueError, match="roots"):
        JsonStreamer(roots="(")
