"""`CompiledSteps`: the engine step compiled ahead of time, once per `StepShape` bucket.

Steps are jitted with the KV pool donated and lowered against abstract arguments (shapes,
dtypes and shardings only), so compiling allocates nothing; compiles are counted
(`num_compiles`, `compile_seconds`) so a test can assert that serving compiled nothing new,
and `precompile` builds every plain bucket up front. The persistent compilation cache
(pagedjax/model_setup.py) makes a second start-up fast.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from pagedjax.model_step import input_layout, packed_size, sharded_copy_blocks, step_function
from pagedjax.sampler import SAMPLING_FIELDS, SamplingTensors
from pagedjax.step_shapes import StepBuckets, StepShape


class CompiledSteps:
    """The compiled steps (and block copies) of one runner.

    `pool_struct(num_blocks)` gives the pool's abstract `KVPool` (ShapeDtypeStructs with shardings);
    `num_blocks()` the allocated pool's size; `params` the parameter tree (for its abstract shapes).
    """

    def __init__(self, graphdef, params, *, backend: str, mesh, buckets: StepBuckets, carry_len: int,
                 host_sharding, pool_struct: Callable[[int], jax.ShapeDtypeStruct], num_blocks: Callable[[], int]):
        self._graphdef, self._backend, self._mesh = graphdef, backend, mesh
        self.buckets, self._carry_len, self._host_sharding = buckets, carry_len, host_sharding
        self._params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)
        self._pool_struct, self._num_blocks = pool_struct, num_blocks
        self._compiled: dict = {}
        self.num_compiles, self.compile_seconds = 0, 0.0

    def shape(self, num_tokens: int, num_seqs: int, max_blocks: int, decode_only: bool, **variant) -> StepShape:
        """The bucket of a step with `num_tokens` tokens and `num_seqs` sampler rows (`variant`:
        StepBuckets.shape's penalty_len, suppress_len, logprobs, prompt_logprobs, mask_width, bias_len)."""
        return self.buckets.shape(num_tokens, num_seqs, max_blocks, decode_only, **variant)

    def host_arg(self, dims: tuple, dtype) -> jax.ShapeDtypeStruct:
        """A step input sent from the host (replicated over the mesh, if any)."""
        return jax.ShapeDtypeStruct(dims, dtype, sharding=self._host_sharding)

    def abstract_args(self, shape: StepShape, pool: jax.ShapeDtypeStruct) -> tuple:  # noqa: D401
        """(params, pool, packed inputs, sampling, carry) of a step of `shape`, as ShapeDtypeStructs."""
        packed = self.host_arg((packed_size(input_layout(shape)),), jnp.int32)
        widths = {"suppress": shape.suppress_len, "penalty": shape.penalty_len, "mask": shape.mask_width,
                  "bias": shape.bias_len}
        sampling = SamplingTensors(**{
            f.name: self.host_arg((shape.num_seqs,) if f.metadata["width"] is None
                                  else (shape.num_seqs, widths[f.metadata["width"]]), f.metadata["dtype"])
            for f in SAMPLING_FIELDS})
        carry = self.host_arg((self._carry_len,), jnp.int32)
        return self._params, pool, packed, sampling, carry

    def compile(self, shape: StepShape, num_blocks: int):
        """Compiles (uncached) a step of `shape` against a pool of `num_blocks` blocks."""
        start = time.perf_counter()
        fn = step_function(self._graphdef, self._backend, self._mesh, shape, self._carry_len)
        compiled = jax.jit(fn, donate_argnums=(1,)).lower(
            *self.abstract_args(shape, self._pool_struct(num_blocks))).compile()
        self.num_compiles += 1
        self.compile_seconds += time.perf_counter() - start
        return compiled

    def get(self, shape: StepShape):
        """The compiled step for `shape` against the allocated pool (compiling it on first use)."""
        fn = self._compiled.get(shape)
        if fn is None:
            fn = self._compiled[shape] = self.compile(shape, self._num_blocks())
        return fn

    def block_copy(self, num_pairs: int):
        """The compiled copy-on-write of `num_pairs` (src, dst) block pairs (pool donated)."""
        key = ("copy", num_pairs)
        fn = self._compiled.get(key)
        if fn is None:
            spec = self.host_arg((num_pairs,), jnp.int32)
            copy = pk.copy_blocks if self._mesh is None else functools.partial(sharded_copy_blocks, self._mesh)
            fn = self._compiled[key] = jax.jit(copy, donate_argnums=(0,)).lower(
                self._pool_struct(self._num_blocks()), spec, spec).compile()
            self.num_compiles += 1
        return fn

    def all_plain_shapes(self) -> list[StepShape]:
        """Every plain-sampling bucket: what warm-up compiles."""
        return self.buckets.all_plain_shapes()

    def precompile(self, shapes: Sequence[StepShape] | None = None, progress=None) -> int:
        """Compiles the given buckets (default: all plain-sampling ones); returns how many were new.
        `progress(done, total)` is called after each."""
        shapes = list(shapes or self.all_plain_shapes())
        before = self.num_compiles
        for i, shape in enumerate(shapes):
            self.get(shape)
            if progress is not None:
                progress(i + 1, len(shapes))
        return self.num_compiles - before

    def memory(self, shape: StepShape) -> dict:
        """The compiled step's memory analysis: temporaries against the KV pool's size (both per
        device under tensor parallelism)."""
        analysis = self.get(shape).memory_analysis()
        pool_bytes = 0
        for leaf in jax.tree.leaves(self._pool_struct(self._num_blocks())):
            shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
            pool_bytes += int(jnp.dtype(leaf.dtype).itemsize * functools.reduce(lambda a, b: a * b, shard, 1))
        return dict(temp_bytes=int(analysis.temp_size_in_bytes), argument_bytes=int(analysis.argument_size_in_bytes),
                    kv_pool_bytes=pool_bytes)
