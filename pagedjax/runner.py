"""The model runner: executes `SchedulerOutput`s on the device (vLLM v1's runner contract).

It owns the parameters, the KV pool `[num_layers, 2, num_kv_heads, num_blocks, block_size,
head_dim]` (allocated once, donated to every step, written in place), the compiled steps (one
per `StepShape` bucket, compiled ahead of time and counted in `num_compiles`), the memory
profile that sizes the pool (`profile_num_blocks`), and a persistent input batch keyed by
request id: new requests arrive once, running ones as deltas, and the runner appends the
tokens it samples to its own copy of each request's tokens.

Compiled steps live in `self.steps` (pagedjax/compiled_steps.py).

`execute_model(output)` dispatches the step and returns a `StepHandle` at once; its
`result()` waits for the device and returns the `ModelRunnerOutput`. The engine may prepare
and dispatch the next step before asking for the previous one's result (asynchronous
scheduling): the next step's inputs that are the previous step's samples are fed on the device
(`carry`), with no host round trip.

Tensor parallelism (`mesh` given): parameters arrive sharded (models/sharding.py), the pool is
sharded on its kv-head axis, host inputs are replicated, and attention runs under `shard_map`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from models.config import ModelConfig
from models.sharding import TP_AXIS, kv_pool_sharding, pool_kv_heads, replicated
from pagedjax.config import DEFAULT_CPU_KV_CACHE_BYTES
from pagedjax.input_batch import CachedRequest, InputBatch, StepPlan, build_step_inputs, columns_tensors
from pagedjax.model_step import input_layout, pack_inputs
from pagedjax.compiled_steps import CompiledSteps
from pallas_kernels.kv_pool import KVPool, KVPoolLayout
from pagedjax.step_shapes import StepBuckets, pow2_at_least


def device_memory_stats(devices) -> list[dict | None]:
    """Each device's `memory_stats()` (None where the platform reports none, e.g. CPU)."""
    return [d.memory_stats() if hasattr(d, "memory_stats") else None for d in devices]


@dataclasses.dataclass
class ModelRunnerOutput:
    """Host-side results of one step.

    sampled: request id -> its sampled token, for every request that sampled (fork children
    included). index: request id -> its row in the arrays below.
    """

    sampled: dict[str, int]
    index: dict[str, int]
    logprobs: np.ndarray  # f32[R]: raw logprob of each sampled token
    ranks: np.ndarray  # i32[R]
    top_ids: np.ndarray | None  # i32[R, MAX_LOGPROBS] when some row asked for logprobs
    top_logprobs: np.ndarray | None  # f32[R, MAX_LOGPROBS]
    # request id -> (start position, top ids i32[n, K], top logprobs f32[n, K], the next token's
    # logprob f32[n], its rank i32[n]) for the n positions it computed (prompt logprobs)
    prompt: dict[str, tuple] = dataclasses.field(default_factory=dict)


class StepHandle:
    """A dispatched step; `result()` waits for it (once) and returns its ModelRunnerOutput."""

    def __init__(self, runner: "ModelRunner", plan: StepPlan, outs):
        self._runner, self._plan, self._outs = runner, plan, outs
        self._result: ModelRunnerOutput | None = None

    def result(self) -> ModelRunnerOutput:
        if self._result is None:
            self._result = self._runner._collect(self._plan, jax.device_get(self._outs))
            self._outs = None
        return self._result


class ModelRunner:
    """Owns the parameters, the KV pool and the compiled steps; executes `SchedulerOutput`s."""

    def __init__(self, graphdef, params, config: ModelConfig, *, block_size: int, max_model_len: int,
                 max_num_seqs: int, max_num_batched_tokens: int, backend: str, kv_dtype, seed: int = 0,
                 mesh: Mesh | None = None, num_blocks: int | None = None, kv_cache_dtype: str = "auto",
                 kv_scales: tuple | None = None):
        """`mesh`: the tensor-parallel mesh (`tp` axis) the parameters are sharded over; None = one
        device. `num_blocks`: allocate the KV pool now (else `profile_num_blocks`, then
        `allocate_kv_cache`). `kv_cache_dtype`: "auto" (the model dtype `kv_dtype`), "fp8",
        "fp8_e4m3", "fp8_e5m2" or "int8" (pallas_kernels/kv_pool.py); `kv_scales`: an fp8 pool's
        static (k_scale, v_scale), per layer or per layer and KV head (default 1.0, as vLLM)."""
        self.graphdef, self.params, self.config, self.mesh = graphdef, params, config, mesh
        self.block_size, self.backend, self.max_num_seqs = block_size, backend, max_num_seqs
        self.max_model_len = max_model_len
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.buckets = StepBuckets(max_num_seqs, max_num_batched_tokens, self.max_blocks_per_seq,
                                   full_width_tables=backend == "pallas")
        self.tp = 1 if mesh is None else mesh.shape[TP_AXIS]
        self.kv_layout = KVPoolLayout.create(config.num_layers, pool_kv_heads(config, self.tp), block_size,
                                             config.head_dim, model_dtype=kv_dtype, kv_cache_dtype=kv_cache_dtype)
        self._kv_scales = kv_scales
        self._host_sharding = None if mesh is None else replicated(mesh)
        self._seed = seed & 0xFFFFFFFF
        self.steps = CompiledSteps(graphdef, params, backend=backend, mesh=mesh, buckets=self.buckets,
                                   carry_len=max_num_seqs, host_sharding=self._host_sharding,
                                   pool_struct=self._pool_struct, num_blocks=lambda: self.num_blocks)
        self.profile: dict = {}
        self.num_blocks = 0
        self.kv_pool = None
        self.reset_state()
        if num_blocks is not None:
            self.allocate_kv_cache(num_blocks)

    # ----------------------------------------------------------------------------- state

    def reset_state(self) -> None:
        """Forgets every request (a fresh start: after a failed step, all requests come back new)."""
        self.requests: dict[str, CachedRequest] = {}
        self.batch = InputBatch(self.max_num_seqs, self.max_blocks_per_seq)
        self._carry = self._zeros_carry()
        self._carry_rows: dict[str, int] = {}
        self._sampling_cache: tuple = (None, None)  # ((batch version, S), device SamplingTensors)
        self._step_count = 0

    def reset_after_failure(self) -> None:
        """After a failed step: a fresh pool if the donated one was lost, and no request state."""
        if self.kv_pool is not None and self.kv_pool.is_deleted():
            self.kv_pool = self._new_pool(self.num_blocks)
        self.reset_state()

    def _to_device(self, tree):
        """A host pytree as device arrays (replicated over the mesh, if any)."""
        return jax.device_put(tree, self._host_sharding) if self._host_sharding is not None else jax.device_put(tree)

    def _zeros_carry(self):
        if self.mesh is None:
            return jnp.zeros((self.max_num_seqs,), jnp.int32)
        return jax.device_put(np.zeros(self.max_num_seqs, np.int32), self._host_sharding)

    # ----------------------------------------------------------------------------- memory

    def bytes_per_block(self) -> int:
        """One device's bytes of one KV block (its share of the kv heads under tensor parallelism),
        dequantization scales included."""
        return self.kv_layout.bytes_per_block // self.tp

    def profile_num_blocks(self, gpu_memory_utilization: float, kv_cache_memory_bytes: int | None) -> int:
        """KV blocks that fit: `kv_cache_memory_bytes` per device when given; else
        `gpu_memory_utilization` of the memory JAX may use, minus what is in use (the weights) and
        the largest step's temporaries (from its compiled memory analysis against a one-block
        pool; nothing is allocated for it). Devices that report no memory (CPU) get 1 GiB, and
        never more blocks than `max_num_seqs` full-length sequences need. The tightest device
        decides (over several hosts, the tightest host: every process builds the same pool)."""
        per_block = self.bytes_per_block()
        if kv_cache_memory_bytes is not None:
            return max(1, self.kv_layout.num_blocks_for_bytes(kv_cache_memory_bytes * self.tp))
        max_useful = self.max_blocks_per_seq * self.max_num_seqs
        devices = [jax.devices()[0]] if self.mesh is None else [
            d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        stats = device_memory_stats(devices)
        if not all(st and "bytes_limit" in st for st in stats):
            return max(1, min(self.kv_layout.num_blocks_for_bytes(DEFAULT_CPU_KV_CACHE_BYTES * self.tp), max_useful))
        largest = self.steps.shape(self.buckets.token_buckets[-1], 1, self.max_blocks_per_seq, False)
        compiled = self.steps.compile(largest, num_blocks=1)
        temp = int(compiled.memory_analysis().temp_size_in_bytes)  # per device for a partitioned step
        del compiled
        usable = [st["bytes_limit"] * gpu_memory_utilization - st["bytes_in_use"] for st in stats]
        tightest = stats[int(np.argmin(usable))]
        self.profile = dict(bytes_limit=tightest["bytes_limit"], bytes_in_use=tightest["bytes_in_use"],
                            step_temp_bytes=temp, bytes_per_block=per_block)
        num_blocks = max(0, min(int((min(usable) - temp) // per_block), max_useful))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            num_blocks = int(np.min(multihost_utils.process_allgather(np.int64(num_blocks))))
        return num_blocks

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Allocates the zeroed KV pool of `num_blocks` blocks (once)."""
        if self.kv_pool is not None:
            raise RuntimeError("the KV pool is already allocated")
        self.num_blocks = num_blocks
        self.kv_pool = self._new_pool(num_blocks)

    def _new_pool(self, num_blocks: int) -> KVPool:
        """A zeroed pool (with tp: the kv-head axis sharded, created in place on each device)."""
        pool = self.kv_layout.allocate(num_blocks, None if self.mesh is None else kv_pool_sharding(self.mesh))
        if self._kv_scales is not None:
            pool = pool.with_scales(*self._kv_scales)
        return pool

    def _pool_struct(self, num_blocks: int) -> KVPool:
        return self.kv_layout.abstract(num_blocks, None if self.mesh is None else kv_pool_sharding(self.mesh))

    # ----------------------------------------------------------------------------- execution

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Applies copy-on-write block copies (src, dst) to the pool."""
        if not pairs:
            return
        n = pow2_at_least(len(pairs), 4)
        src, dst = np.zeros(n, np.int32), np.zeros(n, np.int32)
        src[: len(pairs)], dst[: len(pairs)] = zip(*pairs)
        # Padding pairs copy block src[0] onto dst[0] again: idempotent.
        src[len(pairs):], dst[len(pairs):] = src[0], dst[0]
        self.kv_pool = self.steps.block_copy(n)(self.kv_pool, src, dst)

    def execute_model(self, output) -> StepHandle:
        """Applies a SchedulerOutput to the runner's state and dispatches its step."""
        requests = self.requests
        for request_id in output.finished_request_ids + output.preempted_request_ids:
            requests.pop(request_id, None)
        for new in output.new_requests:
            requests[new.request_id] = CachedRequest(new.request_id, list(new.token_ids), new.num_prompt_tokens,
                                                     new.sampling_params, [], children=new.fork_children)
        scheduled = output.scheduled
        states = [requests[s.request_id] for s in scheduled]
        for s, state in zip(scheduled, states):
            if s.new_block_ids:
                state.block_ids[s.block_ids_start:] = s.new_block_ids
        self.batch.update(scheduled, states)
        self.copy_blocks(output.blocks_to_copy)
        plan = build_step_inputs(self.buckets, self.batch, scheduled, states, self._carry_rows, self.max_num_seqs,
                                 self.block_size)
        sampling = plan.sampling
        if sampling is None:  # the persistent columns: on the device already unless the rows changed
            key = (self.batch.version, plan.shape.num_seqs)
            if self._sampling_cache[0] != key:
                self._sampling_cache = (key, self._to_device(columns_tensors(plan.shape, self.batch, len(states))))
            sampling = self._sampling_cache[1]
        fn = self.steps.get(plan.shape)
        plan.inputs["rng"] = np.array([self._seed, self._step_count & 0xFFFFFFFF], np.uint32).view(np.int32)
        self._step_count += 1
        packed = pack_inputs(input_layout(plan.shape), plan.inputs)
        self.kv_pool, self._carry, outs = fn(self.params, self.kv_pool, packed, sampling, self._carry)
        for s, state in zip(scheduled, states):
            if s.sample:
                state.num_sampled += 1
                state.children = ()  # sampled in this step
        self._carry_rows = plan.carry_rows
        for leaf in jax.tree.leaves(outs):
            leaf.copy_to_host_async()
        return StepHandle(self, plan, outs)

    def _collect(self, plan: StepPlan, outs) -> ModelRunnerOutput:
        """Host results of a finished step; appends each sample to its request's tokens."""
        token_ids, logprobs, ranks, top_ids, top_lp = outs[:5]
        rows = plan.sample_rows
        tokens = token_ids[rows].tolist()
        sampled = dict(zip(plan.sample_ids, tokens))
        requests = self.requests
        for request_id, token in sampled.items():
            state = requests.get(request_id)
            if state is not None:  # (fork children are not runner requests yet)
                state.tokens.append(token)
        top = plan.shape.num_logprobs > 0
        result = ModelRunnerOutput(
            sampled=sampled, index={rid: i for i, rid in enumerate(plan.sample_ids)}, logprobs=logprobs[rows],
            ranks=ranks[rows], top_ids=top_ids[rows] if top else None, top_logprobs=top_lp[rows] if top else None)
        if plan.shape.prompt_logprobs:
            p_ids, p_lp, p_target, p_rank = outs[5]
            for request_id, start, n, offset in plan.prompt_rows:
                span = slice(offset, offset + n)
                result.prompt[request_id] = (start, p_ids[span], p_lp[span], p_target[span], p_rank[span])
        return result
