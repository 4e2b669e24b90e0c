"""A fake model runner for scheduler tests: KV lives in a simulated pool, and the 'model'
samples a deterministic function of the context it reads back, so any bookkeeping error in
the scheduler or block manager changes the outputs.

It keeps its own state the way the real runner does (vLLM v1's contract): a request's tokens
arrive once (`new_requests`), its block table as deltas, and the tokens it samples are
appended to its own copy at once, so it can execute the next step before the scheduler has
seen this one's samples (asynchronous scheduling)."""

from __future__ import annotations

import zlib
from array import array

from scheduler import Request, Scheduler, SchedulerOutput, StopCriteria, check_stop

VOCAB = 13


def fake_model(tokens: list[int], window: int | None = None) -> int:
    """The 'next token' of a sequence: a deterministic function of all its tokens (of its last
    `window` ones for a sliding-window model)."""
    if window is not None:
        tokens = tokens[-window:]
    return zlib.crc32(array("q", tokens).tobytes()) % VOCAB


def child_first_token(prompt: list[int], index: int, window: int | None = None) -> int:
    """The first token the fake runner samples for fork child `index` of a request."""
    return (fake_model(prompt, window) + 1 + index) % VOCAB


def reference(prompt: list[int], stop: StopCriteria, max_model_len: int, outputs: list[int] = (),
              window: int | None = None):
    """What a request produces with no scheduling constraints: (outputs, finish_reason, stop_reason)."""
    request = Request("reference", prompt, stop, output_token_ids=outputs)
    if outputs and check_stop(request, max_model_len):
        return request.output_token_ids, request.finish_reason, request.stop_reason
    while True:
        request.append_output_token(fake_model(request.all_token_ids, window))
        if check_stop(request, max_model_len):
            return request.output_token_ids, request.finish_reason, request.stop_reason


class FakeRunner:
    """Executes SchedulerOutputs against a simulated KV pool (slot -> token whose KV
    is there) and checks the contract: copies first, then every request's new tokens
    are written at their slots, then each request 'attends' over its whole context
    read back from the pool, which must be exactly its tokens. The sampled token is
    `fake_model(context)`, so any bookkeeping error changes the outputs; fork child i of a
    request gets `child_first_token(context, i)` as its first token."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.config = scheduler.config
        self.kv: list[int | None] = [None] * (self.config.num_blocks * self.config.block_size)
        self.num_steps = 0
        self.tokens: dict[str, list[int]] = {}  # the runner's own copy of each request's tokens
        self.tables: dict[str, list[int]] = {}
        self.children: dict[str, tuple[str, ...]] = {}  # fork children sampled at the first sample
        self.window = scheduler.config.sliding_window  # a sliding-window model reads only its window

    def slot(self, block_ids, position: int) -> int:
        bs = self.config.block_size
        return block_ids[position // bs] * bs + position % bs

    def execute(self, output: SchedulerOutput) -> dict[str, int]:
        config, bs = self.config, self.config.block_size
        assert len(output.scheduled) <= config.max_num_seqs
        assert output.num_batched_tokens == sum(s.num_tokens for s in output.scheduled)
        assert output.num_batched_tokens <= config.max_num_batched_tokens
        assert len({s.request_id for s in output.scheduled}) == len(output.scheduled)
        for request_id in output.finished_request_ids + output.preempted_request_ids:
            self.tokens.pop(request_id, None)
            self.tables.pop(request_id, None)
            self.children.pop(request_id, None)
        for new in output.new_requests:
            assert new.request_id not in self.tokens, f"{new.request_id} sent twice"
            self.tokens[new.request_id] = list(new.token_ids)
            self.tables[new.request_id] = []
            self.children[new.request_id] = tuple(child_id for child_id, _ in new.fork_children)
        if output.scheduled:
            self.num_steps += 1
        # All copies at once, as a jitted runner does: gather every src, then scatter.
        sources = [self.kv[src * bs : (src + 1) * bs] for src, _ in output.blocks_to_copy]
        for (_, dst), contents in zip(output.blocks_to_copy, sources):
            self.kv[dst * bs : (dst + 1) * bs] = contents
        for s in output.scheduled:
            table = self.tables[s.request_id]
            assert s.block_ids_start <= len(table)
            table[s.block_ids_start:] = s.new_block_ids
            tokens = self.tokens[s.request_id]
            end = s.start_position + s.num_tokens
            assert s.num_tokens >= 1 and end <= config.max_model_len and end <= len(tokens)
            assert len(table) == -(-end // bs), (s, table)
            assert s.sample == (end == len(tokens))
            for k in range(s.num_tokens):
                self.kv[self.slot(table, s.start_position + k)] = tokens[s.start_position + k]
        sampled = {}
        for s in output.scheduled:
            end = s.start_position + s.num_tokens
            tokens = self.tokens[s.request_id]
            first = 0 if self.window is None else max(0, s.start_position - self.window + 1)
            context = [self.kv[self.slot(self.tables[s.request_id], p)] for p in range(first, end)]
            assert context == tokens[first:end]
            context = tokens[:end]  # (the windowed fake model reads only the last `window` of it)
            request = self.scheduler.get_request(s.request_id)
            if request is not None:  # known tokens agree (the runner may be one sample ahead)
                assert tokens[: request.num_tokens] == request.all_token_ids
            if s.sample:
                token = fake_model(context, self.window)
                sampled[s.request_id] = token
                tokens.append(token)  # the runner's own copy, as the device feeds the next step
                for i, child_id in enumerate(self.children.pop(s.request_id, ())):
                    sampled[child_id] = child_first_token(context, i, self.window)
        return sampled
