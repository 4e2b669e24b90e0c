"""One kernel configuration as abstract arguments, and its CUDA lowering on any machine.

`KernelConfig` names a kernel call the engine may make (kind, shapes, dtypes, pool format,
attention spec, tuning knobs) and builds the jitted function plus `jax.ShapeDtypeStruct`
arguments for it, so it can be lowered (`lower_for_cuda`: Pallas' Triton lowering runs on a
CPU-only machine and rejects non-power-of-two tiles and ops Triton cannot lower) or compiled
for sm_90 without a GPU (`pallas_kernels.deviceless.compile_for_target`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.attention_spec import AttentionSpec
from pallas_kernels.kv_pool import KVPoolLayout
from pallas_kernels.paged_attention import paged_attention_from_pool
from pallas_kernels.ragged_paged_attention import ragged_paged_attention_from_pool

KINDS = ("decode", "ragged")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """A kernel call: kind ("decode": `paged_attention_from_pool`, "ragged":
    `ragged_paged_attention_from_pool`), its static shapes and options."""

    kind: str
    num_seqs: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    max_blocks_per_seq: int
    num_tokens: int | None = None  # ragged: packed query tokens (default num_seqs)
    num_blocks: int | None = None  # default num_seqs * max_blocks_per_seq
    num_layers: int = 1
    layer: int = 0
    dtype: str = "bfloat16"  # q's (the model's) dtype
    kv_cache_dtype: str = "auto"  # vLLM's names (pallas_kernels.kv_pool)
    spec: AttentionSpec | None = None  # None: plain attention, default scale
    tuning: tuple[tuple[str, object], ...] = ()  # kernel knobs (block_kv, k_splits / block_q, ...)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.tuning, dict):
            object.__setattr__(self, "tuning", tuple(sorted(self.tuning.items())))

    @property
    def label(self) -> str:
        """A short id for test names and reports."""
        spec = self.spec
        feats = "" if spec is None else "".join(
            tag for tag, on in (("-win", spec.sliding_window), ("-cap", spec.logit_softcap),
                                ("-alibi", spec.use_alibi), ("-sink", spec.use_sinks)) if on)
        knobs = "".join(f"-{k}{v}" for k, v in self.tuning)
        return (f"{self.kind}-d{self.head_dim}-h{self.num_q_heads}x{self.num_kv_heads}-b{self.block_size}"
                f"-{jnp.dtype(self.dtype).name}-{self.kv_cache_dtype}{feats}{knobs}")

    def abstract_args(self, sharding=None) -> tuple:
        """(q, pool, block_tables, kv_lens[, query_start_loc][, alibi_slopes][, sinks]) as
        `jax.ShapeDtypeStruct`s, all on `sharding` (e.g. a deviceless target's device)."""
        sds = functools.partial(jax.ShapeDtypeStruct, sharding=sharding)
        num_blocks = self.num_blocks or self.num_seqs * self.max_blocks_per_seq
        num_tokens = self.num_seqs if self.kind == "decode" or self.num_tokens is None else self.num_tokens
        layout = KVPoolLayout.create(self.num_layers, self.num_kv_heads, self.block_size, self.head_dim,
                                     model_dtype=self.dtype, kv_cache_dtype=self.kv_cache_dtype)
        pool = jax.tree.map(lambda x: sds(x.shape, x.dtype), layout.abstract(num_blocks))
        args = [sds((num_tokens, self.num_q_heads, self.head_dim), jnp.dtype(self.dtype)), pool,
                sds((self.num_seqs, self.max_blocks_per_seq), jnp.int32), sds((self.num_seqs,), jnp.int32)]
        if self.kind == "ragged":
            args.append(sds((self.num_seqs + 1,), jnp.int32))
        spec = self.spec
        for used in (spec is not None and spec.use_alibi, spec is not None and spec.use_sinks):
            if used:
                args.append(sds((self.num_q_heads,), jnp.float32))
        return tuple(args)

    def function(self, *, interpret: bool = False):
        """The kernel call as a function of `abstract_args()`' arrays."""
        attention = paged_attention_from_pool if self.kind == "decode" else ragged_paged_attention_from_pool
        spec, layer, tuning = self.spec, self.layer, dict(self.tuning)
        num_metadata = 2 if self.kind == "decode" else 3
        uses = (spec is not None and spec.use_alibi, spec is not None and spec.use_sinks)

        def call(q, pool, *rest):
            metadata, extra = rest[:num_metadata], list(rest[num_metadata:])
            slopes = extra.pop(0) if uses[0] else None
            sinks = extra.pop(0) if uses[1] else None
            return attention(q, pool, layer, *metadata, spec=spec, alibi_slopes=slopes, sinks=sinks,
                             interpret=interpret, **tuning)

        return call


def lower_for_cuda(kind: str, *, num_seqs: int, num_q_heads: int, num_kv_heads: int,
                   head_dim: int, block_size: int, max_blocks_per_seq: int,
                   num_tokens: int | None = None, num_blocks: int | None = None,
                   num_layers: int = 1, layer: int = 0, dtype="bfloat16", kv_cache_dtype="auto",
                   spec: AttentionSpec | None = None, sm_scale=None, **tuning) -> jax.stages.Lowered:
    """Lowers one kernel configuration for CUDA (compiled mode) and returns the `Lowered`.

    Arguments as `KernelConfig` (`sm_scale` is shorthand for a plain spec; `tuning` goes to
    the kernel). Raises ValueError for an unsupported configuration, and whatever Pallas'
    Triton lowering raises for one it rejects.
    """
    if sm_scale is not None:
        if spec is not None:
            raise ValueError("pass either spec or sm_scale, not both")
        spec = AttentionSpec(sm_scale=sm_scale)
    config = KernelConfig(kind, num_seqs, num_q_heads, num_kv_heads, head_dim, block_size,
                          max_blocks_per_seq, num_tokens, num_blocks, num_layers, layer,
                          jnp.dtype(dtype).name, kv_cache_dtype, spec, tuple(sorted(tuning.items())))
    return jax.jit(config.function()).trace(*config.abstract_args()).lower(lowering_platforms=("cuda",))
