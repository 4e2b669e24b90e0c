"""Deltas from cumulative outputs (stop-string hold-back), and a lagging consumer's merged outputs."""

from __future__ import annotations

import asyncio

from pagedjax.outputs import CompletionOutput, RequestOutput
from pagedjax.server.generation import Generation
from pagedjax.server.streaming import StreamCursor, held_back


def completion(text, token_ids, finish=None, stop_reason=None):
    return CompletionOutput(0, text, list(token_ids), None, None, finish, stop_reason)


def test_held_back_is_the_longest_possible_stop_start():
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello w", ["world", "xyz"]) == 1
    assert held_back("hello", ["world"]) == 0
    assert held_back("abab", ["abc"]) == 2
    assert held_back("", ["abc"]) == 0 and held_back("x", []) == 0


def test_cursor_never_sends_what_a_stop_string_takes_back():
    cursor, stops = StreamCursor(), ["END"]
    d1 = cursor.advance(completion("Hi E", [1, 2]), stops)
    assert (d1.text, d1.token_ids, d1.finish_reason) == ("Hi ", [1, 2], None)  # "E" might start "END"
    assert cursor.advance(completion("Hi E", [1, 2]), stops) is None  # nothing new
    d2 = cursor.advance(completion("Hi EN", [1, 2, 3]), stops)
    assert (d2.text, d2.token_ids) == ("", [3])  # a token, no safe text yet
    d3 = cursor.advance(completion("Hi ", [1, 2, 3, 4], "stop", "END"), stops)  # the engine cut "END"
    assert (d3.text, d3.token_ids, d3.finish_reason, d3.stop_reason) == ("", [4], "stop", "END")
    assert cursor.advance(completion("Hi ", [1, 2, 3, 4], "stop", "END"), stops) is None  # finished
    plain = StreamCursor()
    assert plain.advance(completion("Hi E", [1]), []).text == "Hi E"  # no stop strings: nothing held


class _RecordingEngine:
    """Stands in for AsyncEngine: accepts requests, records aborts."""

    def __init__(self):
        self.aborted = []

    async def add_request(self, request_id, token_ids, params, sink, arrival_time=None):
        self.sink = sink

    def abort(self, request_id):
        self.aborted.append(request_id)


def test_a_lagging_consumer_gets_the_latest_cumulative_output():
    async def scenario():
        engine = _RecordingEngine()
        generation = Generation(engine, "r")
        await generation.start([([1, 2], None), ([3], None)])
        outs = [RequestOutput(f"r-{p}", None, [1], [completion("a" * n, range(n))], finished=(n == 3))
                for p, n in ((0, 1), (1, 1), (0, 2), (0, 3))]
        for out in outs:  # four steps' outputs arrive before the consumer reads
            engine.sink.put_nowait((out.request_id, out))
        first = await generation.next()
        second = await generation.next()
        assert (first[0], first[1].outputs[0].text) == (1, "a")  # prompt 1's only output
        assert (second[0], second[1].outputs[0].text, second[1].finished) == (0, "aaa", True)  # merged
        generation.close()
        assert engine.aborted == ["r-1"]  # the unfinished one is aborted on close

    asyncio.run(asyncio.wait_for(scenario(), 10))
