"""The contract between the scheduler and the model runner / engine: plain data.

One engine step:
    output = scheduler.schedule()                        # SchedulerOutput
    runner: apply output.blocks_to_copy, write the KV of every scheduled request's
            token_ids at positions start_position.., sample one token for each
            request whose `sample` is True
    update = scheduler.update(output, {request_id: [token_id], ...})   # SchedulerUpdate
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from scheduler.request import Request


class ScheduledRequest(NamedTuple):
    """One request's share of a step: `len(token_ids)` new tokens (a prefill chunk, a
    whole prompt, a recompute after preemption, or 1 decode token).

    NOTE: a NamedTuple rather than a frozen dataclass only because one is built per
    request per step and it is 2x cheaper to build; use it by field name.
    """

    # The request's id (the key of its sampled tokens in `Scheduler.update`).
    request_id: str
    # The tokens to compute this step: all_token_ids[start_position : start_position + len(token_ids)]
    # (a fresh list; 1 token for a decode step).
    token_ids: list[int]
    # num_computed_tokens before this step = the absolute position of token_ids[0];
    # the step's attention context is start_position + len(token_ids) tokens.
    start_position: int
    # The request's whole block table after this step's allocation: position p lives in
    # slot block_ids[p // block_size] * block_size + p % block_size.
    # NOTE: the block manager's own list, not a copy: read-only; the next schedule()
    # may change it in place, so copy it to keep it longer than this step.
    block_ids: list[int]
    # True when this step computes the request's last known token, so the runner must
    # sample its next token; False for a prefill chunk that is not the last.
    sample: bool


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """What to run in one step. An empty `scheduled` means nothing to run (skip the
    model; `update` accepts it too)."""

    # The requests to run, in batch order: running ones (admission order) first, then
    # newly admitted ones (FCFS).
    scheduled: tuple[ScheduledRequest, ...]
    # Copy-on-write (src_block, dst_block) pairs: copy all of src's KV (every layer,
    # K and V) into dst BEFORE this step's KV writes. Apply them in order, or all at
    # once reading every src before writing any dst (a gather then a scatter, e.g.
    # pool.at[..., dst, :, :].set(pool[..., src, :, :])): a block freed by a preemption
    # later in the step can be a src and then a later pair's dst.
    blocks_to_copy: tuple[tuple[int, int], ...]
    # Requests preempted this step (blocks freed; they will recompute from scratch).
    # Engines that keep per-request device state drop it for these.
    preempted_request_ids: tuple[str, ...]
    # sum(len(s.token_ids) for s in scheduled) <= max_num_batched_tokens.
    num_batched_tokens: int


@dataclass(frozen=True, slots=True)
class SchedulerUpdate:
    """What `Scheduler.update` did with a step's sampled tokens, for the engine to emit."""

    # request_id -> the tokens appended to it this step (usually one), for every
    # request that sampled, in batch order; a stop token is included, tokens sampled
    # after a stop are dropped.
    new_token_ids: dict[str, list[int]]
    # Requests that finished this step (status, finish_reason, stop_reason and
    # output_token_ids are final; their blocks are already freed), in batch order.
    finished: tuple[Request, ...]
