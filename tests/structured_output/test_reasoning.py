"""Reasoning parsers (deepseek_r1, qwen3) whole and streamed, and the reasoning -> tool-call chain."""

from __future__ import annotations

import itertools
import random

import pytest

from pagedjax.reasoning import get_reasoning_parser
from pagedjax.tool_parsers import ChatOutputParser, get_tool_parser, merge_deltas, tool_calls_from_delta

# (parser, output, reasoning, content)
CASES = [
    ("deepseek_r1", "<think>plan it</think>The answer.", "plan it", "The answer."),
    ("deepseek_r1", "plan it</think>The answer.", "plan it", "The answer."),
    ("deepseek_r1", "still thinking", "still thinking", None),
    ("deepseek_r1", "<think>a</think>", "a", None),
    ("deepseek_r1", "x</think>y</think>z", "x", "y</think>z"),
    ("deepseek_r1", "</think>just content", None, "just content"),
    ("deepseek_r1", "t</thi", "t</thi", None),
    ("qwen3", "<think>plan it</think>The answer.", "plan it", "The answer."),
    ("qwen3", "\n<think>\nhm\n</think>\n\nok", "\nhm\n", "\n\n\nok"),   # text before <think> is content too
    ("qwen3", "no thinking here", None, "no thinking here"),
    ("qwen3", "plan</think>answer", None, "plan</think>answer"),
    ("qwen3", "<think>unfinished", "unfinished", None),
    ("qwen3", "<thi", None, "<thi"),
    ("qwen3", "<think></think>", None, None),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("name, text, reasoning, content", CASES, ids=IDS)
def test_whole(name, text, reasoning, content):
    assert get_reasoning_parser(name)().extract_reasoning(text) == (reasoning, content)


@pytest.mark.parametrize("chunk", [1, 3, "random"])
@pytest.mark.parametrize("name, text, reasoning, content", CASES, ids=IDS)
def test_streamed_equals_whole(name, text, reasoning, content, chunk):
    parser = get_reasoning_parser(name)()
    rng = random.Random(0)
    deltas, pos = [], 0
    while pos < len(text):
        n = rng.randint(1, 5) if chunk == "random" else chunk
        deltas.append(parser.feed(text[pos:pos + n]))
        pos += n
    deltas.append(parser.finish())
    merged = merge_deltas(deltas)
    got = (merged.reasoning_content, merged.content) if merged else (None, None)
    assert got == (reasoning, content)
    assert parser.reasoning_ended == (name == "deepseek_r1" and "</think>" in text
                                      or name == "qwen3" and "<think>" in text and "</think>" in text)


def test_reasoning_is_streamed_as_it_comes():
    parser = get_reasoning_parser("deepseek_r1")()
    assert parser.feed("<think>ab").reasoning_content == "ab"
    assert parser.feed("c</th") .reasoning_content == "c"     # "</th" held: it may be the end tag
    assert not parser.reasoning_ended
    delta = parser.feed("ink>Done")
    assert (delta.reasoning_content, delta.content) == (None, "Done") and parser.reasoning_ended


def test_is_reasoning_end_by_token_ids():
    class Tok:   # </think> and <think> as single tokens 7 and 6
        def encode(self, text, add_special_tokens=False):
            return {"<think>": [6], "</think>": [7]}.get(text, [1, 2])

    parser = get_reasoning_parser("qwen3")(Tok())
    assert parser.is_reasoning_end([6, 3, 7, 4]) and not parser.is_reasoning_end([6, 3])
    assert not parser.is_reasoning_end([7, 6, 3])
    with pytest.raises(ValueError, match="single token"):
        get_reasoning_parser("qwen3")().is_reasoning_end([1])
    with pytest.raises(ValueError, match="reasoning_parser"):
        get_reasoning_parser("o1")


def test_chat_output_parser_chains_reasoning_then_tools():
    text = ('<think>I should call the tool.</think>Calling.<tool_call>{"name": "f", "arguments": {"x": [1, 2]}}'
            '</tool_call>')
    counter = itertools.count()
    make = lambda: ChatOutputParser(reasoning_parser=get_reasoning_parser("qwen3")(),  # noqa: E731
                                    tool_parser=get_tool_parser("qwen3")(make_id=lambda: f"c{next(counter)}"))
    whole = make().parse(text)
    assert whole.reasoning_content == "I should call the tool." and whole.content == "Calling."
    assert [(c.function.name, c.function.arguments) for c in whole.tool_calls] == [("f", '{"x": [1, 2]}')]
    streaming = make()
    merged = merge_deltas([streaming.feed(c) for c in text] + [streaming.finish()])
    assert (merged.reasoning_content, merged.content) == (whole.reasoning_content, whole.content)
    assert [(c.function.name, c.function.arguments) for c in tool_calls_from_delta(merged)] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls]
    plain = ChatOutputParser()
    assert plain.parse("hi").content == "hi" and plain.feed("hi").content == "hi" and plain.finish() is None
