"""Mixture-of-experts feed-forward (`ModelConfig.moe`): a router picks `top_k` of `num_experts`
expert MLPs per token, and the token's output is their routing-weighted sum (plus a shared
expert every token takes, Qwen2-MoE).

Routing, in float32, as HF computes it per family (`MoeConfig.routing`):
  softmax_topk  p = softmax(router(x)) over all experts; (w, e) = top_k(p); w /= sum(w) if
                norm_topk_prob (Mixtral always, Qwen-MoE per config)
  topk_softmax  (l, e) = top_k(router(x)), the router with a bias; w = softmax(l)  (GPT-OSS)

Expert MLPs (`MoeConfig.expert_mlp`), each on its own weights:
  gated           down(act(gate(x)) * up(x))
  clamped_swiglu  g = min(gate(x), limit); u = clip(up(x), -limit, limit);
                  down((u + 1) * g * sigmoid(alpha * g)); biases on all three (GPT-OSS)

The compute follows the routing (impl "tiled", the default): the T * k (token, expert) pairs
are sorted by expert, each expert's rows multiply that expert's weights only (a grouped matmul,
models/blocks/grouped_matmul.py), and the results return to their tokens, weighted. impl "dense"
runs every expert on every token instead (the reference that benchmarks/moe_bench.py measures
against); "ragged_dot" is jax.lax.ragged_dot (dense underneath in jax 0.10.2, see there).

Parallelism: given the step's mesh (the KV cache's metadata carries it), the routed experts run
under shard_map over `tp`: every device routes every token, computes the pairs of its share of
the experts (a slice of every expert, or whole experts with `MoeConfig.expert_parallel`; specs
from models/sharding.py) and one psum sums the partial outputs.

Parameters (stacked [E, in, out] at load from the checkpoint's per-expert tensors):
  router.kernel [H, E] (+ bias [E]); experts.{gate,up}_proj.kernel [E, H, I] (+ bias [E, I]);
  experts.down_proj.kernel [E, I, H] (+ bias [E, H]); shared_expert (an MLP); shared_expert_gate.kernel [H, 1]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from models.architecture import EXPERT_COLUMN, EXPERT_ROW
from models.blocks.common import ACTIVATION_FNS, INIT, linear
from models.blocks.grouped_matmul import grouped_matmul
from models.blocks.mlp import MLP
from models.config import ModelConfig, MoeConfig
from models.sharding import TP_AXIS, expert_spec, shard_map

MOE_IMPLS = ("tiled", "ragged_dot", "dense")


def route(logits, moe: MoeConfig):
    """Router logits `[T, E]` -> (weights f32[T, k], experts i32[T, k]), per `moe.routing`."""
    logits = logits.astype(jnp.float32)
    if moe.routing == "topk_softmax":
        top, experts = jax.lax.top_k(logits, moe.top_k)
        weights = jax.nn.softmax(top, axis=-1)
    else:
        weights, experts = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), moe.top_k)
        if moe.norm_topk_prob:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts.astype(jnp.int32)


def mesh_of(cache):
    """The tensor-parallel mesh of this step (PagedKVCache's metadata), or None."""
    return getattr(getattr(cache, "metadata", None), "mesh", None)


class ExpertLinear(nnx.Module):
    """`num_experts` stacked projections: kernel `[E, in, out]`, optional bias `[E, out]`."""

    def __init__(self, num_experts: int, fan_in: int, fan_out: int, bias: bool, dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(INIT(rngs.params(), (num_experts, fan_in, fan_out), dtype))
        self.bias = nnx.Param(jnp.zeros((num_experts, fan_out), dtype)) if bias else None


class Experts(nnx.Module):
    """The experts' gate, up and down projections, stacked."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        moe, h = cfg.moe, cfg.hidden_size
        e, i, bias = moe.num_experts, moe.intermediate_size, moe.expert_bias
        self.gate_proj = ExpertLinear(e, h, i, bias, dtype, rngs)
        self.up_proj = ExpertLinear(e, h, i, bias, dtype, rngs)
        self.down_proj = ExpertLinear(e, i, h, bias, dtype, rngs)

    def weights(self) -> dict:
        """The arrays the routed compute reads (the down bias is added after the reduction)."""
        out = {"gate": self.gate_proj.kernel[...], "up": self.up_proj.kernel[...], "down": self.down_proj.kernel[...]}
        if self.gate_proj.bias is not None:
            out.update(gate_bias=self.gate_proj.bias[...], up_bias=self.up_proj.bias[...])
        return out


def weight_specs(expert_parallel: bool) -> dict:
    """shard_map specs of `Experts.weights()` (the partition rules' layouts, models/sharding.py)."""
    return {"gate": expert_spec(EXPERT_COLUMN, "kernel", expert_parallel),
            "up": expert_spec(EXPERT_COLUMN, "kernel", expert_parallel),
            "down": expert_spec(EXPERT_ROW, "kernel", expert_parallel),
            "gate_bias": expert_spec(EXPERT_COLUMN, "bias", expert_parallel),
            "up_bias": expert_spec(EXPERT_COLUMN, "bias", expert_parallel)}


def _activate(moe: MoeConfig, activation: str, gate, up):
    if moe.expert_mlp == "clamped_swiglu":
        gate = jnp.minimum(gate, moe.swiglu_limit)
        up = jnp.clip(up, -moe.swiglu_limit, moe.swiglu_limit)
        return (up + 1) * (gate * jax.nn.sigmoid(gate * moe.swiglu_alpha))
    return ACTIVATION_FNS[activation](gate) * up


def _local_ids(experts, first, num_local: int):
    """(whether each expert id is one of this device's, its index among them, clipped)."""
    mine = (experts >= first) & (experts < first + num_local)
    return mine, jnp.clip(experts - first, 0, num_local - 1)


def _dense_experts(moe, activation, x, weights, experts, first, w):
    """Every local expert on every token: f32 `[T, H]`, weighted by the routing."""
    num_local = w["gate"].shape[0]
    local_ids = first + jnp.arange(num_local)  # [G]
    combine = jnp.sum(jnp.where(experts[:, :, None] == local_ids, weights[:, :, None], 0.0), axis=1)  # [T, G]
    gate = jnp.einsum("th,ghi->gti", x, w["gate"])  # [G, T, I]
    up = jnp.einsum("th,ghi->gti", x, w["up"])
    if "gate_bias" in w:
        gate, up = gate + w["gate_bias"][:, None], up + w["up_bias"][:, None]
    out = jnp.einsum("gti,gih->gth", _activate(moe, activation, gate, up), w["down"])  # [G, T, H]
    return jnp.einsum("gth,tg->th", out.astype(jnp.float32), combine)


def _sorted_experts(moe, activation, impl, x, weights, experts, first, w):
    """The (token, expert) pairs sorted by expert through grouped matmuls: f32 `[T, H]`."""
    num_tokens, k = experts.shape
    num_local = w["gate"].shape[0]
    flat = experts.reshape(-1)  # i32[T*k]
    order = jnp.argsort(flat, stable=True)  # i32[T*k]: pairs sorted by expert
    sorted_experts = flat[order]
    group_sizes = jnp.bincount(flat, length=moe.num_experts).astype(jnp.int32)  # i32[E]
    rows = x[order // k]  # [T*k, H]
    mine, local = _local_ids(sorted_experts, first, num_local)
    matmul = functools.partial(grouped_matmul, group_sizes=group_sizes, first_group=first, impl=impl)
    gate, up = matmul(rows, w["gate"]), matmul(rows, w["up"])  # [T*k, I]
    if "gate_bias" in w:
        gate, up = gate + w["gate_bias"][local], up + w["up_bias"][local]
    out = matmul(_activate(moe, activation, gate, up), w["down"])  # [T*k, H]
    pair_weights = jnp.where(mine, weights.reshape(-1)[order], 0.0)  # f32[T*k]: 0 for other devices' experts
    weighted = out.astype(jnp.float32) * pair_weights[:, None]
    return weighted[jnp.argsort(order)].reshape(num_tokens, k, -1).sum(axis=1)  # back to token order


class MoE(nnx.Module):
    """The mixture-of-experts feed-forward of `cfg.moe` (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, impl: str = "tiled"):
        if impl not in MOE_IMPLS:
            raise ValueError(f"MoE impl must be one of {', '.join(MOE_IMPLS)}; got {impl!r}")
        moe, h = cfg.moe, cfg.hidden_size
        self.moe, self.activation, self.impl = moe, cfg.activation, impl
        self.router = linear(h, moe.num_experts, moe.router_bias, dtype, rngs)
        self.experts = Experts(cfg, dtype=dtype, rngs=rngs)
        shared = moe.shared_expert_intermediate_size
        self.shared_expert = MLP(cfg, dtype=dtype, rngs=rngs, intermediate_size=shared) if shared else None
        self.shared_expert_gate = linear(h, 1, False, dtype, rngs) if shared and moe.shared_expert_gate else None

    def __call__(self, x, *, mesh=None):
        """x `[..., hidden]` -> `[..., hidden]`; `mesh`: the step's tensor-parallel mesh (or None)."""
        lead, hidden = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, hidden)  # [T, H]
        weights, experts = route(self.router(flat), self.moe)  # f32[T, k], i32[T, k]
        out = self._routed(flat, weights, experts, mesh)  # f32[T, H]
        if self.experts.down_proj.bias is not None:
            bias = self.experts.down_proj.bias[...][experts].astype(jnp.float32)  # [T, k, H]
            out = out + jnp.einsum("tk,tkh->th", weights, bias)
        out = out.astype(x.dtype)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = jax.nn.sigmoid(self.shared_expert_gate(flat)) * shared
            out = out + shared
        return out.reshape(*lead, hidden)

    def _routed(self, x, weights, experts, mesh):
        if self.impl == "dense":
            compute = functools.partial(_dense_experts, self.moe, self.activation)
        else:
            compute = functools.partial(_sorted_experts, self.moe, self.activation, self.impl)
        w = self.experts.weights()
        if mesh is None or mesh.shape[TP_AXIS] == 1:
            return compute(x, weights, experts, 0, w)
        expert_parallel = self.moe.expert_parallel

        def local(x, weights, experts, w):
            first = jax.lax.axis_index(TP_AXIS) * w["gate"].shape[0] if expert_parallel else 0
            return jax.lax.psum(compute(x, weights, experts, first, w), TP_AXIS)

        specs = {name: spec for name, spec in weight_specs(expert_parallel).items() if name in w}
        return shard_map(local, mesh, in_specs=(P(), P(), P(), specs), out_specs=P())(x, weights, experts, w)
