"""Scheduler: a hypothesis state machine (add with fork children / step / abort / stop / fork),
synchronous or with one step in flight (asynchronous scheduling), whose finished outputs must
equal an unconstrained reference run, with nothing leaked."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from scheduler import Request, RequestStatus, Scheduler, SchedulerConfig, StopCriteria
from tests.scheduler.fake_runner import VOCAB, FakeRunner, child_first_token, reference


# ------------------------------------------------------------ state machine


class SchedulerMachine(RuleBasedStateMachine):
    """Random add / step / abort / fork on a small pool with small budgets; every
    finished request must match the unconstrained reference, nothing may leak."""

    @initialize(
        num_blocks=st.integers(4, 16),
        block_size=st.sampled_from([1, 2, 2, 4]),
        budget=st.integers(1, 16),
        max_num_seqs=st.integers(1, 4),
        caching=st.booleans(),
        async_scheduling=st.booleans(),
        window=st.none() | st.integers(2, 9),
    )
    def setup(self, num_blocks, block_size, budget, max_num_seqs, caching, async_scheduling, window):
        self.scheduler = Scheduler(
            SchedulerConfig(
                num_blocks=num_blocks,
                max_model_len=24,
                block_size=block_size,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=budget,
                enable_prefix_caching=caching,
                sliding_window=window,
            )
        )
        self.window = window
        self.runner = FakeRunner(self.scheduler)
        self.async_scheduling = async_scheduling
        self.pending = []  # (output, sampled) executed, update() still due
        self.expected: dict[str, tuple] = {}
        self.next_id = 0

    def new_id(self) -> str:
        self.next_id += 1
        return f"r{self.next_id}"

    def finish(self, request: Request) -> None:
        assert (request.output_token_ids, request.finish_reason, request.stop_reason) == self.expected.pop(
            request.request_id
        )

    @precondition(lambda self: hasattr(self, "scheduler"))
    @rule(
        # Mostly prompts that fit, some longer than max_model_len (rejected).
        prompt=st.lists(st.integers(0, 2), min_size=1, max_size=16)
        | st.lists(st.integers(0, 2), min_size=17, max_size=26),
        max_tokens=st.integers(1, 10),
        stop_token=st.none() | st.integers(0, VOCAB - 1),
        eos=st.none() | st.integers(0, VOCAB - 1),
        min_tokens=st.integers(0, 2),
        num_children=st.sampled_from([0, 0, 1, 2]),
    )
    def add(self, prompt, max_tokens, stop_token, eos, min_tokens, num_children):
        stop = StopCriteria(
            max_tokens=max_tokens,
            min_tokens=min(min_tokens, max_tokens),
            stop_token_ids=frozenset() if stop_token is None else frozenset({stop_token}),
            eos_token_id=eos,
        )
        children = [Request(self.new_id(), prompt, stop) for _ in range(num_children)]
        request = Request(self.new_id(), prompt, stop, fork_children=children)
        config = self.scheduler.config
        kv_tokens = min(len(prompt) + max_tokens, max(config.max_model_len, len(prompt) + 1)) - 1
        if self.window is not None:
            kv_tokens = min(kv_tokens, self.window + config.max_num_batched_tokens + config.block_size)
        fits = len(prompt) <= config.max_model_len and -(-kv_tokens // config.block_size) <= config.num_blocks
        if not fits:
            with pytest.raises(ValueError):
                self.scheduler.add_request(request)
            return
        self.scheduler.add_request(request)
        self.expected[request.request_id] = reference(prompt, stop, config.max_model_len, window=self.window)
        for i, child in enumerate(children):
            event("fork children")
            self.expected[child.request_id] = reference(prompt, stop, config.max_model_len,
                                                        [child_first_token(prompt, i, self.window)], window=self.window)

    @precondition(lambda self: hasattr(self, "scheduler"))
    @rule()
    def step(self):
        output = self.scheduler.schedule()
        if output.preempted_request_ids:
            event("preemption")
        if output.blocks_to_copy:
            event("copy-on-write")
        if any(s.start_position and not s.sample for s in output.scheduled):
            event("chunked prefill")
        if output.scheduled:
            self.pending.append((output, self.runner.execute(output)))
        if self.pending and (not self.async_scheduling or len(self.pending) == 2 or not output.scheduled):
            self.update_oldest()

    def update_oldest(self):
        result = self.scheduler.update(*self.pending.pop(0))
        for request in result.finished:
            self.finish(request)
            if request.num_cached_tokens:
                event("prefix hit")

    def flush(self):
        while self.pending:
            self.update_oldest()

    @precondition(lambda self: hasattr(self, "scheduler") and self.expected)
    @rule(data=st.data())
    def stop_early(self, data):
        """The engine finishes a request (a stop string in its text), even while in flight."""
        request_id = data.draw(st.sampled_from(sorted(self.expected)))
        request = self.scheduler.get_request(request_id)
        if request is None:  # a fork child that has not joined yet
            return
        assert self.scheduler.finish_request(request_id, "<stop>")
        assert request.finish_reason == "stop" and request.stop_reason == "<stop>"
        del self.expected[request_id]
        for child in request.fork_children:  # never forked: they stop with their parent
            del self.expected[child.request_id]

    @precondition(lambda self: hasattr(self, "scheduler") and self.expected)
    @rule(data=st.data())
    def abort(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.expected)))
        request = self.scheduler.get_request(request_id)
        if request is None:  # a fork child that has not joined yet
            return
        assert self.scheduler.abort_request(request_id)
        assert request.status is RequestStatus.FINISHED_ABORTED
        del self.expected[request_id]
        for child in request.fork_children:
            del self.expected[child.request_id]

    @precondition(lambda self: hasattr(self, "scheduler") and self.expected)
    @rule(data=st.data(), bump=st.integers(1, VOCAB - 1))
    def fork(self, data, bump):
        """A child that replaces the parent's last output with another token."""
        self.flush()
        if not self.expected:
            return
        parent = self.scheduler.get_request(data.draw(st.sampled_from(sorted(self.expected))))
        if parent is None or parent.status is not RequestStatus.RUNNING or not parent.output_token_ids:
            return
        outputs = parent.output_token_ids[:-1] + [(parent.output_token_ids[-1] + bump) % VOCAB]
        child = Request(self.new_id(), parent.prompt_token_ids, parent.stop, output_token_ids=outputs)
        config = self.scheduler.config
        event("fork")
        if self.scheduler.fork_request(parent.request_id, child):
            assert child.status.is_finished
            assert (child.output_token_ids, child.finish_reason, child.stop_reason) == reference(
                parent.prompt_token_ids, parent.stop, config.max_model_len, outputs, window=self.window
            )
        else:
            self.expected[child.request_id] = reference(
                parent.prompt_token_ids, parent.stop, config.max_model_len, outputs, window=self.window
            )

    @invariant()
    def bookkeeping(self):
        if not hasattr(self, "scheduler"):
            return
        scheduler, bm = self.scheduler, self.scheduler.block_manager
        bm.check_invariants()
        unjoined = sum(len(r.fork_children) for r in scheduler._running + list(scheduler._waiting))
        assert scheduler.num_running + scheduler.num_waiting + unjoined == len(self.expected)
        for request in scheduler._running:
            assert request.status is RequestStatus.RUNNING
            assert len(bm.block_table(request.request_id)) == -(-request.num_computed_tokens // bm.block_size)
            assert request.num_computed_tokens <= request.num_tokens_with_placeholders
            assert request.num_tokens <= scheduler.config.max_model_len
            assert request.num_output_placeholders <= len(self.pending)
        for request in scheduler._waiting:
            assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
            assert not bm.has_blocks(request.request_id) and request.num_computed_tokens == 0

    def teardown(self):
        if not hasattr(self, "scheduler"):
            return
        for _ in range(2000):
            if not self.scheduler.has_unfinished_requests() and not self.pending:
                break
            self.step()
        assert not self.expected
        assert self.scheduler.block_manager.num_free_blocks == self.scheduler.config.num_blocks


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
