"""BlockManager: exact expectations (block ids, ref counts, free order, prefix hits,
eviction, copy-on-write) and a hypothesis state machine that checks the invariants
and the KV contents a runner would see, after every operation."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from scheduler.block_manager import _ROOT_HASH, BlockManager, hash_block
from scheduler.request import Request, StopCriteria

STOP = StopCriteria(max_tokens=1000)


def make_request(request_id: str, tokens: list[int]) -> Request:
    return Request(request_id, tokens, STOP)


def compute(bm: BlockManager, request: Request, num_new: int | None = None) -> list[int]:
    """Allocate and 'compute' the next tokens of a request that holds blocks."""
    if num_new is None:
        num_new = request.num_tokens - request.num_computed_tokens
    table = bm.allocate_slots(request, num_new)
    assert table is not None
    request.num_computed_tokens += num_new
    bm.cache_full_blocks(request)
    return table


def admit(bm: BlockManager, request: Request, num_new: int | None = None) -> int:
    """Prefix lookup + allocation + compute, as the scheduler admits a request. Returns the hit."""
    blocks, num_cached = bm.get_computed_blocks(request)
    if num_new is None:
        num_new = request.num_tokens - num_cached
    assert bm.allocate_slots(request, num_new, blocks) is not None
    request.num_computed_tokens = num_cached + num_new
    bm.cache_full_blocks(request)
    return num_cached


def append(request: Request, *tokens: int) -> None:
    for token in tokens:
        request.output_token_ids.append(token)
        request.all_token_ids.append(token)


def snapshot(bm: BlockManager) -> tuple:
    return (
        bm.free_block_ids(),
        [bm.ref_count(b) for b in range(bm.num_blocks)],
        {rid: list(t) for rid, t in bm._tables.items()},
        dict(bm._hash_to_block),
        list(bm._copies),
        bm.prefix_cache_queries,
        bm.prefix_cache_hits,
    )


# ------------------------------------------------------------------ allocation


def test_allocation_takes_blocks_from_the_head_in_order():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(10)))
    assert bm.allocate_slots(a, 10) == [0, 1, 2]
    assert bm.block_table("a") == [0, 1, 2]
    assert [bm.ref_count(b) for b in range(8)] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert bm.free_block_ids() == [3, 4, 5, 6, 7]
    assert bm.num_free_blocks == 5 and bm.num_used_blocks == 3
    a.num_computed_tokens = 10
    append(a, 99, 98)  # 12 tokens: still 3 blocks
    assert bm.allocate_slots(a, 2) == [0, 1, 2]
    a.num_computed_tokens = 12
    append(a, 97)
    assert bm.allocate_slots(a, 1) == [0, 1, 2, 3]
    bm.check_invariants()


def test_chunked_allocation_grows_the_table():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(11)))
    assert bm.allocate_slots(a, 3) == [0]
    a.num_computed_tokens = 3
    assert bm.allocate_slots(a, 6) == [0, 1, 2]
    a.num_computed_tokens = 9
    assert bm.allocate_slots(a, 2) == [0, 1, 2]
    with pytest.raises(ValueError):
        bm.allocate_slots(a, 3)  # beyond its 11 tokens


def test_free_returns_blocks_to_the_tail_last_block_first():
    bm = BlockManager(num_blocks=8, block_size=4)
    a, b = make_request("a", list(range(10))), make_request("b", list(range(100, 105)))
    bm.allocate_slots(a, 10)
    bm.allocate_slots(b, 5)
    assert bm.block_table("b") == [3, 4]
    bm.free("a")
    assert bm.free_block_ids() == [5, 6, 7, 2, 1, 0]
    assert bm.block_table("a") == []
    bm.free("b")
    assert bm.free_block_ids() == [5, 6, 7, 2, 1, 0, 4, 3]
    assert bm.num_free_blocks == 8
    bm.free("b")  # unknown ids: no-op
    bm.check_invariants()


def test_allocation_is_all_or_nothing():
    bm = BlockManager(num_blocks=4, block_size=4)
    a, b = make_request("a", list(range(12))), make_request("b", list(range(100, 108)))
    bm.allocate_slots(a, 12)
    before = snapshot(bm)
    assert bm.allocate_slots(b, 8) is None  # needs 2, 1 free
    assert snapshot(bm) == before
    assert bm.allocate_slots(b, 4) == [3]
    bm.check_invariants()


# ------------------------------------------------------------- prefix caching


def test_prefix_hit_is_capped_to_leave_one_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(12)))
    assert admit(bm, a) == 0
    assert bm.num_cached_blocks == 3
    bm.free("a")
    assert bm.free_block_ids() == [3, 4, 5, 6, 7, 2, 1, 0]

    same = make_request("same", list(range(12)))  # identical: capped at (12 - 1) // 4 = 2 blocks
    assert bm.get_computed_blocks(same) == ([0, 1], 8)
    longer = make_request("longer", list(range(12)) + [50])
    assert bm.get_computed_blocks(longer) == ([0, 1, 2], 12)
    shorter = make_request("shorter", list(range(6)))
    assert bm.get_computed_blocks(shorter) == ([0], 4)
    one_block = make_request("one", list(range(4)))
    assert bm.get_computed_blocks(one_block) == ([], 0)


def test_hit_takes_blocks_out_of_the_free_queue_and_counts_tokens():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(12)))
    admit(bm, a)
    bm.free("a")
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (12, 0)

    b = make_request("b", list(range(12)) + [50, 51])
    assert admit(bm, b) == 12
    # Hits 0, 1, 2 leave the free queue; the new block comes from its head.
    assert bm.block_table("b") == [0, 1, 2, 3]
    assert bm.free_block_ids() == [4, 5, 6, 7]
    assert [bm.ref_count(x) for x in range(4)] == [1, 1, 1, 1]
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (12 + 14, 12)
    bm.check_invariants()


def test_hit_on_held_blocks_shares_them_and_last_holder_frees():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(10)))
    admit(bm, a)  # [0, 1, 2]; blocks 0, 1 full and cached
    b = make_request("b", list(range(8)) + [77, 78, 79])
    assert admit(bm, b) == 8
    assert bm.block_table("b") == [0, 1, 3]
    assert [bm.ref_count(x) for x in range(4)] == [2, 2, 1, 1]
    bm.free("a")
    assert [bm.ref_count(x) for x in range(4)] == [1, 1, 0, 1]
    assert bm.free_block_ids() == [4, 5, 6, 7, 2]
    bm.free("b")
    assert bm.free_block_ids() == [4, 5, 6, 7, 2, 3, 1, 0]
    bm.check_invariants()


def test_hashes_are_chained_so_a_block_after_another_prefix_does_not_hit():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    admit(bm, a)
    # Same second block content, different first block: no hit at all.
    b = make_request("b", [9, 9, 9, 9, 5, 6, 7, 8, 9])
    assert bm.get_computed_blocks(b) == ([], 0)
    assert b.block_hashes[0] != a.block_hashes[0]
    assert hash_block(_ROOT_HASH, [5, 6, 7, 8]) != a.block_hashes[1]
    assert a.block_hashes[1] == hash_block(hash_block(_ROOT_HASH, [1, 2, 3, 4]), [5, 6, 7, 8])
    # Same first block, different second: hit on the first only.
    c = make_request("c", [1, 2, 3, 4, 0, 6, 7, 8, 9])
    assert bm.get_computed_blocks(c) == ([0], 4)


def test_partial_blocks_are_never_cached():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(7)))
    admit(bm, a)
    assert bm.num_cached_blocks == 1
    assert bm.cached_hash(0) is not None and bm.cached_hash(1) is None
    append(a, 7)
    compute(bm, a)  # block 1 becomes full and computed
    assert bm.num_cached_blocks == 2 and bm.cached_hash(1) == a.block_hashes[1]


def test_uncomputed_full_blocks_are_not_cached():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(12)))
    assert bm.allocate_slots(a, 12) == [0, 1, 2]  # slots allocated, nothing computed yet
    bm.cache_full_blocks(a)
    assert bm.num_cached_blocks == 0
    a.num_computed_tokens = 5
    bm.cache_full_blocks(a)
    assert bm.num_cached_blocks == 1


def test_reuse_evicts_lru_first_and_drops_the_hash():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_request("a", [1, 2, 3, 4, 5, 6])
    admit(bm, a)  # blocks [0, 1, 2], all full and cached
    assert bm.num_cached_blocks == 3
    bm.free("a")
    assert bm.free_block_ids() == [3, 2, 1, 0]
    b = make_request("b", [9, 9, 9, 9])
    admit(bm, b)  # takes 3 (never cached), then 2: a's LAST block is evicted first
    assert bm.block_table("b") == [3, 2]
    assert bm.cached_hash(2) == b.block_hashes[1]  # block 2 was re-registered for b
    assert a.block_hashes[2] not in bm._hash_to_block
    c = make_request("c", [1, 2, 3, 4, 5, 6, 7])
    assert bm.get_computed_blocks(c) == ([0, 1], 4)  # a's first two blocks survive
    bm.check_invariants()


def test_duplicate_content_keeps_one_cached_block():
    bm = BlockManager(num_blocks=8, block_size=2)
    a, b = make_request("a", [1, 2, 3]), make_request("b", [1, 2, 3])
    bm.allocate_slots(a, 3)
    bm.allocate_slots(b, 3)  # both allocated before either computed: no hit
    assert bm.block_table("a") == [0, 1] and bm.block_table("b") == [2, 3]
    for r in (a, b):
        r.num_computed_tokens = 3
        bm.cache_full_blocks(r)
    assert bm.num_cached_blocks == 1
    assert bm.cached_hash(0) is not None and bm.cached_hash(2) is None
    bm.check_invariants()


def test_prefix_caching_disabled():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_request("a", list(range(12)))
    admit(bm, a)
    bm.free("a")
    b = make_request("b", list(range(13)))
    assert bm.get_computed_blocks(b) == ([], 0)
    assert bm.num_cached_blocks == 0
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (0, 0)


# --------------------------------------------------------------- copy-on-write


def fork(bm: BlockManager, parent: Request, child_id: str, tail: list[int]) -> Request:
    child = Request(child_id, parent.all_token_ids[: parent.num_computed_tokens] + tail, STOP)
    bm.fork(parent, child, parent.num_computed_tokens)
    child.num_computed_tokens = parent.num_computed_tokens
    return child


def test_fork_then_append_copies_the_shared_partial_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", [1, 2, 3, 4, 5, 6])
    admit(bm, a)
    assert bm.block_table("a") == [0, 1]
    b = fork(bm, a, "b", [70])
    assert bm.block_table("b") == [0, 1]
    assert [bm.ref_count(x) for x in range(3)] == [2, 2, 0]
    assert bm.take_copies() == []

    compute(bm, b)  # b writes position 6 into shared block 1: copy it first
    assert bm.block_table("b") == [0, 2]
    assert bm.take_copies() == [(1, 2)]
    assert bm.take_copies() == []
    assert [bm.ref_count(x) for x in range(3)] == [2, 1, 1]
    assert bm.block_table("a") == [0, 1]  # the other sharer keeps the old block

    append(a, 60)
    compute(bm, a)  # block 1 is a's alone now: no copy
    assert bm.block_table("a") == [0, 1]
    assert bm.take_copies() == []
    bm.check_invariants()


def test_fork_at_a_block_boundary_needs_no_copy():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(8)))
    a.num_computed_tokens = 0
    assert bm.allocate_slots(a, 8) == [0, 1]
    a.num_computed_tokens = 8
    bm.cache_full_blocks(a)
    b = fork(bm, a, "b", [70])
    compute(bm, b)
    assert bm.block_table("b") == [0, 1, 2]
    assert bm.take_copies() == []
    assert [bm.ref_count(x) for x in range(3)] == [2, 2, 1]
    bm.check_invariants()


def test_shared_blocks_are_freed_by_the_last_holder_only():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", [1, 2, 3, 4, 5, 6])
    admit(bm, a)
    b = fork(bm, a, "b", [70])
    c = fork(bm, a, "c", [71])
    assert [bm.ref_count(x) for x in range(2)] == [3, 3]
    bm.free("a")
    assert [bm.ref_count(x) for x in range(2)] == [2, 2]
    assert bm.free_block_ids() == [2, 3, 4, 5, 6, 7]
    compute(bm, b)  # copy of block 1 (still shared with c) into 2
    assert bm.take_copies() == [(1, 2)]
    compute(bm, c)  # c holds block 1 alone now: writes in place
    assert bm.take_copies() == []
    assert bm.block_table("c") == [0, 1]
    bm.free("b")
    assert bm.free_block_ids() == [3, 4, 5, 6, 7, 2]
    bm.free("c")
    assert bm.free_block_ids() == [3, 4, 5, 6, 7, 2, 1, 0]
    bm.check_invariants()


def test_copy_on_write_is_all_or_nothing():
    bm = BlockManager(num_blocks=2, block_size=4)
    a = make_request("a", [1, 2, 3, 4, 5, 6])
    admit(bm, a)
    b = fork(bm, a, "b", [70])
    before = snapshot(bm)
    assert bm.allocate_slots(b, 1) is None  # the copy needs a free block
    assert snapshot(bm) == before


def test_fork_child_caches_its_own_blocks():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = make_request("a", [1, 2, 3])
    admit(bm, a)
    b = fork(bm, a, "b", [70])
    compute(bm, b)  # b's block 1 = [3, 70] becomes full
    assert bm.cached_hash(bm.block_table("b")[1]) == hash_block(b.block_hashes[0], [3, 70])
    d = make_request("d", [1, 2, 3, 70, 5])
    assert bm.get_computed_blocks(d) == ([0, 2], 4)


def test_slot_usage_counts_shared_slots_once():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", [1, 2, 3, 4, 5, 6])
    admit(bm, a)
    assert bm.slot_usage() == (8, 6)
    fork(bm, a, "b", [70])
    assert bm.slot_usage() == (8, 6)


# ------------------------------------------------------------- state machine


def check_invariants(bm: BlockManager, requests: dict[str, Request]) -> None:
    """Independent of BlockManager.check_invariants: only public queries."""
    bs = bm.block_size
    holders = [0] * bm.num_blocks
    for rid, request in requests.items():
        table = bm.block_table(rid)
        assert len(set(table)) == len(table)
        assert len(table) == -(-request.num_computed_tokens // bs)
        for block_id in table:
            holders[block_id] += 1
    free = bm.free_block_ids()
    assert len(free) == len(set(free)) == bm.num_free_blocks
    for block_id in range(bm.num_blocks):
        assert bm.ref_count(block_id) == holders[block_id]
        assert (holders[block_id] == 0) == (block_id in free)
    for block_hash, block_id in bm._hash_to_block.items():
        assert bm.cached_hash(block_id) == block_hash
    assert bm.num_cached_blocks == sum(bm.cached_hash(b) is not None for b in range(bm.num_blocks))
    assert bm.num_free_blocks + sum(1 for h in holders if h) == bm.num_blocks


def before_cached(snap: tuple) -> int:
    return len(snap[3])


TOKENS = st.lists(st.integers(0, 2), min_size=1, max_size=8)


class BlockManagerMachine(RuleBasedStateMachine):
    """Sequences over a small pool with a tiny vocabulary (so prefixes collide), and
    a simulated KV pool: every slot holds the token whose KV was written there."""

    seqs = Bundle("seqs")

    @initialize(
        num_blocks=st.integers(3, 24),
        block_size=st.sampled_from([1, 2, 2, 3, 4]),
        caching=st.booleans(),
    )
    def setup(self, num_blocks, block_size, caching):
        self.bm = BlockManager(num_blocks, block_size, caching)
        self.requests: dict[str, Request] = {}
        self.freed: dict[str, Request] = {}
        self.kv = [None] * (num_blocks * block_size)
        self.next_id = 0

    def new_id(self) -> str:
        self.next_id += 1
        return f"r{self.next_id}"

    def slot(self, table: list[int], position: int) -> int:
        bs = self.bm.block_size
        return table[position // bs] * bs + position % bs

    def run_step(self, request: Request, num_new: int, computed_blocks=(), num_cached: int = 0) -> bool:
        """Allocate, apply copies, write the KV of the new tokens; False if no room."""
        before = snapshot(self.bm)
        table = self.bm.allocate_slots(request, num_new, computed_blocks)
        if table is None:
            assert snapshot(self.bm) == before
            event("allocation refused")
            return False
        if num_cached:
            event("prefix hit")
        if self.bm.num_cached_blocks < before_cached(before):
            event("eviction")
        for src, dst in self.bm.take_copies():
            event("copy-on-write")
            bs = self.bm.block_size
            self.kv[dst * bs : (dst + 1) * bs] = self.kv[src * bs : (src + 1) * bs]
        start = request.num_computed_tokens + num_cached
        # The slots already computed (incl. a prefix hit) hold this sequence's tokens.
        for p in range(start):
            assert self.kv[self.slot(table, p)] == request.all_token_ids[p]
        for p in range(start, start + num_new):
            self.kv[self.slot(table, p)] = request.all_token_ids[p]
        request.num_computed_tokens = start + num_new
        self.bm.cache_full_blocks(request)
        return True

    @rule(target=seqs, tokens=TOKENS, chunk=st.integers(1, 10))
    def add(self, tokens, chunk):
        return self._add(tokens, chunk)

    @rule(target=seqs, rid=seqs, cut=st.integers(0, 12), tail=TOKENS, chunk=st.integers(1, 10))
    def add_sharing_a_prefix(self, rid, cut, tail, chunk):
        """A new sequence that starts like an existing (or freed) one: prefix hits."""
        source = self.requests.get(rid) or self.freed.get(rid)
        if source is None:
            return multiple()
        return self._add(source.all_token_ids[:cut] + tail, chunk)

    def _add(self, tokens, chunk):
        request = Request(self.new_id(), tokens, STOP)
        blocks, num_cached = self.bm.get_computed_blocks(request)
        assert num_cached < request.num_tokens and num_cached == len(blocks) * self.bm.block_size
        num_new = min(chunk, request.num_tokens - num_cached)
        if not self.run_step(request, num_new, blocks, num_cached):
            return multiple()
        self.requests[request.request_id] = request
        return request.request_id

    @rule(rid=seqs, chunk=st.integers(1, 10))
    def compute(self, rid, chunk):
        request = self.requests.get(rid)
        if request is None:
            return
        num_left = request.num_tokens - request.num_computed_tokens
        if num_left:
            self.run_step(request, min(chunk, num_left))

    @rule(rid=seqs, tokens=TOKENS)
    def append(self, rid, tokens):
        request = self.requests.get(rid)
        if request is not None:
            append(request, *tokens)

    @rule(target=seqs, rid=seqs, tail=st.lists(st.integers(0, 2), max_size=3), write=st.booleans())
    def fork(self, rid, tail, write):
        """Fork; with `write`, the child computes its tail at once (copy-on-write)."""
        parent = self.requests.get(rid)
        if parent is None or parent.num_computed_tokens + len(tail) == 0:
            return multiple()
        child = Request(self.new_id(), parent.all_token_ids[: parent.num_computed_tokens] + tail, STOP)
        self.bm.fork(parent, child, parent.num_computed_tokens)
        child.num_computed_tokens = parent.num_computed_tokens
        self.requests[child.request_id] = child
        if write and tail:
            self.run_step(child, len(tail))
        return child.request_id

    @rule(rid=consumes(seqs))
    def free(self, rid):
        if rid in self.requests:
            self.freed[rid] = self.requests.pop(rid)
            self.bm.free(rid)

    @invariant()
    def invariants(self):
        if not hasattr(self, "bm"):
            return
        check_invariants(self.bm, self.requests)
        self.bm.check_invariants()
        for rid, request in self.requests.items():
            table = self.bm.block_table(rid)
            for p in range(request.num_computed_tokens):
                assert self.kv[self.slot(table, p)] == request.all_token_ids[p]
            # Registered blocks of a holder carry the hash of its own prefix.
            for i, block_id in enumerate(table[: request.num_computed_tokens // self.bm.block_size]):
                h = self.bm.cached_hash(block_id)
                if h is not None:
                    self.bm._extend_hashes(request, i + 1)
                    assert h == request.block_hashes[i]

    def teardown(self):
        if hasattr(self, "bm"):
            for rid in list(self.requests):
                self.bm.free(rid)
            assert self.bm.num_free_blocks == self.bm.num_blocks
            self.bm.check_invariants()


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
