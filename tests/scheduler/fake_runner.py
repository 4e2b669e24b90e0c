"""A fake model runner for scheduler tests: KV lives in a simulated pool, and the 'model'
samples a deterministic function of the context it reads back, so any bookkeeping error in
the scheduler or block manager changes the outputs."""

from __future__ import annotations

import zlib
from array import array

from scheduler import Request, Scheduler, SchedulerOutput, StopCriteria, check_stop

VOCAB = 13


def fake_model(tokens: list[int]) -> int:
    """The 'next token' of a sequence: a deterministic function of all its tokens."""
    return zlib.crc32(array("q", tokens).tobytes()) % VOCAB


def reference(prompt: list[int], stop: StopCriteria, max_model_len: int, outputs: list[int] = ()):
    """What a request produces with no scheduling constraints: (outputs, finish_reason, stop_reason)."""
    request = Request("reference", prompt, stop, output_token_ids=outputs)
    if outputs and check_stop(request, max_model_len):
        return request.output_token_ids, request.finish_reason, request.stop_reason
    while True:
        request.append_output_token(fake_model(request.all_token_ids))
        if check_stop(request, max_model_len):
            return request.output_token_ids, request.finish_reason, request.stop_reason


class FakeRunner:
    """Executes SchedulerOutputs against a simulated KV pool (slot -> token whose KV
    is there) and checks the contract: copies first, then every request's new tokens
    are written at their slots, then each request 'attends' over its whole context
    read back from the pool, which must be exactly its tokens. The sampled token is
    `fake_model(context)`, so any bookkeeping error changes the outputs."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.config = scheduler.config
        self.kv: list[int | None] = [None] * (self.config.num_blocks * self.config.block_size)
        self.num_steps = 0

    def slot(self, block_ids, position: int) -> int:
        bs = self.config.block_size
        return block_ids[position // bs] * bs + position % bs

    def execute(self, output: SchedulerOutput) -> dict[str, list[int]]:
        config, bs = self.config, self.config.block_size
        assert len(output.scheduled) <= config.max_num_seqs
        assert output.num_batched_tokens == sum(len(s.token_ids) for s in output.scheduled)
        assert output.num_batched_tokens <= config.max_num_batched_tokens
        assert len({s.request_id for s in output.scheduled}) == len(output.scheduled)
        if output.scheduled:
            self.num_steps += 1
        # All copies at once, as a jitted runner does: gather every src, then scatter.
        sources = [self.kv[src * bs : (src + 1) * bs] for src, _ in output.blocks_to_copy]
        for (_, dst), contents in zip(output.blocks_to_copy, sources):
            self.kv[dst * bs : (dst + 1) * bs] = contents
        for s in output.scheduled:
            request = self.scheduler.get_request(s.request_id)
            end = s.start_position + len(s.token_ids)
            assert len(s.token_ids) >= 1 and end <= config.max_model_len
            assert list(s.token_ids) == request.all_token_ids[s.start_position : end]
            assert len(s.block_ids) == -(-end // bs)
            assert s.sample == (end == request.num_tokens)
            for k, token in enumerate(s.token_ids):
                self.kv[self.slot(s.block_ids, s.start_position + k)] = token
        sampled = {}
        for s in output.scheduled:
            end = s.start_position + len(s.token_ids)
            context = [self.kv[self.slot(s.block_ids, p)] for p in range(end)]
            assert context == self.scheduler.get_request(s.request_id).all_token_ids[:end]
            if s.sample:
                sampled[s.request_id] = [fake_model(context)]
        return sampled
