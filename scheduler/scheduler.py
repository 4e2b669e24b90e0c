"""Continuous batching with vLLM v1's counter model.

Every request has `num_computed_tokens` (KV in the cache, or being written by a step
already scheduled) and `num_tokens` (prompt + outputs, plus output placeholders of steps
in flight). A step grants each scheduled request `num_tokens - num_computed_tokens` new
tokens, or fewer when the step's token budget runs out; prefill, chunked prefill,
recompute after preemption and decode are all the same thing with different counts,
and one step mixes them. `num_computed_tokens` advances when a step is scheduled (as in
vLLM v1), so the next step can be scheduled before this one's results are known
(asynchronous scheduling): a request that samples gets an output placeholder, which the
next step computes (the runner feeds it from the device) and `update` replaces with the
real token.

Policy per step:
1. Running requests first (decode priority), in admission order. When one cannot get
   blocks, the most recently admitted running request is preempted (its blocks freed,
   recomputed later from its prompt AND outputs, which it keeps) until it can; when it
   is itself the most recent one, it is preempted and the step stops there. A running
   request whose in-flight tokens already reach its length limit is not scheduled.
2. Then, unless this step preempted, waiting requests FCFS (preempted ones first): a
   prefix-cache lookup, then allocation; the first one that does not fit stops admission.

Driving it (the engine), synchronously:
    scheduler.add_request(Request(request_id, prompt_ids, StopCriteria(...)))
    while scheduler.has_unfinished_requests():
        output = scheduler.schedule()
        sampled = run_model(output)            # {request_id: token} for s.sample (+ fork children)
        result = scheduler.update(output, sampled)
        emit(result.new_token_ids, result.finished)
or with one step in flight: schedule step N+1 before `update` of step N (updates in order).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scheduler.block_manager import BlockManager, cdiv
from scheduler.output import NewRequestData, ScheduledRequest, SchedulerOutput, SchedulerUpdate
from scheduler.request import Request, RequestStatus, check_stop

_RUNNING = RequestStatus.RUNNING
_ScheduledRequest = ScheduledRequest


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Limits of the scheduler and the size of the KV pool it manages."""

    num_blocks: int  # KV blocks in the pool (ids 0..num_blocks-1)
    max_model_len: int  # most tokens (prompt + output) a request may have computed
    block_size: int = 16  # token slots per KV block
    max_num_seqs: int = 256  # most requests scheduled in one step
    max_num_batched_tokens: int = 8192  # most tokens computed in one step (all requests)
    enable_prefix_caching: bool = True  # reuse cached full blocks across requests
    # Every layer attends to the last `sliding_window` positions only: blocks wholly before the
    # window of the next position to compute are given back. None = full attention somewhere.
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_blocks", "max_model_len", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} must be an int >= 1, got {value!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"SchedulerConfig.sliding_window must be None or an int >= 1, got {self.sliding_window!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(
                f"SchedulerConfig.enable_prefix_caching must be a bool, got {self.enable_prefix_caching!r}"
            )


def _as_token(token) -> int:
    """A sampled token given as an int, a numpy integer or a one-token list."""
    if isinstance(token, (list, tuple)):
        if len(token) != 1:
            raise ValueError(f"update(): one sampled token per request and step, got {token!r}")
        token = token[0]
    return int(token)


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
        # Scheduled, non-empty SchedulerOutputs whose update() is still due, oldest first.
        self._in_flight: deque[SchedulerOutput] = deque()
        # Requests finished or aborted, and preempted, since the last non-empty SchedulerOutput
        # (the runner drops their state).
        self._finished_ids: list[str] = []
        self._preempted_ids: list[str] = []
        # Requests of failed steps, each to run alone once (in order) to find a culprit.
        self._suspects: deque[str] = deque()

    # ------------------------------------------------------------- requests

    def max_kv_tokens(self, request: Request) -> int:
        """The most tokens whose KV `request` can ever need at once: it stops after
        `max_tokens` outputs or at `max_model_len` tokens, and its last sampled token
        is never computed (a step in flight is never scheduled past the length limit)."""
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
        if config.sliding_window is not None:  # only the window (and a chunk) is held at once
            num_kv_tokens = min(num_kv_tokens, config.sliding_window + config.max_num_batched_tokens
                                + config.block_size)
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
        parent is gone): they are computed with the prompt, as after a preemption. Its
        `fork_children` join the scheduler when it samples its first token."""
        self._validate_new(request)
        for child in request.fork_children:
            self._validate_new(child)
        request.arrival_index = self._next_arrival
        self._next_arrival += 1
        self._requests[request.request_id] = request
        self._waiting.append(request)

    def _remove(self, request: Request, status: RequestStatus) -> None:
        """Takes an unfinished request out of the queues, frees its blocks, sets `status`."""
        del self._requests[request.request_id]
        if request.status is _RUNNING:
            self._running.remove(request)
        else:
            self._waiting.remove(request)
        self.block_manager.free(request.request_id)
        request.status = status
        self._finished_ids.append(request.request_id)

    def abort_request(self, request_id: str) -> bool:
        """Finish the request as aborted and free its blocks, wherever it is (waiting,
        running, even in flight: `update` then ignores it). False for an unknown id."""
        request = self._requests.get(request_id)
        if request is None:
            return False
        self._remove(request, RequestStatus.FINISHED_ABORTED)
        return True

    def finish_request(self, request_id: str, stop_reason: int | str | None = None) -> bool:
        """Finish the request as stopped (e.g. its text reached a stop string; `stop_reason`
        says which) and free its blocks, wherever it is; tokens sampled for it in steps
        still in flight are dropped. False for an unknown id."""
        request = self._requests.get(request_id)
        if request is None:
            return False
        self._remove(request, RequestStatus.FINISHED_STOPPED)
        request.stop_reason = stop_reason
        return True

    def fork_request(self, parent_id: str, child: Request) -> bool:
        """Add `child` as a continuation of the unfinished request `parent_id`, sharing
        all of the parent's blocks (copy-on-write) and its computed tokens; afterwards
        it is an independent request. For beam search and explicit forks (parallel
        sampling uses `Request.fork_children`, forked by `update`).

        `child` is a fresh Request whose tokens equal the parent's over the parent's
        `num_computed_tokens` and go at least one token further; typically
        `Request(child_id, parent.prompt_token_ids, stop, output_token_ids=
        parent.output_token_ids[:-1] + [another_sampled_token])` right after `update`.
        Its stop criteria are checked on its last output token as `update` would:
        returns True when the child is already finished (it is then not added and
        holds nothing), else False. Not allowed while a step is in flight.
        """
        if self._in_flight:
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
        return self._fork(parent, child, num_shared)

    def _fork(self, parent: Request, child: Request, num_shared: int) -> bool:
        """Adds `child`, sharing the parent's blocks over its first `num_shared` tokens when the
        parent holds them (else it queues and recomputes); True if it is finished already."""
        if child.output_token_ids and check_stop(child, self.config.max_model_len):
            return True
        child.arrival_index = self._next_arrival
        self._next_arrival += 1
        self._requests[child.request_id] = child
        if self.block_manager.has_blocks(parent.request_id):
            self.block_manager.fork(parent, child, num_shared)
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

    def has_feedback_requests(self) -> bool:
        """Whether a running request needs its last sample on the host before its next step."""
        return any(r.needs_host_feedback for r in self._running)

    @property
    def num_in_flight(self) -> int:
        """Scheduled steps whose update() is still due."""
        return len(self._in_flight)

    # ----------------------------------------------------------------- steps

    def schedule(self) -> SchedulerOutput:
        """Decide the next step (see the module docstring) and allocate its slots.

        A non-empty output must be passed to `update`, in order; at most one other step
        may be in flight (asynchronous scheduling).
        """
        if len(self._in_flight) > 1:
            raise RuntimeError("schedule() called again before update() of the previous SchedulerOutput")
        while self._suspects and self._suspects[0] not in self._requests:
            self._suspects.popleft()
        if self._suspects:
            return self._schedule_alone(self._requests[self._suspects[0]])
        config = self.config
        block_manager = self.block_manager
        allocate = block_manager.allocate_slots
        pop_change = block_manager.pop_table_change
        max_model_len = config.max_model_len
        max_num_seqs = config.max_num_seqs
        budget = config.max_num_batched_tokens
        window = config.sliding_window
        scheduled: list[ScheduledRequest] = []
        new_requests: list[NewRequestData] = []
        preempted: list[str] = []

        running = self._running
        i = 0
        while i < len(running) and budget > 0 and len(scheduled) < max_num_seqs:
            request = running[i]
            i += 1
            start = request.num_computed_tokens
            total = len(request.all_token_ids) + request.num_output_placeholders
            num_new = total - start
            if num_new <= 0 or (request.num_output_placeholders and request.will_finish_by_length(max_model_len)):
                continue  # its tokens in flight finish it: nothing left to compute
            if num_new > budget:
                num_new = budget
            if window is not None and start >= window:
                block_manager.drop_blocks_before(request.request_id, (start - window + 1) // config.block_size)
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
            budget -= num_new
            if request.new_to_runner:
                scheduled.append(self._scheduled(request, start, num_new, total, block_ids, pop_change,
                                                 new_requests))
                continue
            # NOTE: the hot path (a decode step of a known request), inlined: see _scheduled.
            end = start + num_new
            request.num_computed_tokens = end
            sample = end == total
            if sample:
                request.num_output_placeholders += 1
            changed = pop_change(request.request_id)
            scheduled.append(_ScheduledRequest(request.request_id, num_new, start, len(block_ids), (), sample)
                             if changed is None else
                             _ScheduledRequest(request.request_id, num_new, start, changed,
                                               tuple(block_ids[changed:]), sample))

        if not preempted:
            waiting = self._waiting
            while waiting and budget > 0 and len(running) < max_num_seqs and len(scheduled) < max_num_seqs:
                request = waiting[0]
                if request.num_output_placeholders:
                    break  # NOTE: cannot happen: a preempted request's last sample is known by now
                if request.skip_prefix_cache:
                    computed_blocks, num_cached = [], 0
                else:
                    computed_blocks, num_cached = block_manager.get_computed_blocks(request)
                total = len(request.all_token_ids)
                num_new = min(total - num_cached, budget)
                block_ids = allocate(request, num_new, computed_blocks)
                if block_ids is None:
                    break
                if window is not None and num_cached >= window:
                    block_manager.drop_blocks_before(request.request_id, (num_cached - window + 1) // config.block_size)
                waiting.popleft()
                if request.status is RequestStatus.WAITING:
                    request.num_cached_tokens = num_cached
                request.status = _RUNNING
                request.num_computed_tokens = num_cached
                request.new_to_runner = True
                running.append(request)
                scheduled.append(self._scheduled(request, num_cached, num_new, total, block_ids, pop_change,
                                                 new_requests))
                budget -= num_new

        self._preempted_ids.extend(preempted)
        if not scheduled:  # nothing to run: the runner hears of preemptions and finishes next time
            return SchedulerOutput((), (), (), (), (), 0)
        finished_ids, self._finished_ids = tuple(self._finished_ids), []
        preempted_ids, self._preempted_ids = tuple(self._preempted_ids), []
        output = SchedulerOutput(
            tuple(scheduled),
            tuple(new_requests),
            tuple(block_manager.take_copies()),
            preempted_ids,
            finished_ids,
            config.max_num_batched_tokens - budget,
        )
        self._in_flight.append(output)
        return output

    def _schedule_alone(self, request: Request) -> SchedulerOutput:
        """A step of `request` alone (a suspect after a failed step), one step at a time; other
        running requests are preempted if it needs their blocks."""
        if self._in_flight:
            return SchedulerOutput((), (), (), (), (), 0)
        preempted: list[str] = []
        if request.status is not _RUNNING:
            self._waiting.remove(request)
            computed, num_cached = ([], 0) if request.skip_prefix_cache else \
                self.block_manager.get_computed_blocks(request)
            request.num_computed_tokens = 0
        else:
            computed, num_cached = [], request.num_computed_tokens
        start = num_cached
        total = len(request.all_token_ids)
        num_new = min(total - start, self.config.max_num_batched_tokens)
        block_ids = self.block_manager.allocate_slots(request, num_new, computed)
        others = [r for r in self._running if r is not request]
        while block_ids is None and others:
            victim = others.pop()
            self._running.remove(victim)
            self._preempt(victim)
            preempted.append(victim.request_id)
            block_ids = self.block_manager.allocate_slots(request, num_new, computed)
        if block_ids is None:  # NOTE: cannot happen: add_request checked it fits the whole pool
            raise RuntimeError(f"{request.request_id} does not fit the KV pool alone")
        if request.status is not _RUNNING:
            if request.status is RequestStatus.WAITING:
                request.num_cached_tokens = num_cached
            request.status = _RUNNING
            request.new_to_runner = True
            self._running.append(request)
        new_requests: list[NewRequestData] = []
        scheduled = self._scheduled(request, start, num_new, total, block_ids, self.block_manager.pop_table_change,
                                    new_requests)
        self._preempted_ids.extend(preempted)
        finished_ids, self._finished_ids = tuple(self._finished_ids), []
        preempted_ids, self._preempted_ids = tuple(self._preempted_ids), []
        output = SchedulerOutput((scheduled,), tuple(new_requests), tuple(self.block_manager.take_copies()),
                                 preempted_ids, finished_ids, num_new)
        self._in_flight.append(output)
        return output

    @staticmethod
    def _scheduled(request: Request, start: int, num_new: int, total: int, block_ids: list[int], pop_change,
                   new_requests: list[NewRequestData]) -> ScheduledRequest:
        """Advances `request` past this step's tokens and describes its share of the step."""
        end = start + num_new
        request.num_computed_tokens = end
        sample = end == total
        if sample:
            request.num_output_placeholders += 1
        changed = pop_change(request.request_id)
        if request.new_to_runner:
            request.new_to_runner = False
            changed = 0
            new_requests.append(NewRequestData(
                request.request_id, tuple(request.all_token_ids), len(request.prompt_token_ids),
                request.sampling_params,
                tuple((c.request_id, c.sampling_params) for c in request.fork_children)))
        if changed is None:
            return ScheduledRequest(request.request_id, num_new, start, len(block_ids), (), sample)
        return ScheduledRequest(request.request_id, num_new, start, changed, tuple(block_ids[changed:]), sample)

    def _preempt(self, request: Request) -> None:
        """Free a running request's blocks and queue it first to recompute; its
        tokens (prompt and outputs so far) are kept, so nothing is lost."""
        self.block_manager.free(request.request_id)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self._num_preemptions += 1
        self._waiting.appendleft(request)

    def update(self, scheduler_output: SchedulerOutput, sampled_token_ids: Mapping[str, int | Sequence[int]]
               ) -> SchedulerUpdate:
        """Account for a step the runner has executed (the oldest one in flight).

        For every scheduled request that sampled, `sampled_token_ids[request_id]` (a token,
        or a one-token list) replaces its output placeholder, with stop checks (`check_stop`);
        a request sampling its first token forks its `fork_children`, each with its own
        sampled token (`sampled_token_ids[child_id]`), sharing its prompt's KV blocks.
        Full computed blocks whose tokens are known enter the prefix cache. Entries for
        requests that did not need to sample are ignored. Finished requests free their
        blocks at once. Requests aborted or finished while in flight are skipped. A
        missing sample raises ValueError before anything changes (the output stays pending).
        """
        if not self._in_flight or scheduler_output is not self._in_flight[0]:
            if not scheduler_output.scheduled:
                return SchedulerUpdate({}, ())
            raise RuntimeError("update() takes the oldest SchedulerOutput in flight, once")
        requests = self._requests
        missing = [s.request_id for s in scheduler_output.scheduled
                   if s.sample and s.request_id not in sampled_token_ids and s.request_id in requests]
        missing += [c.request_id for s in scheduler_output.scheduled if s.sample and s.request_id in requests
                    for c in requests[s.request_id].fork_children if c.request_id not in sampled_token_ids]
        if missing:
            raise ValueError(f"update(): no sampled token for {missing[0]!r}, which had to sample")
        self._in_flight.popleft()
        if self._suspects and len(scheduler_output.scheduled) == 1 \
                and scheduler_output.scheduled[0].request_id == self._suspects[0]:
            self._suspects.popleft()  # it ran alone without failing: not the culprit
        cache_full_blocks = self.block_manager.cache_full_blocks
        max_model_len = self.config.max_model_len
        block_size = self.config.block_size
        new_token_ids: dict[str, list[int]] = {}
        finished: list[Request] = []
        for request_id, num_tokens, start, _, _, sample in scheduler_output.scheduled:
            request = requests.get(request_id)
            if request is None:
                continue  # aborted or finished while in flight
            if sample:
                request.num_output_placeholders -= 1
                token = sampled_token_ids[request_id]
                if token.__class__ is not int:
                    token = _as_token(token)
                request.output_token_ids.append(token)
                request.all_token_ids.append(token)
                new_token_ids[request_id] = [token]
                if check_stop(request, max_model_len):
                    finished.append(request)
                if request.fork_children:
                    self._fork_children(request, sampled_token_ids, new_token_ids, finished)
            if (start % block_size) + num_tokens >= block_size:
                cache_full_blocks(request)  # a block became full (no-op for a preempted request)
        if finished:
            for request in finished:
                if requests.pop(request.request_id, None) is not None:
                    self.block_manager.free(request.request_id)
                    self._finished_ids.append(request.request_id)
                    if request in self._waiting:  # a preempted request that stopped on its in-flight sample
                        self._waiting.remove(request)
            self._running = [r for r in self._running if r.status is _RUNNING]
        return SchedulerUpdate(new_token_ids, tuple(finished))

    def _fork_children(self, parent: Request, sampled_token_ids, new_token_ids: dict, finished: list) -> None:
        """Parallel sampling: the parent sampled its first token; each child starts from the
        parent's prompt with its own first token, sharing the prompt's blocks."""
        children, parent.fork_children = parent.fork_children, []
        for child in children:
            token = _as_token(sampled_token_ids[child.request_id])
            child.output_token_ids.append(token)
            child.all_token_ids.append(token)
            new_token_ids[child.request_id] = [token]
            if self._fork(parent, child, parent.num_prompt_tokens):
                finished.append(child)
                self._finished_ids.append(child.request_id)

    def recover_from_failure(self) -> list[str]:
        """After a step failed on the device (the KV pool and every step in flight are lost):
        every request keeps its known tokens and recomputes from scratch, the prefix cache is
        emptied, and the requests of the lost steps count a failed step (`num_failed_steps`)
        and become suspects: each runs alone for one step before anything else is scheduled, so
        a request that fails alone is known to be the culprit (the caller aborts it). Returns
        the lost steps' request ids."""
        lost = list(dict.fromkeys(s.request_id for out in self._in_flight for s in out.scheduled))
        self._in_flight.clear()
        for request in reversed(self._running):
            self.block_manager.free(request.request_id)
            request.num_computed_tokens = 0
            request.status = RequestStatus.PREEMPTED
            self._waiting.appendleft(request)
        self._running = []
        for request in self._waiting:
            request.num_output_placeholders = 0
            request.new_to_runner = True
        self.block_manager.reset_prefix_cache()
        self._finished_ids, self._preempted_ids = [], []
        for request_id in lost:
            if request_id in self._requests:
                self._requests[request_id].num_failed_steps += 1
                if request_id not in self._suspects:
                    self._suspects.append(request_id)
        return lost

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
