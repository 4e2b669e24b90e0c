"""The one owner of KV block bookkeeping: free queue, reference counts, block
tables, the prefix cache (chained block hashes) and copy-on-write.

Semantics follow vLLM v1's block pool / KV cache manager:

- Block ids are 0..num_blocks-1, all usable. Allocation takes blocks from the HEAD
  of the free queue; blocks whose reference count drops to 0 go to its TAIL, a
  sequence's blocks in REVERSE table order (so its last blocks are evicted first).
- Prefix caching: only FULL, COMPUTED blocks are registered, under a chained hash
  `sha256(parent_hash + token_ids)`. A registered block keeps its hash while it sits
  in the free queue; a later request whose prefix hashes the same takes it back out
  of the queue (a hit). The hash is dropped only when the block is handed out for
  something else (eviction, LRU from the queue's head).
- Copy-on-write: `fork` shares all of a parent's blocks with a child. A sequence
  about to write into a block that someone else also holds (a shared, partially
  filled last block) gets a fresh block instead, and the pair (src, dst) is queued
  for the runner to copy (`take_copies`) before the step's KV writes. Full shared
  blocks are never written: appends go to the partial last block or to new blocks.

- Sliding windows: for a model whose every layer attends to the last W positions only, a
  sequence's leading blocks that fall wholly outside the window of every position still to be
  computed are given back (`drop_blocks_before`): their table entries become NULL_BLOCK and
  they go to the free queue (keeping their prefix-cache hash), vLLM's sliding-window manager.

NOTE: invariants (checked by tests/scheduler):
- a block is either free (ref count 0, in the free queue exactly once) or held
  (ref count == the number of block tables that contain it; no table holds a block twice);
- `_block_hash[b] == h` iff `_hash_to_block[h] == b`; registered blocks are full.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from scheduler.request import Request

# A table entry whose block was given back (it fell wholly outside a sliding window).
NULL_BLOCK = -1
# The parent hash of every sequence's first block.
_ROOT_HASH = hashlib.sha256(b"pagedjax prefix cache root").digest()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def hash_block(parent_hash: bytes, token_ids: Sequence[int]) -> bytes:
    """Chained, collision-safe hash of one full block: sha256(parent hash + tokens)."""
    return hashlib.sha256(parent_hash + array("q", token_ids).tobytes()).digest()


class BlockManager:
    """Block tables of sequences (keyed by request id) over a pool of `num_blocks`
    blocks of `block_size` token slots each.

    Verbs: `get_computed_blocks` (prefix-cache lookup), `allocate_slots`
    (all-or-nothing), `cache_full_blocks`, `fork`, `free`, `take_copies`.
    Queries: `block_table`, `num_free_blocks`, `slot_usage`, ... .
    Stats: `prefix_cache_queries`, `prefix_cache_hits` (in tokens, as vLLM's metrics).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = bool(enable_prefix_caching)
        self._ref_counts = [0] * num_blocks
        # Hash under which a block is registered in the prefix cache, else None.
        self._block_hash: list[bytes | None] = [None] * num_blocks
        self._hash_to_block: dict[bytes, int] = {}
        # Free blocks, head (next to allocate) first; O(1) removal from the middle.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._tables: dict[str, list[int]] = {}
        # Per sequence: its first n blocks were already offered to the prefix cache.
        self._num_registered: dict[str, int] = {}
        # Per sequence: token positions that have a slot (computed or being computed).
        self._num_slotted_tokens: dict[str, int] = {}
        self._copies: list[tuple[int, int]] = []
        # Per sequence: the first block-table index changed since `pop_table_change`.
        self._changed_from: dict[str, int] = {}
        # Per sequence: leading table entries given back (sliding window).
        self._num_dropped: dict[str, int] = {}
        self.prefix_cache_queries = 0  # tokens of admitted requests looked up
        self.prefix_cache_hits = 0  # of those, tokens found in the cache

    # ----------------------------------------------------------------- queries

    @property
    def num_free_blocks(self) -> int:
        """Blocks in the free queue (cached-but-free blocks count: they are evictable)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def block_table(self, request_id: str) -> list[int]:
        """The sequence's block table: block ids for positions [i*block_size, (i+1)*block_size).

        NOTE: this is the manager's own list, returned without a copy for speed: read
        it, never mutate it, and copy it to keep it past the next allocate/free/fork.
        """
        table = self._tables.get(request_id)
        return table if table is not None else []

    def has_blocks(self, request_id: str) -> bool:
        return request_id in self._tables

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    def cached_hash(self, block_id: int) -> bytes | None:
        """The prefix-cache hash the block is registered under, or None."""
        return self._block_hash[block_id]

    def free_block_ids(self) -> list[int]:
        """The free queue, head (allocated next) first."""
        return list(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache (held or free)."""
        return len(self._hash_to_block)

    def slot_usage(self) -> tuple[int, int]:
        """(allocated slots, slots holding a token): KV waste = 1 - filled / allocated.

        O(total blocks held): for metrics, not for every step.
        """
        bs = self.block_size
        fill: dict[int, int] = {}
        for request_id, table in self._tables.items():
            num_tokens = self._num_slotted_tokens[request_id]
            for i, block_id in enumerate(table):
                if block_id == NULL_BLOCK:
                    continue
                filled = min(bs, num_tokens - i * bs)
                if filled > fill.get(block_id, 0):
                    fill[block_id] = filled
        return self.num_used_blocks * bs, sum(fill.values())

    # ------------------------------------------------------------------- verbs

    def reset_prefix_cache(self) -> bool:
        """Forgets every cached block hash (e.g. after the KV contents were lost, or between
        benchmark runs). Only when no sequence holds blocks; returns whether it was reset."""
        if self._tables:
            return False
        self._hash_to_block.clear()
        self._block_hash = [None] * self.num_blocks
        return True

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Longest prefix of `request`'s tokens held by cached blocks: (block ids, tokens).

        A pure lookup (no state changes but extending `request.block_hashes`); pass the
        blocks to `allocate_slots` to take them. The hit never covers the whole
        sequence: at least one token is left to compute (the step that computes it
        samples the next token), so at most `(num_tokens - 1) // block_size` blocks.
        """
        if not self.enable_prefix_caching:
            return [], 0
        max_blocks = (len(request.all_token_ids) - 1) // self.block_size
        hashes = request.block_hashes
        lookup = self._hash_to_block.get
        blocks: list[int] = []
        for i in range(max_blocks):
            if i == len(hashes):
                self._extend_hashes(request, i + 1)
            block_id = lookup(hashes[i])
            if block_id is None:
                break
            blocks.append(block_id)
        return blocks, len(blocks) * self.block_size

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: Sequence[int] = ()
    ) -> list[int] | None:
        """Give `request` slots for `num_new_tokens` more tokens; all or nothing.

        The slots cover positions [start, start + num_new_tokens) with
        `start = request.num_computed_tokens + len(computed_blocks) * block_size`.
        `computed_blocks` (from `get_computed_blocks`) is only for a sequence that
        holds no blocks yet: they are taken (ref count + 1, out of the free queue) and
        head its table; the caller then sets `num_computed_tokens` to the hit.
        Shared blocks in the written range are copied on write (see `take_copies`).
        Returns the sequence's block table (the manager's own list, read-only, see
        `block_table`), or None, changing nothing, when the free queue is too short.
        """
        bs = self.block_size
        request_id = request.request_id
        table = self._tables.get(request_id)
        if table is not None and not computed_blocks:
            # Fast path (a decode step, mostly): the written positions fall in one
            # held block that this sequence alone holds.
            start = request.num_computed_tokens
            end = start + num_new_tokens
            first = start // bs
            if (0 < num_new_tokens and end <= len(request.all_token_ids) + request.num_output_placeholders
                    and (end - 1) // bs == first < len(table)):
                if self._ref_counts[table[first]] == 1:
                    self._num_slotted_tokens[request_id] = end
                    return table
        if num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be >= 1, got {num_new_tokens}")
        num_held = 0 if table is None else len(table)
        if computed_blocks and (num_held or request.num_computed_tokens):
            raise ValueError(f"{request_id}: computed blocks are only for a sequence without blocks")
        start = request.num_computed_tokens + len(computed_blocks) * bs
        end = start + num_new_tokens
        if end > request.num_tokens_with_placeholders:
            raise ValueError(
                f"{request_id}: slots for positions up to {end} but it has {request.num_tokens_with_placeholders} "
                f"tokens (in flight included)"
            )
        num_required = cdiv(end, bs)
        ref_counts = self._ref_counts
        # Copy-on-write: held blocks this step writes into that someone else holds too.
        copy_on_write = [
            i for i in range(start // bs, min(num_held, num_required)) if ref_counts[table[i]] > 1
        ] if num_held else []
        num_fresh = max(0, num_required - num_held - len(computed_blocks))
        num_hits_in_free_queue = sum(1 for b in computed_blocks if ref_counts[b] == 0) if computed_blocks else 0
        if num_fresh + len(copy_on_write) + num_hits_in_free_queue > len(self._free):
            return None

        changed_from = num_held
        if table is None:
            table = self._tables[request_id] = []
            self._num_registered[request_id] = len(computed_blocks)
            if self.enable_prefix_caching:
                self.prefix_cache_queries += len(request.all_token_ids)
                self.prefix_cache_hits += len(computed_blocks) * bs
        for block_id in computed_blocks:
            if ref_counts[block_id] == 0:
                del self._free[block_id]
            ref_counts[block_id] += 1
            table.append(block_id)
        if copy_on_write:
            changed_from = copy_on_write[0]
        for i in copy_on_write:
            src, dst = table[i], self._pop_free()
            ref_counts[src] -= 1  # still >= 1: it was shared
            ref_counts[dst] = 1
            table[i] = dst
            self._copies.append((src, dst))
        for _ in range(num_fresh):
            block_id = self._pop_free()
            ref_counts[block_id] = 1
            table.append(block_id)
        if end > self._num_slotted_tokens.get(request_id, 0):
            self._num_slotted_tokens[request_id] = end
        if changed_from < len(table):
            previous = self._changed_from.get(request_id)
            self._changed_from[request_id] = changed_from if previous is None else min(previous, changed_from)
        return table

    def pop_table_change(self, request_id: str) -> int | None:
        """The first index of `request_id`'s block table that changed (blocks appended or
        replaced by copy-on-write) since the last call, or None if none did; resets it."""
        return self._changed_from.pop(request_id, None)

    def cache_full_blocks(self, request: Request) -> None:
        """Register in the prefix cache the blocks of `request` that are now full, computed
        (scheduled: a later step reading them runs after the step writing them) and whose
        tokens are all known: the first `min(num_computed_tokens, num_tokens) // block_size`.
        A block whose hash is already cached elsewhere stays unregistered (one block per hash)."""
        if not self.enable_prefix_caching:
            return
        request_id = request.request_id
        num_full = min(request.num_computed_tokens, len(request.all_token_ids)) // self.block_size
        done = self._num_registered.get(request_id)
        if done is None or num_full <= done:
            return
        if len(request.block_hashes) < num_full:
            self._extend_hashes(request, num_full)
        table = self._tables[request_id]
        hashes = request.block_hashes
        for i in range(done, num_full):
            block_id = table[i]
            if block_id == NULL_BLOCK:
                continue
            if self._block_hash[block_id] is None and hashes[i] not in self._hash_to_block:
                self._hash_to_block[hashes[i]] = block_id
                self._block_hash[block_id] = hashes[i]
        self._num_registered[request_id] = num_full

    def fork(self, parent: Request, child: Request, num_shared_tokens: int) -> None:
        """`child` shares the blocks of `parent` that hold its first `num_shared_tokens`
        positions (ref counts + 1); the caller gives the child that many computed tokens,
        which must equal the parent's (they differ after, e.g. another sampled token)."""
        if child.request_id in self._tables:
            raise ValueError(f"{child.request_id} already holds blocks")
        table = self._tables.get(parent.request_id)
        if table is None:
            return
        shared = table[: cdiv(num_shared_tokens, self.block_size)]
        for block_id in shared:
            if block_id != NULL_BLOCK:
                self._ref_counts[block_id] += 1
        self._tables[child.request_id] = list(shared)
        dropped = sum(1 for b in shared if b == NULL_BLOCK)
        if dropped:
            self._num_dropped[child.request_id] = dropped
        num_shared_full = num_shared_tokens // self.block_size
        self._num_registered[child.request_id] = min(self._num_registered[parent.request_id], num_shared_full)
        self._num_slotted_tokens[child.request_id] = num_shared_tokens
        # Hashes of the blocks fully inside the shared, computed prefix carry over.
        if len(child.block_hashes) < num_shared_full:
            child.block_hashes = parent.block_hashes[:num_shared_full]

    def free(self, request_id: str) -> None:
        """Drop the sequence's table: each block loses one ref; blocks reaching 0 go
        to the free queue's tail, last block first. Unknown ids are a no-op."""
        table = self._tables.pop(request_id, None)
        self._changed_from.pop(request_id, None)
        self._num_dropped.pop(request_id, None)
        self._num_registered.pop(request_id, None)
        self._num_slotted_tokens.pop(request_id, None)
        if table is None:
            return
        ref_counts, free = self._ref_counts, self._free
        for block_id in reversed(table):
            if block_id == NULL_BLOCK:
                continue
            ref_counts[block_id] -= 1
            if ref_counts[block_id] == 0:
                free[block_id] = None

    def drop_blocks_before(self, request_id: str, num_blocks: int) -> None:
        """Gives back the sequence's first `num_blocks` blocks (sliding window: no position still
        to compute attends to them): entries become NULL_BLOCK, blocks whose reference count
        reaches 0 go to the free queue's tail (they keep their prefix-cache hash)."""
        table = self._tables.get(request_id)
        if table is None:
            return
        ref_counts, free = self._ref_counts, self._free
        for i in range(self._num_dropped.get(request_id, 0), min(num_blocks, len(table))):
            block_id = table[i]
            if block_id != NULL_BLOCK:
                ref_counts[block_id] -= 1
                if ref_counts[block_id] == 0:
                    free[block_id] = None
                table[i] = NULL_BLOCK
        if num_blocks > self._num_dropped.get(request_id, 0):
            self._num_dropped[request_id] = min(num_blocks, len(table))

    def take_copies(self) -> list[tuple[int, int]]:
        """The copy-on-write (src, dst) block pairs queued since the last call, in
        order, and forget them. The runner applies them before the step's KV writes,
        in order or all at once (every src read before any dst is written)."""
        copies, self._copies = self._copies, []
        return copies

    def check_invariants(self) -> None:
        """Assert the bookkeeping invariants (module docstring). O(pool): for tests
        and debugging, never in the step loop."""
        holders = [0] * self.num_blocks
        for request_id, table in self._tables.items():
            held = [b for b in table if b != NULL_BLOCK]
            assert len(set(held)) == len(held), f"{request_id} holds a block twice: {table}"
            assert table[: len(table) - len(held)] == [NULL_BLOCK] * (len(table) - len(held)), \
                f"{request_id}: dropped blocks must lead its table: {table}"
            for block_id in held:
                holders[block_id] += 1
        assert len(self._free) == len(set(self._free)), "free queue has duplicates"
        for block_id in range(self.num_blocks):
            ref = self._ref_counts[block_id]
            assert ref == holders[block_id], f"block {block_id}: ref {ref} != {holders[block_id]} holders"
            assert (ref == 0) == (block_id in self._free), f"block {block_id}: ref {ref} vs free queue"
            block_hash = self._block_hash[block_id]
            if block_hash is not None:
                assert self._hash_to_block.get(block_hash) == block_id, f"block {block_id}: stale hash"
        for block_hash, block_id in self._hash_to_block.items():
            assert self._block_hash[block_id] == block_hash, f"hash map -> block {block_id} with another hash"
        assert self.num_free_blocks + sum(1 for h in holders if h) == self.num_blocks

    # ----------------------------------------------------------------- helpers

    def _pop_free(self) -> int:
        """Take the free queue's head, evicting its prefix-cache entry if any."""
        block_id, _ = self._free.popitem(last=False)
        block_hash = self._block_hash[block_id]
        if block_hash is not None:
            del self._hash_to_block[block_hash]
            self._block_hash[block_id] = None
        return block_id

    def _extend_hashes(self, request: Request, num_blocks: int) -> None:
        """Hash `request`'s full blocks up to `num_blocks` (incremental, chained)."""
        bs = self.block_size
        hashes, tokens = request.block_hashes, request.all_token_ids
        parent = hashes[-1] if hashes else _ROOT_HASH
        for i in range(len(hashes), num_blocks):
            parent = hash_block(parent, tokens[i * bs : (i + 1) * bs])
            hashes.append(parent)
