"""The contract between the scheduler and the model runner / engine: plain data.

One engine step (vLLM v1's contract):
    output = scheduler.schedule()                        # SchedulerOutput
    runner: forget `finished_request_ids` and `preempted_request_ids`; learn every
            `new_requests` entry (all its tokens, sampling params, whole block table);
            apply each scheduled request's block-table delta; apply `blocks_to_copy`;
            compute `num_tokens` tokens of each scheduled request from `start_position`
            on and sample one token for each whose `sample` is True (and for the fork
            children of a request sampling for the first time)
    update = scheduler.update(output, {request_id: token_id, ...})   # SchedulerUpdate

New requests travel once; running ones only as per-step deltas. The runner keeps each
request's tokens itself: it appends what it samples. With asynchronous scheduling a step
is scheduled before the previous one's samples are known: its last token for a request
that sampled in the previous step is that sample, which the runner feeds from the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from scheduler.request import Request


class ScheduledRequest(NamedTuple):
    """One request's share of a step: `num_tokens` new tokens (a prefill chunk, a whole
    prompt, a recompute after preemption, or 1 decode token).

    NOTE: a NamedTuple rather than a frozen dataclass only because one is built per
    request per step and it is 2x cheaper to build; use it by field name.
    """

    # The request's id (the key of its sampled token in `Scheduler.update`).
    request_id: str
    # Tokens to compute this step: positions [start_position, start_position + num_tokens).
    num_tokens: int
    # The request's num_computed_tokens before this step = the absolute position of its first
    # token this step; the step's attention context is start_position + num_tokens tokens.
    start_position: int
    # Block-table delta: entries from index `block_ids_start` on are now `new_block_ids`
    # (appended blocks, or a block replaced by copy-on-write). Empty when unchanged; the whole
    # table (from 0) for a request in `new_requests`.
    block_ids_start: int
    new_block_ids: tuple[int, ...]
    # True when this step computes the request's last token (known or in flight), so the
    # runner must sample its next token; False for a prefill chunk that is not the last.
    sample: bool


@dataclass(frozen=True, slots=True)
class NewRequestData:
    """A request the runner has no state for (just admitted, readmitted after preemption,
    or forked): everything it needs, once."""

    request_id: str
    # All known tokens: the prompt, then outputs so far (a readmitted or forked request).
    token_ids: tuple[int, ...]
    num_prompt_tokens: int
    # Opaque to the scheduler: the engine's sampling parameters of this request.
    sampling_params: object
    # Requests that fork from this one at its first sample: (request id, sampling params).
    # The runner samples one token for each from this request's logits in that step.
    fork_children: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """What to run in one step. An empty `scheduled` means nothing to run (skip the
    model; `update` accepts it too)."""

    # The requests to run: running ones (admission order) first, then newly admitted ones.
    scheduled: tuple[ScheduledRequest, ...]
    # Requests among `scheduled` that the runner learns about in this step.
    new_requests: tuple[NewRequestData, ...]
    # Copy-on-write (src_block, dst_block) pairs: copy all of src's KV (every layer,
    # K and V) into dst BEFORE this step's KV writes. Apply them in order, or all at
    # once reading every src before writing any dst (a gather then a scatter, e.g.
    # pool.at[..., dst, :, :].set(pool[..., src, :, :])): a block freed by a preemption
    # later in the step can be a src and then a later pair's dst.
    blocks_to_copy: tuple[tuple[int, int], ...]
    # Requests preempted this step (blocks freed; they will recompute from scratch and come
    # back in `new_requests`). The runner drops their state.
    preempted_request_ids: tuple[str, ...]
    # Requests that finished or were aborted since the previous schedule(): drop their state.
    finished_request_ids: tuple[str, ...]
    # sum(s.num_tokens for s in scheduled) <= max_num_batched_tokens.
    num_batched_tokens: int


@dataclass(frozen=True, slots=True)
class SchedulerUpdate:
    """What `Scheduler.update` did with a step's sampled tokens, for the engine to emit."""

    # request_id -> the tokens appended to it this step (one, or none when it was dropped),
    # for every request that sampled, in batch order; forked children get their first token
    # here too. A stop token is included; tokens sampled after a stop are dropped.
    new_token_ids: dict[str, list[int]]
    # Requests that finished this step (status, finish_reason, stop_reason and
    # output_token_ids are final; their blocks are already freed), in batch order.
    finished: tuple[Request, ...]
