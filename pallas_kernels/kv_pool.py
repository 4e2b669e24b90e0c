"""The paged KV pool as a pytree: blocks in a storage dtype, plus the scales that dequantize them.

`kv_cache_dtype` (vLLM's option and names) picks the storage:

  =============  ====================  ==========================================================
  name           data dtype            scales
  =============  ====================  ==========================================================
  "auto"         the model's dtype     none (`KVPool.scales is None`: exactly today's pool)
  "fp8"          float8_e4m3fn         static, per layer and KV head: f32[L, 2, Hkv] (K, V),
  "fp8_e4m3"                           default 1.0 (vLLM), or the checkpoint's `k_scale` /
  "fp8_e5m2"     float8_e5m2           `v_scale` (`KVPool.with_scales`)
  "int8"         int8                  dynamic, per token and KV head, computed on write:
                                       bf16[L, 2, Hkv, num_blocks, block_size]
  =============  ====================  ==========================================================

A stored element is `x / scale` (saturated to the format's range; int8 rounds to nearest), and
reads dequantize `stored * scale` inside the kernels' tile loop. int8 scales are
`max |x| / 127` over the head dim of one token and head, rounded to bfloat16 before use, so
quantization and dequantization agree exactly on the scale.

Layout: `data [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]` (index 0 of axis
1 = K) and every scale array share axis 2 = KV heads: tensor parallelism shards one
PartitionSpec `P(None, None, "tp")` over all of them, and a block copy moves its scales too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "int8")
_STORAGE = {
    "fp8": jnp.dtype(jnp.float8_e4m3fn),
    "fp8_e4m3": jnp.dtype(jnp.float8_e4m3fn),
    "fp8_e5m2": jnp.dtype(jnp.float8_e5m2),
    "int8": jnp.dtype(jnp.int8),
}
FP8_DTYPES = (jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float8_e5m2))
INT8_SCALE_DTYPE = jnp.dtype(jnp.bfloat16)  # range of f32, half the bytes (see module doc)
FP8_SCALE_DTYPE = jnp.dtype(jnp.float32)
INT8_MAX = 127

# Scale granularity of a storage dtype.
NO_SCALES, PER_HEAD, PER_TOKEN = "none", "per_head", "per_token"


def scale_kind(storage_dtype) -> str:
    """How a pool stored in `storage_dtype` is scaled: NO_SCALES, PER_HEAD (fp8), PER_TOKEN (int8)."""
    dtype = jnp.dtype(storage_dtype)
    if dtype in FP8_DTYPES:
        return PER_HEAD
    if dtype == jnp.int8:
        return PER_TOKEN
    return NO_SCALES


def storage_dtype(kv_cache_dtype: str, model_dtype) -> jnp.dtype:
    """The pool's data dtype for a vLLM `kv_cache_dtype` name ("auto" = the model's dtype)."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")
    if kv_cache_dtype == "auto":
        return jnp.dtype(model_dtype)
    return _STORAGE[kv_cache_dtype]


@dataclasses.dataclass(frozen=True)
class KVPoolLayout:
    """The static shape of a pool, without its block count: what sizing and allocation need.

    `num_kv_heads` is the heads the pool holds (under tensor parallelism with replicated KV
    heads, more than the model has). `dtype` is the storage dtype (`storage_dtype(...)`).
    """

    num_layers: int
    num_kv_heads: int
    block_size: int
    head_dim: int
    dtype: jnp.dtype

    def __post_init__(self):
        for name in ("num_layers", "num_kv_heads", "block_size", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"KVPoolLayout.{name} must be an int >= 1, got {value!r}")
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        allowed = (jnp.float32, jnp.bfloat16, jnp.float16, *FP8_DTYPES, jnp.int8)
        if self.dtype not in [jnp.dtype(d) for d in allowed]:
            raise ValueError(f"dtype {self.dtype} is not supported as KV storage (float32, bfloat16,"
                             " float16, float8_e4m3fn, float8_e5m2, int8)")

    @classmethod
    def create(cls, num_layers: int, num_kv_heads: int, block_size: int, head_dim: int, *,
               model_dtype, kv_cache_dtype: str = "auto") -> "KVPoolLayout":
        """The layout for a model dtype and a vLLM `kv_cache_dtype` name."""
        return cls(num_layers, num_kv_heads, block_size, head_dim,
                   storage_dtype(kv_cache_dtype, model_dtype))

    @property
    def scale_kind(self) -> str:
        return scale_kind(self.dtype)

    def data_shape(self, num_blocks: int) -> tuple[int, ...]:
        return (self.num_layers, 2, self.num_kv_heads, num_blocks, self.block_size, self.head_dim)

    def scale_shape(self, num_blocks: int) -> tuple[int, ...] | None:
        """f32[L, 2, Hkv] (fp8), bf16[L, 2, Hkv, num_blocks, block_size] (int8), None (auto)."""
        if self.scale_kind == PER_HEAD:
            return (self.num_layers, 2, self.num_kv_heads)
        if self.scale_kind == PER_TOKEN:
            return (self.num_layers, 2, self.num_kv_heads, num_blocks, self.block_size)
        return None

    @property
    def scale_dtype(self) -> jnp.dtype | None:
        return {PER_HEAD: FP8_SCALE_DTYPE, PER_TOKEN: INT8_SCALE_DTYPE}.get(self.scale_kind)

    @property
    def bytes_per_block(self) -> int:
        """Device bytes one block adds to the pool: K and V of every layer and head, scales included."""
        per_token_head = self.head_dim * self.dtype.itemsize
        if self.scale_kind == PER_TOKEN:
            per_token_head += INT8_SCALE_DTYPE.itemsize
        return self.num_layers * 2 * self.num_kv_heads * self.block_size * per_token_head

    @property
    def fixed_bytes(self) -> int:
        """Bytes independent of the block count (the static fp8 scales)."""
        if self.scale_kind == PER_HEAD:
            return self.num_layers * 2 * self.num_kv_heads * FP8_SCALE_DTYPE.itemsize
        return 0

    def num_blocks_for_bytes(self, budget_bytes: int) -> int:
        """The most blocks a pool of this layout can have within `budget_bytes` (may be 0)."""
        return max(0, (int(budget_bytes) - self.fixed_bytes) // self.bytes_per_block)

    def abstract(self, num_blocks: int, sharding: NamedSharding | None = None) -> "KVPool":
        """A `KVPool` of `jax.ShapeDtypeStruct`s (for `jit(...).lower`), sharded like `allocate`."""
        data_sharding, scale_sharding = self._shardings(num_blocks, sharding)
        data = jax.ShapeDtypeStruct(self.data_shape(num_blocks), self.dtype, sharding=data_sharding)
        shape = self.scale_shape(num_blocks)
        scales = None if shape is None else jax.ShapeDtypeStruct(shape, self.scale_dtype,
                                                                 sharding=scale_sharding)
        return KVPool(data, scales)

    def allocate(self, num_blocks: int, sharding: NamedSharding | None = None) -> "KVPool":
        """A zeroed pool (fp8 scales 1.0, int8 scales 0), created in place on its devices.

        sharding: the data's `NamedSharding`, normally `P(None, None, "tp")` (KV heads split);
        the scales get the same PartitionSpec over their fewer axes. None: the default device.
        """
        if not isinstance(num_blocks, (int, np.integer)) or num_blocks < 1:
            raise ValueError(f"num_blocks must be an int >= 1, got {num_blocks!r}")
        data_shape, scale_shape = self.data_shape(num_blocks), self.scale_shape(num_blocks)
        dtype, scale_dtype = self.dtype, self.scale_dtype
        fill = 1.0 if self.scale_kind == PER_HEAD else 0.0

        def zeros():
            scales = None if scale_shape is None else jnp.full(scale_shape, fill, scale_dtype)
            return KVPool(jnp.zeros(data_shape, dtype), scales)

        if sharding is None:
            return jax.jit(zeros)()
        data_sharding, scale_sharding = self._shardings(num_blocks, sharding)
        out = KVPool(data_sharding, None if scale_shape is None else scale_sharding)
        return jax.jit(zeros, out_shardings=out)()

    def _shardings(self, num_blocks, sharding):
        if sharding is None:
            return None, None
        if not isinstance(sharding, NamedSharding):
            raise ValueError(f"sharding must be a NamedSharding, got {type(sharding).__name__}")
        spec = tuple(sharding.spec)
        if any(spec[i] is not None for i in range(len(spec)) if i != 2):
            raise ValueError(f"the KV pool may only be sharded on its kv-head axis (2), got {sharding.spec}")
        shape = self.scale_shape(num_blocks)
        scale_spec = PartitionSpec(*spec[: len(shape)]) if shape is not None else None
        return sharding, None if shape is None else NamedSharding(sharding.mesh, scale_spec)


@dataclasses.dataclass(frozen=True)
class LayerKV:
    """One layer of a pool, as the per-layer kernels and references take it."""

    k_pages: jax.Array  # [num_kv_heads, num_blocks, block_size, head_dim] (storage dtype)
    v_pages: jax.Array  # [num_kv_heads, num_blocks, block_size, head_dim]
    k_scales: jax.Array | None  # f32[Hkv] (fp8), bf16[Hkv, num_blocks, block_size] (int8), None
    v_scales: jax.Array | None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVPool:
    """The engine's KV pool: one array for every layer plus its dequantization scales.

    A pytree (jit donates, shards and abstracts it like an array). The storage dtype of `data`
    says how it is scaled (`scale_kind`); `KVPoolLayout.allocate` makes one. Every pallas_kernels
    entry point that takes a pool also takes a bare data array, read as an "auto" pool.
    """

    data: jax.Array  # [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]
    scales: jax.Array | None = None  # see the module docstring; None for an "auto" pool

    def __post_init__(self):
        data, scales = self.data, self.scales
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            return  # a pytree transform (vmap, tree.map over shardings) put other leaves here
        if len(data.shape) != 6 or data.shape[1] != 2:
            raise ValueError("kv_pool must be [num_layers, 2, num_kv_heads, num_blocks, block_size,"
                             f" head_dim] (KVPool.data), got shape {tuple(data.shape)}")
        layout = self.layout
        expected = layout.scale_shape(data.shape[3])
        if expected is None:
            if scales is not None:
                raise ValueError(f"a {layout.dtype} KV pool has no scales, got {getattr(scales, 'shape', scales)}")
            return
        if scales is None:
            raise ValueError(f"a {layout.dtype} KV pool needs scales {layout.scale_dtype}{list(expected)}"
                             " (pass the KVPool, not its bare data array)")
        if hasattr(scales, "shape") and (tuple(scales.shape) != expected
                                         or jnp.dtype(scales.dtype) != layout.scale_dtype):
            raise ValueError(f"a {layout.dtype} KV pool needs scales {layout.scale_dtype}{list(expected)},"
                             f" got {scales.dtype}{list(scales.shape)}")

    @classmethod
    def wrap(cls, pool) -> "KVPool":
        """`pool` itself, or a bare data array read as an "auto" pool."""
        return pool if isinstance(pool, KVPool) else cls(pool)

    @property
    def layout(self) -> KVPoolLayout:
        num_layers, _, num_kv_heads, _, block_size, head_dim = self.data.shape
        return KVPoolLayout(num_layers, num_kv_heads, block_size, head_dim, self.data.dtype)

    @property
    def scale_kind(self) -> str:
        return scale_kind(self.data.dtype)

    @property
    def num_layers(self) -> int:
        return self.data.shape[0]

    @property
    def num_blocks(self) -> int:
        return self.data.shape[3]

    def layer(self, layer: int) -> LayerKV:
        """Layer `layer`'s pages and scales (slices: inside jit, XLA fuses them into their use)."""
        k_scales = v_scales = None
        if self.scales is not None:
            k_scales, v_scales = self.scales[layer, 0], self.scales[layer, 1]
        return LayerKV(self.data[layer, 0], self.data[layer, 1], k_scales, v_scales)

    def nbytes_per_device(self) -> int:
        """Bytes of the pool (data and scales) on one device: its first addressable shard."""
        leaves = [self.data] + ([] if self.scales is None else [self.scales])
        return sum(int(x.addressable_shards[0].data.nbytes) for x in leaves)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes) + (0 if self.scales is None else int(self.scales.nbytes))

    def is_deleted(self) -> bool:
        return self.data.is_deleted()

    def delete(self) -> None:
        """Frees the device buffers now (the pool is unusable afterwards)."""
        for x in (self.data, self.scales):
            if x is not None and not x.is_deleted():
                x.delete()

    def abstract(self) -> "KVPool":
        """This pool as `jax.ShapeDtypeStruct`s with its shardings (for `jit(...).lower`)."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self)

    def with_scales(self, k_scale, v_scale) -> "KVPool":
        """An fp8 pool with static scales (a checkpoint's `k_scale` / `v_scale`).

        k_scale, v_scale: a scalar, f32[num_layers] (per layer, vLLM's usual checkpoint) or
        f32[num_layers, n] (per KV head; n = the model's KV heads, each repeated over the pool's
        copies when the pool holds more). Values must be finite and > 0. Set them before any
        write: stored values are not rescaled.
        """
        if self.scale_kind != PER_HEAD:
            raise ValueError(f"static k_scale / v_scale apply to fp8 pools, this one is {self.data.dtype}")
        scales = jnp.stack([self._expand_scale("k_scale", k_scale),
                            self._expand_scale("v_scale", v_scale)], axis=1)  # [L, 2, Hkv]
        if self.scales is not None and hasattr(self.scales, "sharding"):
            scales = jax.device_put(scales, self.scales.sharding)
        return KVPool(self.data, scales)

    def _expand_scale(self, name: str, value) -> jax.Array:
        num_layers, heads = self.num_layers, self.data.shape[2]
        arr = np.asarray(value, np.float32)
        if arr.ndim == 0:
            arr = np.full((num_layers,), arr)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] != num_layers or heads % arr.shape[1]:
            raise ValueError(f"{name} must be a scalar, f32[num_layers] or f32[num_layers, kv_heads]"
                             f" ({num_layers} layers, kv_heads dividing {heads}), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
            raise ValueError(f"{name} values must be finite and > 0")
        return jnp.asarray(np.repeat(arr, heads // arr.shape[1], axis=1))  # f32[L, Hkv]

    def copy_blocks(self, src, dst) -> "KVPool":
        """pool[:, :, :, dst] = pool[:, :, :, src] for data and per-token scales (copy-on-write).

        src, dst: i32[n]. In place when the pool is donated to the enclosing jit. Duplicate
        (src, dst) pairs are harmless; two different sources for one dst are undefined.
        """
        data = self.data.at[:, :, :, dst].set(self.data[:, :, :, src])
        scales = self.scales
        if self.scale_kind == PER_TOKEN:
            scales = scales.at[:, :, :, dst].set(scales[:, :, :, src])
        return KVPool(data, scales)
