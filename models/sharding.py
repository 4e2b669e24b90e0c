"""Tensor parallelism: the device mesh, per-architecture partition rules, and `shard_map`.

A run with `tensor_parallel_size = N` uses a 1-D `jax.sharding.Mesh` of the first N devices
of `jax.devices()` with one axis, `tp`. Parameters get `NamedSharding`s from the partition
rules below (Megatron layout); the rest of the forward pass is left to XLA's SPMD partitioner
(GSPMD), which inserts the all-reduce after each row-parallel layer. Attention runs under
`shard_map` over `tp` (models/attention.py): each device writes and attends over its own KV
heads with the unmodified kernels.

Partition rules (weights are stored `[in, out]`, as `nnx.Linear` kernels; every family's fused
checkpoint tensors are split at load, so one table serves them all — models/architecture.py):

  =====================================  =============  ================================
  parameter                              layout         spec
  =====================================  =============  ================================
  q_proj, gate_proj, up_proj kernel      column         P(None, tp); bias P(tp)
  k_proj, v_proj kernel                  column (KV)    P(None, tp); bias P(tp)
                                                        replicated when N > num_kv_heads
  o_proj, down_proj kernel               row            P(tp, None); bias replicated
  embed_tokens embedding [vocab, hidden] vocab          P(tp, None)
  lm_head kernel [hidden, vocab]         vocab          P(None, tp); bias P(tp)
  norms (incl. q_norm / k_norm)          replicated     P()
  embed_positions, project_in/out        replicated     P()
  =====================================  =============  ================================

  KV pool `[num_layers, 2, pool_kv_heads, num_blocks, block_size, head_dim]`: P(None, None, tp).

Mixtures of experts (models/blocks/moe.py; rules in architecture.MOE_RULES). Experts' kernels
are stacked `[E, in, out]` (biases `[E, out]`) and split one of two ways:

  =====================================  ==============================  ======================
  parameter                              tensor parallel inside experts  expert parallel
  =====================================  ==============================  ======================
  experts.gate_proj / up_proj kernel     P(None, None, tp)               P(tp, None, None)
  experts.gate_proj / up_proj bias       P(None, tp)                     P(tp, None)
  experts.down_proj kernel               P(None, tp, None)               P(tp, None, None)
  experts.down_proj bias, router         replicated                      replicated
  shared_expert (Qwen2-MoE)              column / row, like an MLP       column / row
  self_attn.sinks [Hq] (GPT-OSS)         P(tp), like the heads           P(tp)
  =====================================  ==============================  ======================

  Expert parallelism (`enable_expert_parallel`, vLLM's name) is `ModelConfig.moe.expert_parallel`:
  device d holds experts [d * E/N, (d + 1) * E/N) whole. Either way every device routes every
  token (activations are replicated between layers), computes the (token, expert) pairs of its
  share and the partial outputs are summed over the mesh: one all-reduce per MoE layer, the same
  as a dense row-parallel MLP (vLLM's "naive" dispatch without all-to-all).

  The logits come out vocab-parallel and GSPMD partitions the sampler over the vocabulary
  (all-reduced max/sum, a distributed sort for top-p); a step's results are then constrained
  to be replicated, so every device (and host) holds them whole.

What N must divide (`check_tensor_parallel` raises a ValueError naming the number):
  * num_attention_heads and intermediate_size (column/row-parallel splits);
  * a MoE's expert intermediate size (tensor parallel) or its number of experts (expert
    parallel), and a shared expert's intermediate size; intermediate_size only when some layer is dense;
  * num_kv_heads, or else N must be a multiple of num_kv_heads: then each KV head is
    replicated N / num_kv_heads times (vLLM's scheme). The k/v projections stay replicated
    (every device computes all KV heads: they are a small part of the FLOPs) and the pool holds
    `pool_kv_heads = N` heads, device d keeping a copy of KV head d // (N / num_kv_heads),
    the one its query heads read.
  * vocab_size need not divide: when it does not, the embedding and LM head are replicated
    instead of vocab-parallel (a logged warning says so). Llama 3 (128256), Qwen2.5 (152064),
    Qwen3 (151936) and Mistral (32768) vocabularies divide by 2, 4 and 8.

Multi-host: nothing here is single-host. Start one process per host with the same command
and call `jax.distributed.initialize()` first (coordinator address, process count and id come
from the arguments, or from the cluster environment: SLURM, Open MPI, Cloud TPU, ...); after
it, `jax.devices()` lists every host's devices, so `make_mesh` spans hosts, weights are read
shard by shard (each process reads only the slices its own devices hold) and the engine's
host loop runs the same schedule on every process. See docs/multihost.md.
"""

from __future__ import annotations

import inspect
import logging
import re
import types
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models.architecture import (
    COLUMN, COLUMN_KV, EXPERT_COLUMN, EXPERT_ROW, HEADS, REPLICATED, ROW, VOCAB_EMBED, VOCAB_HEAD)
from models.config import ModelConfig
from models.registry import ARCHITECTURES

logger = logging.getLogger("pagedjax")

TP_AXIS = "tp"

# --------------------------------------------------------------------------- jax versions

try:  # newer jax (0.10 and 0.11 included): `jax.shard_map`, with `check_vma`
    from jax import shard_map as _shard_map
except ImportError:  # pragma: no cover - older jax: jax.experimental, with `check_rep`
    from jax.experimental.shard_map import shard_map as _shard_map

_CHECK_KWARG = "check_vma" if "check_vma" in inspect.signature(_shard_map).parameters else "check_rep"


def shard_map(fn: Callable, mesh: Mesh, in_specs, out_specs) -> Callable:
    """`jax.shard_map` over `mesh` without replication checks (Pallas calls carry no
    replication rules); the one place that knows where shard_map lives in this jax."""
    return _shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **{_CHECK_KWARG: False})


# --------------------------------------------------------------------------- mesh + checks


def make_mesh(tensor_parallel_size: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh (`tp`) over the first `tensor_parallel_size` of `devices` (default: `jax.devices()`,
    every process's devices once `jax.distributed.initialize()` has run)."""
    devices = list(jax.devices() if devices is None else devices)
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if tensor_parallel_size > len(devices):
        platform = devices[0].platform if devices else "none"
        hint = (" (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before jax starts)"
                if platform == "cpu" else "")
        raise ValueError(f"tensor_parallel_size ({tensor_parallel_size}) is larger than the number of "
                         f"devices ({len(devices)} {platform} devices){hint}")
    return Mesh(np.asarray(devices[:tensor_parallel_size]), (TP_AXIS,))


def check_tensor_parallel(cfg: ModelConfig, tp: int) -> None:
    """ValueError unless `cfg` can be split `tp` ways (see the module docstring)."""
    if tp < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tp}")
    if cfg.num_heads % tp:
        raise ValueError(f"tensor_parallel_size ({tp}) must divide num_attention_heads ({cfg.num_heads})")
    if cfg.num_kv_heads % tp and tp % cfg.num_kv_heads:
        raise ValueError(f"tensor_parallel_size ({tp}) must divide num_key_value_heads ({cfg.num_kv_heads}) "
                         f"or be a multiple of it (KV heads are then replicated)")
    has_dense_layer = any(not cfg.is_moe_layer(i) for i in range(cfg.num_layers))
    if has_dense_layer and cfg.intermediate_size % tp:
        raise ValueError(f"tensor_parallel_size ({tp}) must divide intermediate_size ({cfg.intermediate_size})")
    moe = cfg.moe
    if moe is None:
        return
    if moe.expert_parallel and moe.num_experts % tp:
        raise ValueError(f"with expert parallelism, tensor_parallel_size ({tp}) must divide num_experts "
                         f"({moe.num_experts})")
    if not moe.expert_parallel and moe.intermediate_size % tp:
        raise ValueError(f"tensor_parallel_size ({tp}) must divide the experts' intermediate size "
                         f"({moe.intermediate_size}); or enable expert parallelism")
    if moe.shared_expert_intermediate_size % tp:
        raise ValueError(f"tensor_parallel_size ({tp}) must divide shared_expert_intermediate_size "
                         f"({moe.shared_expert_intermediate_size})")


def pool_kv_heads(cfg: ModelConfig, tp: int) -> int:
    """KV heads the pool holds: num_kv_heads, or `tp` when KV heads are replicated."""
    return max(cfg.num_kv_heads, tp)


# --------------------------------------------------------------------------- partition rules

# The rules live in each family's `Architecture.partition_rules` (models/architecture.py's
# STANDARD_RULES unless a family says otherwise); this is a read-only view by architecture name.
PARTITION_RULES: Mapping[str, tuple[tuple[str, str], ...]] = types.MappingProxyType(
    {name: arch.partition_rules for name, arch in ARCHITECTURES.items()})


def layout_of(architecture: str, path: tuple) -> str:
    """The layout (COLUMN, ROW, ...) of the parameter at `path` (an nnx state path)."""
    rules = PARTITION_RULES.get(architecture)
    if rules is None:
        raise ValueError(f"no tensor-parallel partition rules for {architecture!r} "
                         f"(have: {', '.join(sorted(PARTITION_RULES))})")
    name = ".".join(str(p) for p in path)
    for pattern, layout in rules:
        if re.search(pattern + "$", name):
            return layout
    raise ValueError(f"no partition rule matches parameter {name!r} of {architecture}")


def expert_spec(layout: str, leaf: str, expert_parallel: bool) -> P:
    """The PartitionSpec of a stacked expert kernel `[E, in, out]` or bias `[E, out]`."""
    if expert_parallel:
        return P(TP_AXIS, None) if leaf == "bias" else P(TP_AXIS, None, None)
    if layout == EXPERT_COLUMN:
        return P(None, TP_AXIS) if leaf == "bias" else P(None, None, TP_AXIS)
    if layout == EXPERT_ROW and leaf == "kernel":
        return P(None, TP_AXIS, None)
    raise ValueError(f"no expert partition for layout {layout!r} of a {leaf!r}")


def _spec(layout: str, leaf: str, cfg: ModelConfig, tp: int) -> P:
    replicate_kv = cfg.num_kv_heads % tp != 0
    shard_vocab = cfg.vocab_size % tp == 0
    if layout == REPLICATED or (layout == COLUMN_KV and replicate_kv):
        return P()
    if layout in (EXPERT_COLUMN, EXPERT_ROW):
        if cfg.moe is None:
            raise ValueError(f"{cfg.architecture} has no experts for layout {layout!r}")
        return expert_spec(layout, leaf, cfg.moe.expert_parallel)
    if layout == HEADS:  # [Hq]
        return P(TP_AXIS)
    if layout in (COLUMN, COLUMN_KV):  # kernel [in, out] or bias [out]: the output dim
        return P(TP_AXIS) if leaf == "bias" else P(None, TP_AXIS)
    if layout == ROW:  # kernel [in, out]: the input dim
        return P(TP_AXIS, None)
    if layout == VOCAB_EMBED:  # [vocab, hidden]
        return P(TP_AXIS, None) if shard_vocab else P()
    if layout == VOCAB_HEAD:  # kernel [hidden, vocab] or bias [vocab]
        if not shard_vocab:
            return P()
        return P(TP_AXIS) if leaf == "bias" else P(None, TP_AXIS)
    raise ValueError(f"unknown layout {layout!r}")


def partition_spec(cfg: ModelConfig, path: tuple, tp: int) -> P:
    """The PartitionSpec of the parameter at `path` (an nnx state path) at degree `tp`."""
    return _spec(layout_of(cfg.architecture, path), str(path[-1]), cfg, tp)


def param_sharding_fn(cfg: ModelConfig, mesh: Mesh) -> Callable[[tuple], NamedSharding]:
    """`sharding_for(path)` for `models.loader.load_params` / `models.presets.random_params`;
    ValueError when `cfg` cannot be split over the mesh."""
    tp = mesh.shape[TP_AXIS]
    check_tensor_parallel(cfg, tp)
    if cfg.vocab_size % tp:
        logger.warning("vocab_size %d is not divisible by tensor_parallel_size %d: the embedding and "
                       "LM head are replicated on every device", cfg.vocab_size, tp)

    def sharding_for(path: tuple) -> NamedSharding:
        return NamedSharding(mesh, partition_spec(cfg, tuple(path), tp))

    return sharding_for


def kv_pool_sharding(mesh: Mesh) -> NamedSharding:
    """The pool `[L, 2, kv_heads, blocks, block_size, D]` sharded on its kv-head axis."""
    return NamedSharding(mesh, P(None, None, TP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (host inputs of a step, scalars)."""
    return NamedSharding(mesh, P())


def param_shapes(cfg: ModelConfig) -> list[tuple[tuple, tuple[int, ...]]]:
    """(nnx state path, shape) of every parameter of `cfg` (allocates nothing). The same for both
    expert layouts: pass it to `param_bytes_per_device` to plan several meshes of one model."""
    import jax.numpy as jnp
    from flax import nnx

    from models.loader import abstract_model  # late import: the loader imports the registry too

    _, state = abstract_model(cfg, jnp.float32)
    return [(tuple(path), tuple(var.get_value().shape)) for path, var in nnx.to_flat_state(state)]


def param_bytes_per_device(cfg: ModelConfig, dtype, tp: int, shapes=None) -> dict[str, int]:
    """Parameter bytes of `cfg` in `dtype`: `total`, and what each of `tp` devices holds
    (`per_device`) under the partition rules (`cfg.moe.expert_parallel` picks the experts'
    layout); of them the routed experts' (`experts_total`, `experts_per_device`). Every device
    holds the same bytes (every split is even). `shapes`: `param_shapes(cfg)`, if at hand.
    Allocates nothing."""
    import jax.numpy as jnp

    check_tensor_parallel(cfg, tp)
    itemsize = jnp.dtype(dtype).itemsize
    total = per_device = experts = experts_total = 0
    for path, shape in shapes if shapes is not None else param_shapes(cfg):
        spec = tuple(partition_spec(cfg, path, tp)) + (None,) * len(shape)
        local = int(np.prod([d // tp if axis == TP_AXIS else d for d, axis in zip(shape, spec)]))
        total += int(np.prod(shape)) * itemsize
        per_device += local * itemsize
        if "experts" in (str(p) for p in path):
            experts += local * itemsize
            experts_total += int(np.prod(shape)) * itemsize
    return {"total": total, "per_device": per_device, "experts_total": experts_total, "experts_per_device": experts}
