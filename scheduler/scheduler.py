"""Continuous batching with vLLM v1's counter model.

Every request has `num_computed_tokens` (KV in the cache) and `num_tokens` (prompt +
outputs). A step grants each scheduled request `num_tokens - num_computed_tokens` new
tokens, or fewer when the step's token budget runs out; prefill, chunked prefill,
recompute after preemption and decode are all the same thing with different counts,
and one step mixes them.

Policy per step:
1. Running requests first (decode priority), in admission order. When one cannot get
   blocks, the most recently admitted running request is preempted (its blocks freed,
   recomputed later from its prompt AND outputs, which it keeps) until it can; when it
   is itself the most recent one, it is preempted and the step stops there.
2. Then, unless this step preempted, waiting requests FCFS (preempted ones first): a
   prefix-cache lookup, then allocation; the first one that does not fit stops admission.

Driving it (the engine):
    scheduler.add_request(Request(request_id, prompt_ids, StopCriteria(...)))
    while scheduler.has_unfinished_requests():
        output = scheduler.schedule()
        sampled = run_model(output)            # {request_id: [token]} for s.sample
        result = scheduler.update(output, sampled)
        emit(result.new_token_ids, result.finished)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scheduler.block_manager import BlockManager, cdiv
from scheduler.output import ScheduledRequest, SchedulerOutput, SchedulerUpdate
from scheduler.request import Request, RequestStatus, check_stop

_RUNNING = RequestStatus.RUNNING


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Limits of the scheduler and the size of the KV pool it manages."""

    num_blocks: int  # KV blocks in the pool (ids 0..num_blocks-1)
    max_model_len: int  # most tokens (prompt + output) a request may have computed
    block_size: int = 16  # token slots per KV block
    max_num_seqs: int = 256  # most requests scheduled in one step
    max_num_batched_tokens: int = 8192  # most tokens computed in one step (all requests)
    enable_prefix_caching: bool = True  # reuse cached full blocks across requests

    def __post_init__(self) -> None:
        for name in ("num_blocks", "max_model_len", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(
                f"SchedulerConfig.enable_prefix_caching must be a bool, got {self.enable_prefix_caching!r}"
            )


class Scheduler:
    """Owns the requests (waiting queue, running list) and, through its
    `BlockManager`, their KV blocks. See the module docstring for the step loop."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self._requests: dict[str, Request] = {}  # every unfinished request
        self._waiting: deque[Request] = deque()  # FCFS; preempted requests go to the front
        self._running: list[Request] = []  # admission order: preemption pops from the end
        self._next_arrival = 0
        self._num_preemptions = 0
        # The last non-empty SchedulerOutput, until update() consumes it.
        self._in_flight: SchedulerOutput | None = None

    # ------------------------------------------------------------- requests

    def max_kv_tokens(self, request: Request) -> int:
        """The most tokens whose KV `request` can ever need at once: it stops after
        `max_tokens` outputs or at `max_model_len` tokens, and its last sampled token
        is never computed."""
        num_prompt = request.num_prompt_tokens
        final_tokens = min(num_prompt + request.stop.max_tokens, max(self.config.max_model_len, num_prompt + 1))
        return final_tokens - 1

    def _validate_new(self, request: Request) -> None:
        config = self.config
        if request.request_id in self._requests:
            raise ValueError(f"request id {request.request_id!r} is already in the scheduler")
        if request.status is not RequestStatus.WAITING or request.arrival_index != -1 or request.num_computed_tokens:
            raise ValueError(f"request {request.request_id!r} was already added to a scheduler")
        if request.num_prompt_tokens > config.max_model_len:
            raise ValueError(
                f"request {request.request_id!r}: the prompt has {request.num_prompt_tokens} tokens, more than "
                f"max_model_len={config.max_model_len}; shorten the prompt or raise max_model_len"
            )
        num_kv_tokens = self.max_kv_tokens(request)
        if cdiv(num_kv_tokens, config.block_size) > config.num_blocks:
            raise ValueError(
                f"request {request.request_id!r} needs KV for up to {num_kv_tokens} tokens "
                f"({cdiv(num_kv_tokens, config.block_size)} blocks of {config.block_size}) but the whole pool is "
                f"{config.num_blocks} blocks ({config.num_blocks * config.block_size} tokens); lower max_tokens or "
                f"max_model_len, or give the KV cache more memory"
            )

    def add_request(self, request: Request) -> None:
        """Queue a new request (FCFS). Raises ValueError for a duplicate id, a prompt
        longer than max_model_len (never truncated), or a request that could never fit
        in the whole KV pool. A request may come with output tokens (a sample whose
        parent is gone): they are computed with the prompt, as after a preemption."""
        self._validate_new(request)
        request.arrival_index = self._next_arrival
        self._next_arrival += 1
        self._requests[request.request_id] = request
        self._waiting.append(request)

    def abort_request(self, request_id: str) -> bool:
        """Finish the request as aborted and free its blocks, wherever it is (waiting,
        running, even in flight: `update` then ignores it). False for an unknown id."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        if request.status is _RUNNING:
            self._running.remove(request)
        else:
            self._waiting.remove(request)
        self.block_manager.free(request_id)
        request.status = RequestStatus.FINISHED_ABORTED
        return True

    def fork_request(self, parent_id: str, child: Request) -> bool:
        """Add `child` as a continuation of the unfinished request `parent_id`, sharing
        all of the parent's blocks (copy-on-write) and its computed tokens; afterwards
        it is an independent request. For parallel sampling (n > 1) and beam search.

        `child` is a fresh Request whose tokens equal the parent's over the parent's
        `num_computed_tokens` and go at least one token further; typically
        `Request(child_id, parent.prompt_token_ids, stop, output_token_ids=
        parent.output_token_ids[:-1] + [another_sampled_token])` right after `update`.
        Its stop criteria are checked on its last output token as `update` would:
        returns True when the child is already finished (it is then not added and
        holds nothing), else False. Not allowed between `schedule` and `update`.
        """
        if self._in_flight is not None:
            raise RuntimeError("fork_request between schedule() and update(): update() first")
        parent = self._requests.get(parent_id)
        if parent is None:
            raise ValueError(f"fork_request: no unfinished request {parent_id!r}")
        self._validate_new(child)
        num_shared = parent.num_computed_tokens
        if child.num_tokens <= num_shared or child.all_token_ids[:num_shared] != parent.all_token_ids[:num_shared]:
            raise ValueError(
                f"fork_request: child {child.request_id!r} must repeat the parent's {num_shared} computed tokens "
                f"and have at least one more"
            )
        if child.output_token_ids and check_stop(child, self.config.max_model_len):
            return True
        child.arrival_index = self._next_arrival
        self._next_arrival += 1
        self._requests[child.request_id] = child
        if parent.status is _RUNNING:
            self.block_manager.fork(parent, child)
            child.num_computed_tokens = num_shared
            child.status = _RUNNING
            self._running.append(child)
        else:  # the parent holds no blocks: the child simply queues
            self._waiting.append(child)
        return False

    def reset_prefix_cache(self) -> bool:
        """Empties the prefix cache; only possible while no request holds blocks."""
        return self.block_manager.reset_prefix_cache()

    def get_request(self, request_id: str) -> Request | None:
        """The unfinished request with this id, or None."""
        return self._requests.get(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    # ----------------------------------------------------------------- steps

    def schedule(self) -> SchedulerOutput:
        """Decide the next step (see the module docstring) and allocate its slots.

        A non-empty output must be passed to `update` before the next `schedule`.
        """
        if self._in_flight is not None:
            raise RuntimeError("schedule() called again before update() of the previous SchedulerOutput")
        config = self.config
        block_manager = self.block_manager
        allocate = block_manager.allocate_slots
        max_num_seqs = config.max_num_seqs
        budget = config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []

        running = self._running
        i = 0
        while i < len(running) and budget > 0 and len(scheduled) < max_num_seqs:
            request = running[i]
            start = request.num_computed_tokens
            all_tokens = request.all_token_ids
            num_new = len(all_tokens) - start
            if num_new > budget:
                num_new = budget
            if num_new <= 0:  # NOTE: cannot happen: a running request always has a token to compute
                i += 1
                continue
            block_ids = allocate(request, num_new)
            while block_ids is None:
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
                block_ids = allocate(request, num_new)
            if block_ids is None:
                break
            end = start + num_new
            scheduled.append(
                ScheduledRequest(request.request_id, all_tokens[start:end], start, block_ids, end == len(all_tokens))
            )
            budget -= num_new
            i += 1

        if not preempted:
            waiting = self._waiting
            while waiting and budget > 0 and len(running) < max_num_seqs and len(scheduled) < max_num_seqs:
                request = waiting[0]
                if request.skip_prefix_cache:
                    computed_blocks, num_cached = [], 0
                else:
                    computed_blocks, num_cached = block_manager.get_computed_blocks(request)
                all_tokens = request.all_token_ids
                num_new = min(len(all_tokens) - num_cached, budget)
                block_ids = allocate(request, num_new, computed_blocks)
                if block_ids is None:
                    break
                waiting.popleft()
                if request.status is RequestStatus.WAITING:
                    request.num_cached_tokens = num_cached
                request.status = _RUNNING
                request.num_computed_tokens = num_cached
                running.append(request)
                end = num_cached + num_new
                scheduled.append(
                    ScheduledRequest(
                        request.request_id, all_tokens[num_cached:end], num_cached, block_ids, end == len(all_tokens)
                    )
                )
                budget -= num_new

        output = SchedulerOutput(
            tuple(scheduled),
            tuple(block_manager.take_copies()),
            tuple(preempted),
            config.max_num_batched_tokens - budget,
        )
        self._in_flight = output if scheduled else None
        return output

    def _preempt(self, request: Request) -> None:
        """Free a running request's blocks and queue it first to recompute; its
        tokens (prompt and outputs so far) are kept, so nothing is lost."""
        self.block_manager.free(request.request_id)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self._num_preemptions += 1
        self._waiting.appendleft(request)

    def update(
        self, scheduler_output: SchedulerOutput, sampled_token_ids: Mapping[str, Sequence[int]]
    ) -> SchedulerUpdate:
        """Account for a step the runner has executed.

        For every scheduled request: `num_computed_tokens += len(token_ids)` and its
        newly full blocks enter the prefix cache. For every one with `sample`,
        `sampled_token_ids[request_id]` (one token, or several accepted ones in order)
        is appended token by token with stop checks (`check_stop`); tokens after a stop
        are dropped. Entries for requests that did not need to sample are ignored (a
        non-final prefill chunk's sample is meaningless). Finished requests free their
        blocks at once. Requests aborted while in flight are skipped. A missing sample
        raises ValueError before anything changes (the output stays pending).
        """
        if scheduler_output is not self._in_flight:
            if not scheduler_output.scheduled:
                return SchedulerUpdate({}, ())
            raise RuntimeError("update() takes the SchedulerOutput of the latest schedule() call, once")
        requests = self._requests
        for request_id, _, _, _, sample in scheduler_output.scheduled:
            if sample and not sampled_token_ids.get(request_id) and request_id in requests:
                raise ValueError(f"update(): no sampled token for {request_id!r}, which computed its last token")
        self._in_flight = None
        cache_full_blocks = self.block_manager.cache_full_blocks
        max_model_len = self.config.max_model_len
        block_size = self.config.block_size
        new_token_ids: dict[str, list[int]] = {}
        finished: list[Request] = []
        for request_id, token_ids, _, _, sample in scheduler_output.scheduled:
            request = requests.get(request_id)
            if request is None or request.status is not _RUNNING:
                continue  # aborted while in flight
            num_computed = request.num_computed_tokens
            request.num_computed_tokens = num_computed + len(token_ids)
            if (num_computed % block_size) + len(token_ids) >= block_size:
                cache_full_blocks(request)  # a block became full
            if not sample:
                continue
            tokens = sampled_token_ids[request_id]
            appended = []
            for token in tokens:
                token = int(token)
                request.output_token_ids.append(token)
                request.all_token_ids.append(token)
                appended.append(token)
                if check_stop(request, max_model_len):
                    finished.append(request)
                    break
            new_token_ids[request_id] = appended
        if finished:
            for request in finished:
                self.block_manager.free(request.request_id)
                del requests[request.request_id]
            self._running = [r for r in self._running if r.status is _RUNNING]
        return SchedulerUpdate(new_token_ids, tuple(finished))

    # ---------------------------------------------------------------- stats

    def stats(self) -> dict[str, int | float]:
        """Cheap counters for logging (O(1))."""
        block_manager = self.block_manager
        return {
            "num_kv_blocks": block_manager.num_blocks,
            "num_free_kv_blocks": block_manager.num_free_blocks,
            "kv_cache_usage": block_manager.num_used_blocks / block_manager.num_blocks,
            "num_cached_kv_blocks": block_manager.num_cached_blocks,
            "num_running": len(self._running),
            "num_waiting": len(self._waiting),
            "num_preemptions": self._num_preemptions,
            "prefix_cache_queries": block_manager.prefix_cache_queries,
            "prefix_cache_hits": block_manager.prefix_cache_hits,
        }

    def kv_slot_usage(self) -> tuple[int, int]:
        """(allocated KV slots, slots holding a token); O(blocks held), for metrics."""
        return self.block_manager.slot_usage()
