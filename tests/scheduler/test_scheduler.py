"""Scheduler: exact step-by-step expectations and end-to-end runs with a fake model
whose KV lives in a simulated pool (tests/scheduler/fake_runner.py). The hypothesis
state machine is in test_scheduler_state_machine.py."""

from __future__ import annotations

import pytest

from scheduler import (
    Request,
    RequestStatus,
    ScheduledRequest,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    StopCriteria,
)
from tests.scheduler.fake_runner import VOCAB, FakeRunner, reference

def make_scheduler(**overrides) -> Scheduler:
    config = dict(num_blocks=64, max_model_len=128, block_size=4, max_num_seqs=8, max_num_batched_tokens=64)
    config.update(overrides)
    return Scheduler(SchedulerConfig(**config))


def run_to_completion(scheduler: Scheduler, runner: FakeRunner | None = None, max_steps: int = 10_000,
                      async_scheduling: bool = False):
    """Drive schedule -> execute -> update until nothing is left; the finished requests by id.
    With `async_scheduling`, step N+1 is scheduled and executed before update() of step N."""
    runner = runner or FakeRunner(scheduler)
    finished = {}
    pending = []
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests() and not pending:
            break
        output = scheduler.schedule()
        if output.scheduled:
            pending.append((output, runner.execute(output)))
        if pending and (not async_scheduling or len(pending) == 2 or not output.scheduled):
            result = scheduler.update(*pending.pop(0))
            for request in result.finished:
                finished[request.request_id] = request
    assert not scheduler.has_unfinished_requests()
    assert scheduler.block_manager.num_free_blocks == scheduler.config.num_blocks  # no leak
    scheduler.block_manager.check_invariants()
    return finished


class Step:
    """A SchedulerOutput plus `brief`: what each scheduled request computes, read right after
    schedule() (request id, token ids, start position, whole block table, sample)."""

    def __init__(self, scheduler: Scheduler, output: SchedulerOutput) -> None:
        self.output = output
        table = scheduler.block_manager.block_table
        self.brief = [(s.request_id,
                       scheduler.get_request(s.request_id).all_token_ids[s.start_position:s.start_position + s.num_tokens],
                       s.start_position, list(table(s.request_id)), s.sample) for s in output.scheduled]

    def __getattr__(self, name):
        return getattr(self.output, name)


def schedule(scheduler: Scheduler) -> Step:
    return Step(scheduler, scheduler.schedule())


def step(scheduler: Scheduler, sampled: dict[str, int] | None = None):
    """One step with scripted sampled tokens (default: token 1 for every request that samples)."""
    output = schedule(scheduler)
    if sampled is None:
        sampled = {s.request_id: 1 for s in output.scheduled if s.sample}
    return output, scheduler.update(output.output, sampled)


def drain(scheduler: Scheduler) -> None:
    """Scripted steps until everything finished; then nothing may be left allocated."""
    for _ in range(1000):
        if not scheduler.has_unfinished_requests():
            break
        step(scheduler)
    assert not scheduler.has_unfinished_requests()
    assert scheduler.block_manager.num_free_blocks == scheduler.config.num_blocks
    scheduler.block_manager.check_invariants()


def brief(output: Step) -> list[tuple]:
    return output.brief


def req(request_id: str, prompt: list[int], max_tokens: int = 16, **stop) -> Request:
    return Request(request_id, prompt, StopCriteria(max_tokens=max_tokens, **stop))


# ---------------------------------------------------------------- config


def test_config_validates():
    SchedulerConfig(num_blocks=1, max_model_len=1)
    for bad in (dict(num_blocks=0), dict(max_model_len=0), dict(block_size=0), dict(max_num_seqs=0),
                dict(max_num_batched_tokens=-1), dict(num_blocks=2.0), dict(block_size=True)):
        with pytest.raises(ValueError):
            SchedulerConfig(**{"num_blocks": 8, "max_model_len": 8, **bad})
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        SchedulerConfig(num_blocks=8, max_model_len=8, enable_prefix_caching=1)
    with pytest.raises(TypeError):
        SchedulerConfig(8, 8)  # keyword-only


# ------------------------------------------------------------ exact steps


def test_chunked_prefill_then_decode():
    scheduler = make_scheduler(num_blocks=16, max_num_batched_tokens=8)
    prompt = list(range(100, 120))
    scheduler.add_request(req("a", prompt, max_tokens=2))
    output, result = step(scheduler)
    assert brief(output) == [("a", prompt[0:8], 0, [0, 1], False)]
    assert output.num_batched_tokens == 8 and result.new_token_ids == {} and result.finished == ()
    output, _ = step(scheduler)
    assert brief(output) == [("a", prompt[8:16], 8, [0, 1, 2, 3], False)]
    output, result = step(scheduler, {"a": [5]})
    assert brief(output) == [("a", prompt[16:20], 16, [0, 1, 2, 3, 4], True)]
    assert output.num_batched_tokens == 4 and result.new_token_ids == {"a": [5]}
    output, result = step(scheduler, {"a": [6]})
    assert brief(output) == [("a", [5], 20, [0, 1, 2, 3, 4, 5], True)]
    assert [r.request_id for r in result.finished] == ["a"]
    assert result.finished[0].output_token_ids == [5, 6] and result.finished[0].finish_reason == "length"
    assert scheduler.block_manager.num_free_blocks == 16
    assert not scheduler.has_unfinished_requests()


def test_decode_first_then_prefill_chunk_in_the_same_step():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add_request(req("a", [1, 2, 3]))
    output, _ = step(scheduler, {"a": [9]})
    assert brief(output) == [("a", [1, 2, 3], 0, [0], True)]
    b_prompt = list(range(20, 32))
    scheduler.add_request(req("b", b_prompt))
    output, _ = step(scheduler, {"a": [8]})
    assert brief(output) == [("a", [9], 3, [0], True), ("b", b_prompt[:7], 0, [1, 2], False)]
    assert output.num_batched_tokens == 8
    output, result = step(scheduler, {"a": [7], "b": [6]})
    assert brief(output) == [("a", [8], 4, [0, 3], True), ("b", b_prompt[7:], 7, [1, 2, 4], True)]
    assert result.new_token_ids == {"a": [7], "b": [6]}


def test_max_num_seqs_caps_admission():
    scheduler = make_scheduler(max_num_seqs=2)
    for name, max_tokens in (("a", 1), ("b", 3), ("c", 3)):
        scheduler.add_request(req(name, [1, 2], max_tokens=max_tokens))
    output, result = step(scheduler)
    assert [s.request_id for s in output.scheduled] == ["a", "b"]
    assert [r.request_id for r in result.finished] == ["a"]
    assert (scheduler.num_running, scheduler.num_waiting) == (1, 1)
    output, _ = step(scheduler)
    assert [(s.request_id, s.start_position) for s in output.scheduled] == [("b", 2), ("c", 0)]


def test_fcfs_admission_stops_at_the_first_request_that_does_not_fit():
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    scheduler.add_request(req("a", list(range(8)), max_tokens=2))  # 2 blocks
    scheduler.add_request(req("b", list(range(20, 32)), max_tokens=2))  # 3 blocks: does not fit
    scheduler.add_request(req("c", [40, 41], max_tokens=2))  # would fit, but is behind b
    output, _ = step(scheduler)
    assert [s.request_id for s in output.scheduled] == ["a"]
    assert (scheduler.num_running, scheduler.num_waiting) == (1, 2)
    output, result = step(scheduler)  # a decodes into a new block (position 8) and finishes
    assert [s.request_id for s in output.scheduled] == ["a"] and len(result.finished) == 1
    output, _ = step(scheduler)
    assert [s.request_id for s in output.scheduled] == ["b", "c"]  # a's 3 blocks freed: both fit now
    drain(scheduler)


def test_preemption_of_the_most_recent_request_loses_nothing():
    scheduler = make_scheduler(num_blocks=4, block_size=2)
    a_prompt, b_prompt = [10, 11, 12], [20, 21, 22]
    scheduler.add_request(req("a", a_prompt, max_tokens=4))
    scheduler.add_request(req("b", b_prompt, max_tokens=4))
    output, _ = step(scheduler, {"a": [1], "b": [2]})
    assert brief(output) == [("a", a_prompt, 0, [0, 1], True), ("b", b_prompt, 0, [2, 3], True)]
    output, _ = step(scheduler, {"a": [3], "b": [4]})  # position 3 fits in each one's 2nd block
    assert output.preempted_request_ids == ()
    scheduler.add_request(req("c", [30], max_tokens=1))
    output, _ = step(scheduler, {"a": [5]})  # a needs a 3rd block: b (most recent) is preempted
    assert output.preempted_request_ids == ("b",)
    assert brief(output) == [("a", [3], 4, [0, 1, 3], True)]  # b's blocks went back reversed: 3, 2
    b = scheduler.get_request("b")
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert b.output_token_ids == [2, 4]  # kept: it recomputes prompt + outputs
    assert scheduler.num_waiting == 2  # b went in front of c; nothing admitted this step
    assert scheduler.stats()["num_preemptions"] == 1

    output, result = step(scheduler, {"a": [6]})  # a finishes; b (5 tokens = 3 blocks) cannot come back yet
    assert [s.request_id for s in output.scheduled] == ["a"] and result.finished[0].request_id == "a"
    output, _ = step(scheduler, {"b": [7], "c": [8]})
    # b is readmitted before c: its first block (still cached) is a hit; the rest is recomputed.
    # Free queue after a finished: [2, 3, 1, 0] (a's blocks reversed); the hit takes 2 out.
    assert brief(output) == [("b", [22, 2, 4], 2, [2, 3, 1], True), ("c", [30], 0, [0], True)]
    assert scheduler.get_request("b").num_cached_tokens == 0  # only the FIRST scheduling counts
    assert scheduler.get_request("b").output_token_ids == [2, 4, 7]


def test_a_request_that_is_itself_the_most_recent_preempts_itself():
    scheduler = make_scheduler(num_blocks=4, block_size=2)
    scheduler.add_request(req("a", [10, 11, 12], max_tokens=4))  # position 3 fits in block 1
    scheduler.add_request(req("b", [20, 21, 22, 23], max_tokens=4))  # position 4 needs a 3rd block
    step(scheduler)
    output, _ = step(scheduler)
    assert output.preempted_request_ids == ("b",)
    assert [s.request_id for s in output.scheduled] == ["a"]
    assert scheduler.get_request("b").status is RequestStatus.PREEMPTED


def test_no_admission_in_a_step_that_preempted():
    scheduler = make_scheduler(num_blocks=3, block_size=4, max_num_batched_tokens=5, enable_prefix_caching=False)
    scheduler.add_request(req("a", [1, 2, 3, 4], max_tokens=5))
    scheduler.add_request(req("b", [5, 6, 7, 8], max_tokens=5))
    output, _ = step(scheduler)
    assert brief(output) == [("a", [1, 2, 3, 4], 0, [0], True), ("b", [5], 0, [1], False)]
    output, _ = step(scheduler)
    assert brief(output) == [("a", [1], 4, [0, 2], True), ("b", [6, 7, 8], 1, [1], True)]
    output, _ = step(scheduler)  # b needs a 2nd block: it preempts itself
    assert output.preempted_request_ids == ("b",)
    # A 4-token chunk of b would fit the freed block and the budget left, but a step
    # that preempted admits nobody.
    assert brief(output) == [("a", [1], 5, [0, 2], True)]
    output, _ = step(scheduler)
    assert brief(output) == [("a", [1], 6, [0, 2], True), ("b", [5, 6, 7, 8], 0, [1], False)]


def make_workload(seed: int, n: int = 12):
    import random

    rng = random.Random(seed)
    system = [rng.randrange(VOCAB) for _ in range(9)]
    requests = []
    for i in range(n):
        prompt = (system if i % 3 == 0 else []) + [rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))]
        max_tokens = rng.randint(1, 24)
        stop = StopCriteria(
            max_tokens=max_tokens,
            min_tokens=min(max_tokens, rng.choice([0, 0, 3])),
            stop_token_ids=frozenset(rng.sample(range(VOCAB), rng.choice([0, 1]))),
            eos_token_id=rng.choice([None, 0]),
        )
        requests.append((f"r{i}", prompt, stop))
    return requests


@pytest.mark.parametrize("caching", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_pool_gives_the_same_outputs_as_a_huge_one(seed, caching):
    results = {}
    for name, overrides in (
        ("huge", dict(num_blocks=1000, max_num_seqs=256, max_num_batched_tokens=4096)),
        ("tiny", dict(num_blocks=13, max_num_seqs=5, max_num_batched_tokens=11)),
    ):
        scheduler = make_scheduler(max_model_len=48, enable_prefix_caching=caching, **overrides)
        for request_id, prompt, stop in make_workload(seed):
            scheduler.add_request(Request(request_id, prompt, stop))
        finished = run_to_completion(scheduler)
        results[name] = {
            rid: (r.output_token_ids, r.finish_reason, r.stop_reason) for rid, r in finished.items()
        }
        results[name + " stats"] = scheduler.stats()
    assert results["tiny"] == results["huge"]
    for request_id, prompt, stop in make_workload(seed):
        assert results["huge"][request_id] == reference(prompt, stop, 48)
    assert results["tiny stats"]["num_preemptions"] > 0  # the tiny pool did preempt
    assert results["huge stats"]["num_preemptions"] == 0
    if caching:  # (the huge run admits everything in its first step, before anything is cached)
        assert results["tiny stats"]["prefix_cache_hits"] > 0


# ------------------------------------------------------------ prefix caching


def test_prefix_cache_hit_on_admission():
    scheduler = make_scheduler(block_size=4)
    prompt = list(range(10))
    scheduler.add_request(req("a", prompt, max_tokens=1))
    step(scheduler)
    scheduler.add_request(req("b", prompt, max_tokens=1))
    output, _ = step(scheduler)
    assert brief(output) == [("b", [8, 9], 8, [0, 1, 3], True)]
    assert scheduler.get_request("b") is None  # finished
    stats = scheduler.stats()
    assert (stats["prefix_cache_queries"], stats["prefix_cache_hits"]) == (20, 8)


def test_kv_slot_usage_and_stats():
    scheduler = make_scheduler(block_size=4)
    scheduler.add_request(req("a", list(range(6))))
    step(scheduler)
    assert scheduler.kv_slot_usage() == (8, 6)
    stats = scheduler.stats()
    assert stats["num_kv_blocks"] == 64 and stats["num_free_kv_blocks"] == 62
    assert stats["kv_cache_usage"] == 2 / 64 and (stats["num_running"], stats["num_waiting"]) == (1, 0)


def test_prefix_hit_shares_blocks_with_a_running_request():
    scheduler = make_scheduler(block_size=4)
    system = list(range(8))
    scheduler.add_request(req("a", system + [50, 51]))
    step(scheduler)
    scheduler.add_request(req("b", system + [60]))
    output, _ = step(scheduler)
    assert brief(output)[1] == ("b", [60], 8, [0, 1, 3], True)
    assert scheduler.get_request("b").num_cached_tokens == 8
    assert [scheduler.block_manager.ref_count(b) for b in range(4)] == [2, 2, 1, 1]
    drain(scheduler)


def test_blocks_enter_the_prefix_cache_as_soon_as_they_are_full_and_computed():
    scheduler = make_scheduler(block_size=4)
    scheduler.add_request(req("a", [1, 2, 3]))
    step(scheduler)
    assert scheduler.stats()["num_cached_kv_blocks"] == 0
    step(scheduler)  # computes position 3: block 0 is full
    assert scheduler.stats()["num_cached_kv_blocks"] == 1
    for _ in range(3):
        step(scheduler)
    assert scheduler.stats()["num_cached_kv_blocks"] == 1
    step(scheduler)  # computes position 7
    assert scheduler.stats()["num_cached_kv_blocks"] == 2


# -------------------------------------------------------------- stopping


def test_stop_token_eos_and_dropped_tokens_after_a_stop():
    scheduler = make_scheduler()
    scheduler.add_request(req("s", [1, 2], stop_token_ids={7}, eos_token_id=0))
    scheduler.add_request(req("e", [1, 2], stop_token_ids={7}, eos_token_id=0))
    scheduler.add_request(req("m", [1, 2], stop_token_ids={7}))
    _, result = step(scheduler, {"s": 3, "e": 4, "m": [7]})  # a token, or a one-token list
    assert result.new_token_ids == {"s": [3], "e": [4], "m": [7]}
    (m,) = result.finished
    assert (m.request_id, m.finish_reason, m.stop_reason, m.output_token_ids) == ("m", "stop", 7, [7])
    _, result = step(scheduler, {"s": [7], "e": [0]})
    assert {r.request_id: (r.finish_reason, r.stop_reason) for r in result.finished} == {
        "s": ("stop", 7),
        "e": ("stop", None),
    }
    assert scheduler.block_manager.num_free_blocks == scheduler.config.num_blocks


def test_min_tokens_defers_stops():
    scheduler = make_scheduler()
    scheduler.add_request(req("r", [1], max_tokens=5, min_tokens=2, stop_token_ids={7}, eos_token_id=0))
    _, result = step(scheduler, {"r": [7]})
    assert result.finished == ()
    _, result = step(scheduler, {"r": [0]})
    assert result.finished[0].finish_reason == "stop" and result.finished[0].output_token_ids == [7, 0]


def test_max_model_len():
    scheduler = make_scheduler(max_model_len=8)
    with pytest.raises(ValueError, match="max_model_len=8"):
        scheduler.add_request(req("long", list(range(9))))
    scheduler.add_request(req("full", list(range(8)), max_tokens=100))  # fits exactly: 1 token out
    scheduler.add_request(req("short", list(range(5)), max_tokens=100))
    finished = run_to_completion(scheduler)
    assert len(finished["full"].output_token_ids) == 1 and finished["full"].finish_reason == "length"
    assert len(finished["short"].output_token_ids) == 3 and finished["short"].num_tokens == 8


def test_requests_that_can_never_fit_the_pool_are_rejected():
    scheduler = make_scheduler(num_blocks=2, block_size=4, max_model_len=64)
    with pytest.raises(ValueError, match="whole pool is 2 blocks"):
        scheduler.add_request(req("big", list(range(5)), max_tokens=5))  # KV for 9 tokens: 3 blocks
    scheduler.add_request(req("ok", list(range(5)), max_tokens=4))  # KV for 8 tokens: 2 blocks
    with pytest.raises(ValueError, match="already"):
        scheduler.add_request(req("ok", [1]))
    assert run_to_completion(scheduler)["ok"].num_output_tokens == 4


# ------------------------------------------------------------------ abort


def test_abort_frees_blocks_wherever_the_request_is():
    scheduler = make_scheduler(max_num_seqs=1)
    scheduler.add_request(req("run", list(range(10))))
    scheduler.add_request(req("wait", list(range(10))))
    step(scheduler)
    assert scheduler.block_manager.num_free_blocks < 64
    assert scheduler.abort_request("wait") and scheduler.num_waiting == 0
    run = scheduler.get_request("run")
    assert scheduler.abort_request("run")
    assert run.status is RequestStatus.FINISHED_ABORTED and run.finish_reason == "abort"
    assert scheduler.block_manager.num_free_blocks == 64
    assert not scheduler.abort_request("run") and not scheduler.abort_request("nope")
    assert not scheduler.has_unfinished_requests()


def test_abort_while_in_flight_is_skipped_by_update():
    scheduler = make_scheduler()
    scheduler.add_request(req("a", [1, 2, 3]))
    scheduler.add_request(req("b", [4, 5, 6]))
    output = scheduler.schedule()
    assert scheduler.abort_request("a")
    assert scheduler.schedule().finished_request_ids == ("a",)  # the runner drops its state
    result = scheduler.update(output, {"a": [1], "b": [2]})
    assert result.new_token_ids == {"b": [2]}
    scheduler.abort_request("b")
    assert scheduler.block_manager.num_free_blocks == 64


# ---------------------------------------------------------------- protocol


def test_update_protocol_errors():
    scheduler = make_scheduler()
    empty = scheduler.schedule()
    assert empty.scheduled == () and scheduler.update(empty, {}).new_token_ids == {}
    scheduler.add_request(req("a", [1, 2, 3]))
    output = scheduler.schedule()
    second = scheduler.schedule()  # asynchronous scheduling: one more step may be in flight
    assert [(s.num_tokens, s.start_position, s.sample) for s in second.scheduled] == [(1, 3, True)]
    with pytest.raises(RuntimeError, match="before update"):
        scheduler.schedule()
    with pytest.raises(RuntimeError, match="oldest"):
        scheduler.update(second, {"a": 5})
    with pytest.raises(ValueError, match="no sampled token"):
        scheduler.update(output, {})
    assert scheduler.get_request("a").output_token_ids == []  # nothing changed: still pending
    assert scheduler.update(output, {"a": [4]}).new_token_ids == {"a": [4]}
    assert scheduler.update(second, {"a": 5}).new_token_ids == {"a": [5]}
    with pytest.raises(RuntimeError, match="once"):
        scheduler.update(second, {"a": 5})
    drain(scheduler)


def test_scheduled_request_is_plain_data():
    s = ScheduledRequest("a", 1, 0, 0, (0,), True)
    assert (s.request_id, s.num_tokens, s.start_position, s.block_ids_start, s.new_block_ids, s.sample) == (
        "a", 1, 0, 0, (0,), True)
    with pytest.raises(AttributeError):
        s.sample = False


def test_block_tables_travel_once_then_as_deltas():
    scheduler = make_scheduler(block_size=4)
    scheduler.add_request(req("a", [1, 2, 3], max_tokens=8))
    output = scheduler.schedule()
    (new,) = output.new_requests
    assert (new.request_id, new.token_ids, new.num_prompt_tokens) == ("a", (1, 2, 3), 3)
    assert [(s.block_ids_start, s.new_block_ids) for s in output.scheduled] == [(0, (0,))]
    scheduler.update(output, {"a": 4})
    output = scheduler.schedule()  # position 3 still in block 0: no table change, nothing new
    assert output.new_requests == () and [(s.block_ids_start, s.new_block_ids) for s in output.scheduled] == [(1, ())]
    scheduler.update(output, {"a": 5})
    output = scheduler.schedule()  # position 4: block 1 appended
    assert [(s.block_ids_start, s.new_block_ids) for s in output.scheduled] == [(1, (1,))]
    scheduler.update(output, {"a": 6})
    drain(scheduler)


# ------------------------------------------------------------------- fork


def test_fork_shares_blocks_and_copies_the_partial_block_on_write():
    scheduler = make_scheduler(block_size=4)
    prompt = [3, 1, 4, 1, 5, 9]
    stop = StopCriteria(max_tokens=6)
    scheduler.add_request(Request("p", prompt, stop))
    runner = FakeRunner(scheduler)
    output = scheduler.schedule()
    result = scheduler.update(output, runner.execute(output))
    (t0,) = result.new_token_ids["p"]
    t1 = (t0 + 1) % VOCAB
    assert scheduler.fork_request("p", Request("c", prompt, stop, output_token_ids=[t1])) is False
    assert scheduler.block_manager.block_table("c") == [0, 1]
    assert [scheduler.block_manager.ref_count(b) for b in (0, 1)] == [2, 2]
    assert scheduler.get_request("c").num_computed_tokens == 6 and scheduler.num_running == 2

    output = schedule(scheduler)  # p writes position 6 into shared block 1 first: it gets a copy
    assert output.blocks_to_copy == ((1, 2),)
    assert brief(output) == [("p", [t0], 6, [0, 2], True), ("c", [t1], 6, [0, 1], True)]
    scheduler.update(output.output, runner.execute(output.output))
    finished = run_to_completion(scheduler, runner)
    assert (finished["p"].output_token_ids, finished["p"].finish_reason, finished["p"].stop_reason) == reference(
        prompt, stop, 128
    )
    assert (finished["c"].output_token_ids, finished["c"].finish_reason, finished["c"].stop_reason) == reference(
        prompt, stop, 128, [t1]
    )


def test_fork_checks_stops_and_validates():
    scheduler = make_scheduler()
    scheduler.add_request(req("p", [1, 2, 3], max_tokens=5))
    step(scheduler, {"p": [4]})
    done = Request("done", [1, 2, 3], StopCriteria(max_tokens=1), output_token_ids=[6])
    assert scheduler.fork_request("p", done) is True
    assert done.finish_reason == "length" and scheduler.get_request("done") is None
    with pytest.raises(ValueError, match="computed tokens"):
        scheduler.fork_request("p", req("bad", [1, 2, 9, 4]))
    with pytest.raises(ValueError, match="computed tokens"):
        scheduler.fork_request("p", req("short", [1, 2, 3]))  # nothing left to compute
    with pytest.raises(ValueError, match="no unfinished request"):
        scheduler.fork_request("nope", req("x", [1]))
    scheduler.schedule()
    with pytest.raises(RuntimeError):
        scheduler.fork_request("p", req("x", [1, 2, 3, 4]))


def test_fork_of_a_waiting_request_queues_the_child():
    scheduler = make_scheduler()
    scheduler.add_request(req("p", [1, 2, 3], max_tokens=3))
    assert scheduler.fork_request("p", req("c", [1, 2, 3], max_tokens=3)) is False
    assert scheduler.num_waiting == 2 and not scheduler.block_manager.has_blocks("c")
    finished = run_to_completion(scheduler)
    assert finished["p"].output_token_ids == finished["c"].output_token_ids


# ------------------------------------------------ parallel sampling, async, stop, recovery


def test_fork_children_share_the_prompt_at_the_first_sample():
    scheduler = make_scheduler(block_size=4)
    prompt = [3, 1, 4, 1, 5, 9]
    children = [req(f"p#{i}", prompt, max_tokens=3) for i in (1, 2)]
    scheduler.add_request(Request("p", prompt, StopCriteria(max_tokens=3), fork_children=children))
    output = scheduler.schedule()
    (new,) = output.new_requests
    assert [child_id for child_id, _ in new.fork_children] == ["p#1", "p#2"]
    with pytest.raises(ValueError, match="p#2"):
        scheduler.update(output, {"p": 5, "p#1": 6})  # every child needs its first token
    result = scheduler.update(output, {"p": 5, "p#1": 6, "p#2": 7})
    assert result.new_token_ids == {"p": [5], "p#1": [6], "p#2": [7]}
    table = scheduler.block_manager.block_table
    assert table("p#1") == table("p#2") == table("p") == [0, 1]
    assert [scheduler.block_manager.ref_count(b) for b in (0, 1)] == [3, 3]
    output = schedule(scheduler)  # each writes position 6 into shared block 1: two of three copy
    assert [n.request_id for n in output.new_requests] == ["p#1", "p#2"]
    assert len(output.blocks_to_copy) == 2 and {src for src, _ in output.blocks_to_copy} == {1}
    assert [b[1] for b in output.brief] == [[5], [6], [7]]
    scheduler.update(output.output, {"p": 1, "p#1": 1, "p#2": 1})
    drain(scheduler)


def test_fork_children_of_a_request_finishing_on_its_first_token():
    scheduler = make_scheduler(block_size=4)
    children = [req("c", [1, 2, 3], max_tokens=2)]
    scheduler.add_request(Request("p", [1, 2, 3], StopCriteria(max_tokens=2, eos_token_id=0), fork_children=children))
    _, result = step(scheduler, {"p": 0, "c": 8})
    assert [r.request_id for r in result.finished] == ["p"]  # eos; the child still forked
    assert scheduler.get_request("c").status is RequestStatus.RUNNING
    assert scheduler.block_manager.block_table("c") == [0]
    _, result = step(scheduler, {"c": 9})
    assert result.finished[0].output_token_ids == [8, 9]
    assert scheduler.block_manager.num_free_blocks == 64


@pytest.mark.parametrize("caching", [True, False])
@pytest.mark.parametrize("seed", [0, 3])
def test_async_scheduling_gives_the_same_outputs(seed, caching):
    results = {}
    for async_scheduling in (False, True):
        scheduler = make_scheduler(max_model_len=48, enable_prefix_caching=caching, num_blocks=13, max_num_seqs=5,
                                   max_num_batched_tokens=11)
        for request_id, prompt, stop in make_workload(seed):
            children = [Request(f"{request_id}#{i}", prompt, stop) for i in range(seed % 2 + 1)]
            scheduler.add_request(Request(request_id, prompt, stop, fork_children=children))
        finished = run_to_completion(scheduler, async_scheduling=async_scheduling)
        results[async_scheduling] = {rid: (r.output_token_ids, r.finish_reason, r.stop_reason)
                                     for rid, r in finished.items()}
    assert results[True] == results[False]
    assert len(results[True]) > len(make_workload(seed))


def test_a_step_in_flight_feeds_the_next_one_and_stops_apply_one_step_late():
    scheduler = make_scheduler(block_size=4)
    scheduler.add_request(req("a", [1, 2], max_tokens=8, eos_token_id=0))
    first = scheduler.schedule()
    second = scheduler.schedule()  # a's placeholder: position 2, its token still on the device
    assert [(s.start_position, s.num_tokens, s.sample) for s in second.scheduled] == [(2, 1, True)]
    assert scheduler.get_request("a").num_output_placeholders == 2
    result = scheduler.update(first, {"a": 0})  # eos: a finishes; the second step's sample is dropped
    assert result.finished[0].output_token_ids == [0]
    assert scheduler.update(second, {"a": 5}).new_token_ids == {}
    assert scheduler.schedule().scheduled == () and scheduler.block_manager.num_free_blocks == 64


def test_no_step_is_scheduled_past_the_length_limit_in_flight():
    scheduler = make_scheduler()
    scheduler.add_request(req("a", [1, 2], max_tokens=1))
    scheduler.add_request(req("b", [1, 2], max_tokens=3))
    first = scheduler.schedule()
    second = scheduler.schedule()
    assert [s.request_id for s in second.scheduled] == ["b"]  # a's one output is in flight
    scheduler.update(first, {"a": 3, "b": 3})
    scheduler.update(second, {"b": 4})
    drain(scheduler)


def test_finish_request_stops_wherever_the_request_is():
    scheduler = make_scheduler(max_num_seqs=1)
    scheduler.add_request(req("a", [1, 2, 3]))
    scheduler.add_request(req("b", [4, 5]))
    output = scheduler.schedule()
    assert scheduler.finish_request("a", "the end")  # in flight
    a = output.scheduled[0]
    assert scheduler.update(output, {"a": 9}).new_token_ids == {}
    assert scheduler.finish_request("b", None) and not scheduler.finish_request("b")
    assert a.request_id == "a" and scheduler.block_manager.num_free_blocks == 64
    assert scheduler.schedule().scheduled == ()  # nothing left


def test_recover_from_failure_recomputes_everything_and_counts_the_lost_step():
    scheduler = make_scheduler(block_size=4)
    runner = FakeRunner(scheduler)
    scheduler.add_request(req("a", list(range(9)), max_tokens=6))
    scheduler.add_request(req("b", [1, 2], max_tokens=6))
    output = scheduler.schedule()
    scheduler.update(output, runner.execute(output))
    lost = scheduler.schedule()  # this step fails on the device
    assert scheduler.recover_from_failure() == ["a", "b"]
    assert [scheduler.get_request(r).num_failed_steps for r in "ab"] == [1, 1]
    assert scheduler.block_manager.num_free_blocks == 64 and scheduler.stats()["num_cached_kv_blocks"] == 0
    assert lost.scheduled and scheduler.num_in_flight == 0
    finished = run_to_completion(scheduler, FakeRunner(scheduler))  # a fresh runner: nothing was kept
    assert finished["a"].output_token_ids == reference(list(range(9)), StopCriteria(max_tokens=6), 128)[0]


# ------------------------------------------------------------ sliding window


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("caching", [True, False])
def test_sliding_window_gives_back_blocks_outside_the_window(async_scheduling, caching):
    """Every layer windowed (Mistral v0.1, Starcoder2): a request holds only the blocks its window
    still needs, so generations far longer than the pool fit, and outputs equal the windowed
    reference."""
    window, block_size = 6, 2
    scheduler = make_scheduler(num_blocks=14, block_size=block_size, max_model_len=200, max_num_seqs=2,
                               max_num_batched_tokens=4, sliding_window=window, enable_prefix_caching=caching)
    peak = [0]
    runner = FakeRunner(scheduler)
    execute = runner.execute

    def observed(output):
        peak[0] = max(peak[0], scheduler.block_manager.num_used_blocks)
        return execute(output)

    runner.execute = observed
    requests = [("a", list(range(1, 12)), 60), ("b", [3, 1, 4, 1, 5, 9, 2, 6], 50)]
    for rid, prompt, max_tokens in requests:
        scheduler.add_request(req(rid, prompt, max_tokens=max_tokens))  # 70 and 57 tokens: 35 + 29 blocks
    finished = run_to_completion(scheduler, runner, async_scheduling=async_scheduling)
    for rid, prompt, max_tokens in requests:
        want = reference(prompt, StopCriteria(max_tokens=max_tokens), 200, window=window)
        assert (finished[rid].output_token_ids, finished[rid].finish_reason) == want[:2]
    assert peak[0] <= 14  # (the whole generations would need 64 blocks)
    scheduler.block_manager.check_invariants()


def test_dropped_blocks_lead_the_table_and_stay_cached():
    scheduler = make_scheduler(block_size=2, sliding_window=3, max_num_batched_tokens=64)
    scheduler.add_request(req("a", list(range(10)), max_tokens=3))
    step(scheduler)  # prefill 10 tokens: nothing dropped yet (the first query still sees position 0)
    output, _ = step(scheduler)  # computes position 10: its window is 8..10, blocks 0-3 are done
    table = scheduler.block_manager.block_table("a")
    assert table[:4] == [-1] * 4 and -1 not in table[4:]
    assert scheduler.block_manager.num_used_blocks == len(table) - 4
    assert scheduler.stats()["num_cached_kv_blocks"] >= 4  # given back, still hashed for prefix hits
    scheduler.block_manager.check_invariants()
    drain(scheduler)
