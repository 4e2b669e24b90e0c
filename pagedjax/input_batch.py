"""The runner's persistent request state and the host arrays of one step.

`CachedRequest` is what the runner knows of a request (vLLM v1's contract: sent once by the
scheduler, then kept up to date from per-step deltas and the runner's own samples).
`InputBatch` holds the rows of the step being prepared, in the scheduler's order, with
arrays that persist across steps (block tables, sampling columns): when the scheduled set is
unchanged (steady decoding) nothing is rebuilt; otherwise rows move with their requests.
`build_step_inputs` turns a scheduled step into the padded host arrays of its `StepShape`.

NOTE: this runs every step on the host; per-row Python work is kept to a few C-level
`zip`/`map` passes and numpy vectorisation.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from pagedjax.sampler import PENDING, REQUEST_COLUMNS, CompletionSampling, SamplingTensors
from pagedjax.step_shapes import StepBuckets, StepShape


@dataclasses.dataclass(eq=False)
class CachedRequest:
    """The runner's state of one request."""

    request_id: str
    tokens: list[int]  # known tokens: prompt, then outputs (the runner appends what it samples)
    num_prompt_tokens: int
    sampling: CompletionSampling
    block_ids: list[int]
    # (child id, its sampling) of requests forking at this one's first sample (n > 1)
    children: tuple[tuple[str, CompletionSampling], ...] = ()
    num_sampled: int = 0  # samples dispatched so far, in flight included (seeded streams' index)
    column_values: tuple = ()  # this request's value of each REQUEST_COLUMNS column

    def __post_init__(self):
        self.column_values = tuple(f.metadata["of"](self.sampling) for f in REQUEST_COLUMNS)
        self.num_sampled = len(self.tokens) - self.num_prompt_tokens

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.sampling.params.prompt_logprobs is not None


class InputBatch:
    """Rows of the current step (one per scheduled request) and their persistent arrays."""

    def __init__(self, capacity: int, max_blocks_per_seq: int):
        self.ids: tuple[str, ...] = ()
        self.row_of: dict[str, int] = {}
        self.tables = np.zeros((capacity, max_blocks_per_seq), np.int32)  # [rows, W] block tables
        self.columns = {f.name: np.full(capacity, f.metadata["fill"], f.metadata["dtype"]) for f in REQUEST_COLUMNS}
        self.version = 0  # bumps when the rows change (device copies of the columns go stale)

    def update(self, scheduled, states: list[CachedRequest]) -> None:
        """Makes the rows those of `scheduled` (its order), applying block-table deltas."""
        ids = tuple(s.request_id for s in scheduled)
        tables = self.tables
        if ids != self.ids:
            row_of = self.row_of
            prev = np.fromiter((row_of.get(i, -1) for i in ids), np.int64, len(ids))
            moved = prev >= 0
            n = len(ids)
            if moved.any():
                tables[:n][moved] = tables[prev[moved]]
                for column in self.columns.values():
                    column[:n][moved] = column[prev[moved]]
            for row in np.flatnonzero(~moved):
                state = states[row]
                tables[row, : len(state.block_ids)] = state.block_ids
                for column, value in zip(self.columns.values(), state.column_values):
                    column[row] = value
            self.ids, self.row_of = ids, {i: r for r, i in enumerate(ids)}
            self.version += 1
            fresh = ~moved
        else:
            fresh = None
        for row, s in enumerate(scheduled):
            if s.new_block_ids and (fresh is None or not fresh[row]):
                tables[row, s.block_ids_start: s.block_ids_start + len(s.new_block_ids)] = s.new_block_ids


@dataclasses.dataclass
class StepPlan:
    """A prepared step: its shape, host inputs, sampling tensors and who samples where."""

    shape: StepShape
    inputs: dict  # name -> host array (model_step.STEP_INPUTS)
    sampling: SamplingTensors | None  # None: the persistent columns (device copy reusable)
    sample_rows: list[int]  # sampler rows whose sample is kept, in order
    sample_ids: list[str]  # their request ids (fork children included)
    carry_rows: dict[str, int]  # request id -> its row in this step's carry (rows that sample)
    prompt_rows: list[tuple[str, int, int, int]]  # (request id, start position, tokens, packed offset)
    num_tokens: int


def build_step_inputs(buckets: StepBuckets, batch: InputBatch, scheduled, states: list[CachedRequest],
                      carry_rows: dict[str, int], carry_len: int, block_size: int) -> StepPlan:
    """The padded host arrays of one step (the batch already updated to `scheduled`)."""
    ids, nums, starts, _, _, samples = zip(*scheduled)
    num_seqs = len(ids)
    num_tokens = sum(nums)
    prompt_logprobs = any(st.wants_prompt_logprobs for st in states)
    decode_only = num_tokens == num_seqs and not prompt_logprobs
    # fork children sample from their parent's logits at its first sample: extra sampler rows
    forks = [(row, child) for row, (st, smp) in enumerate(zip(states, samples)) if smp and st.children
             for child in st.children]
    num_rows = num_seqs + len(forks)
    row_states = states + [None] * len(forks)
    penalties = any(st.sampling.uses_penalties for st in states) or any(c.uses_penalties for _, (_, c) in forks)
    row_sampling = [(st.sampling if st else forks[r - num_seqs][1][1]) for r, st in enumerate(row_states)]
    suppress_len = max((len(c.suppress_ids) for c in row_sampling if c.params.min_tokens), default=0)
    penalty_len = max((len(st.tokens) + 1 for st in states), default=1) if penalties else 0
    max_blocks = max(len(st.block_ids) for st in states)
    constrained = [c.constraint for c in row_sampling if c.constraint is not None]
    shape = buckets.shape(num_tokens, num_rows, max_blocks, decode_only, penalty_len=penalty_len,
                          suppress_len=suppress_len, logprobs=any(c.params.logprobs is not None for c in row_sampling),
                          prompt_logprobs=prompt_logprobs,
                          mask_width=-(-constrained[0].vocab_size // 32) if constrained else 0,
                          bias_len=max((len(c.params.logit_bias or ()) for c in row_sampling), default=0))
    t, s, w = shape.num_tokens, shape.num_seqs, shape.table_width

    pos0 = np.fromiter(starts, np.int64, num_seqs)
    lens = np.fromiter(nums, np.int64, num_seqs)
    known = [p < len(st.tokens) for st, p in zip(states, starts)]
    feed_index = np.full(s, -1, np.int32)
    fed_rows = [r for r, k in enumerate(known) if not k]
    for r in fed_rows:  # its first token is the previous step's sample, still on the device
        feed_index[r] = carry_rows[ids[r]]
    token_ids = np.zeros(t, np.int32)
    if decode_only:
        token_ids[:num_seqs] = [st.tokens[p] if k else 0 for st, p, k in zip(states, starts, known)]
        positions_used = pos0
        begin = np.arange(num_seqs)
    else:
        token_ids[:num_tokens] = np.fromiter(itertools.chain.from_iterable(
            st.tokens[p:p + n] if k else [0] for st, p, n, k in zip(states, starts, nums, known)), np.int32, num_tokens)
        begin = np.cumsum(lens) - lens  # [num_seqs] packed offset of each sequence
        seq_of_token = np.repeat(np.arange(num_seqs), lens)
        positions_used = pos0[seq_of_token] + np.arange(num_tokens) - begin[seq_of_token]
    seq_of_token = np.arange(num_seqs) if decode_only else np.repeat(np.arange(num_seqs), lens)
    positions = np.zeros(t, np.int32)
    positions[:num_tokens] = positions_used
    slot_mapping = np.full(t, -1, np.int32)
    slot_mapping[:num_tokens] = (batch.tables[seq_of_token, positions_used // block_size] * block_size
                                 + positions_used % block_size)
    block_tables = np.zeros((s, w), np.int32)
    block_tables[:num_seqs] = batch.tables[:num_seqs, :w]
    kv_lens = np.zeros(s, np.int32)
    kv_lens[:num_seqs] = pos0 + lens
    qsl = np.full(s + 1, num_tokens, np.int32)
    qsl[:num_seqs] = begin
    last_index = (begin + lens - 1).astype(np.int32)
    logits_indices = np.zeros(s, np.int32)
    logits_indices[:num_seqs] = last_index
    for k, (row, _) in enumerate(forks):
        logits_indices[num_seqs + k] = last_index[row]
    index = np.zeros(s, np.int32)  # fork rows: 0 (a child has drawn nothing)
    index[:num_seqs] = [st.num_sampled for st in states]
    inputs = dict(token_ids=token_ids, positions=positions, slot_mapping=slot_mapping, block_tables=block_tables,
                  kv_lens=kv_lens, query_start_loc=qsl, logits_indices=logits_indices, feed_index=feed_index,
                  sample_index=index)
    prompt_rows = []
    if prompt_logprobs:  # the token each packed position predicts: the next one of its sequence
        targets = np.zeros(t, np.int32)
        targets[: num_tokens - 1] = token_ids[1:num_tokens]
        for r, (st, p, n) in enumerate(zip(states, starts, nums)):
            end = p + n
            targets[last_index[r]] = st.tokens[end] if end < len(st.tokens) else 0
            if st.wants_prompt_logprobs and p + 1 < st.num_prompt_tokens:
                prompt_rows.append((ids[r], p, n, int(begin[r])))
        inputs["next_token_ids"] = targets

    sample_rows = [r for r, smp in enumerate(samples) if smp]
    sample_ids = [ids[r] for r in sample_rows]
    for k, (_, (child_id, _)) in enumerate(forks):
        sample_rows.append(num_seqs + k)
        sample_ids.append(child_id)
    new_carry = {ids[r]: r for r in sample_rows if r < min(num_seqs, carry_len)}
    plain = not forks and not shape.penalty_len and not shape.suppress_len and not shape.mask_width \
        and not shape.bias_len
    sampling = None if plain else _special_sampling(shape, batch, states, forks, fed_rows)
    return StepPlan(shape, inputs, sampling, sample_rows, sample_ids, new_carry, prompt_rows, num_tokens)


def columns_tensors(shape: StepShape, batch: InputBatch, num_seqs: int) -> SamplingTensors:
    """The plain step's sampling tensors: the batch's persistent columns, padded to S rows (its
    `sample_index` is a placeholder: the step takes it from its packed inputs)."""
    s = shape.num_seqs
    values = {}
    for f in dataclasses.fields(SamplingTensors):
        meta = f.metadata
        if meta["of"] is not None:
            col = np.full(s, meta["fill"], meta["dtype"])
            col[:num_seqs] = batch.columns[f.name][:num_seqs]
            values[f.name] = col
        elif meta["width"] is None:
            values[f.name] = np.zeros(s, meta["dtype"])
        else:
            values[f.name] = np.full((s, 0), meta["fill"], meta["dtype"])
    return SamplingTensors(**values)


def _special_sampling(shape: StepShape, batch: InputBatch, states, forks, fed_rows) -> SamplingTensors:
    """Sampling tensors of a step with fork rows, penalties or min_tokens (rare: built per step)."""
    num_seqs, s = len(states), shape.num_seqs
    tensors = columns_tensors(shape, batch, num_seqs)
    values = {f.name: getattr(tensors, f.name) for f in dataclasses.fields(tensors)}
    for k, (_, (_, child)) in enumerate(forks):
        row = num_seqs + k
        for f in REQUEST_COLUMNS:
            values[f.name][row] = f.metadata["of"](child)
    rows = [(st.sampling, st) for st in states] + [(child, None) for _, (_, child) in forks]
    if shape.suppress_len:
        suppress = np.full((s, shape.suppress_len), -1, np.int32)
        for r, (c, st) in enumerate(rows):
            generated = st.num_sampled if st is not None else 0
            # NOTE: a grammar decides when the output may end: min_tokens does not suppress its EOS
            if c.params.min_tokens and generated < c.params.min_tokens and c.params.structured_outputs is None:
                suppress[r, : len(c.suppress_ids)] = c.suppress_ids
        values["suppress_tokens"] = suppress
    if shape.mask_width:  # host side, per step: each constrained row's allowed tokens
        bitmask = np.full((s, shape.mask_width), -1, np.int32)
        for r, (c, st) in enumerate(rows):
            if c.constraint is not None:
                c.constraint.fill_bitmask(bitmask, r, st.tokens[st.num_prompt_tokens:] if st is not None else ())
        values["bitmask"] = bitmask
    if shape.bias_len:
        ids = np.full((s, shape.bias_len), -1, np.int32)
        biases = np.zeros((s, shape.bias_len), np.float32)
        for r, (c, _) in enumerate(rows):
            if c.params.logit_bias:
                ids[r, : len(c.params.logit_bias)] = list(c.params.logit_bias)
                biases[r, : len(c.params.logit_bias)] = list(c.params.logit_bias.values())
        values["bias_ids"], values["bias_values"] = ids, biases
    if shape.penalty_len:
        prompt = np.full((s, shape.penalty_len), -1, np.int32)
        output = np.full((s, shape.penalty_len), -1, np.int32)
        fed = set(fed_rows)
        for r, (c, st) in enumerate(rows):
            if not c.uses_penalties:
                continue
            source = st if st is not None else states[forks[r - num_seqs][0]]
            prompt_ids = source.tokens[: source.num_prompt_tokens]
            prompt[r, : len(prompt_ids)] = prompt_ids
            if st is not None:  # a fork child has generated nothing yet
                outs = st.tokens[st.num_prompt_tokens:] + ([PENDING] if r in fed else [])
                output[r, : len(outs)] = outs
        values["prompt_tokens"], values["output_tokens"] = prompt, output
    return SamplingTensors(**values)
