"""The mixture-of-experts pieces without whole models (fast): the grouped matmul against float64
numpy, routing and the MoE block against HF's modules, compute that follows the routing, the
expert-stacking transforms and MoeConfig validation. Whole models: test_hf_parity.py (the
mixtral / qwen2-moe / qwen3-moe / gpt-oss variants), test_engine_families.py, tests/parallel."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from models.blocks.grouped_matmul import default_tile_rows, grouped_matmul, tiled_rows_computed
from models.blocks.moe import MOE_IMPLS, MoE, route
from models.config import ModelConfig, MoeConfig
from models.weights import ExpertSlice, Interleaved, StackedExperts, TRANSPOSE

RNG = np.random.default_rng(0)


def _grouped_reference(x, w, sizes, first=0):
    """float64: row r times the weights of its group, 0 for rows of groups w does not hold."""
    out, row = np.zeros((x.shape[0], w.shape[2])), 0
    for g, n in enumerate(sizes):
        if first <= g < first + w.shape[0]:
            out[row:row + n] = x[row:row + n].astype(np.float64) @ w[g - first].astype(np.float64)
        row += n
    return out


# --------------------------------------------------------------------------- grouped matmul


@pytest.mark.parametrize("sizes,tile", [
    ((3, 0, 7, 1, 4), None), ((3, 0, 7, 1, 4), 3),  # empty groups; a tile that is no power of two
    ((0, 0, 9, 0, 0), 4), ((1, 1, 1, 1, 1), 1), ((1, 1, 1, 1, 1), 64),  # tiles larger than every group
    ((16, 1, 0, 2, 13), 4), ((16, 1, 0, 2, 13), None),
])
def test_tiled_grouped_matmul_equals_float64(sizes, tile):
    extra = 3  # rows past the groups' sum (the engine's padding) come out 0
    x = RNG.standard_normal((sum(sizes) + extra, 12)).astype(np.float32)
    w = RNG.standard_normal((len(sizes), 12, 5)).astype(np.float32)
    fn = jax.jit(lambda x, w, s: grouped_matmul(x, w, s, tile_rows=tile))
    got = np.asarray(fn(x, w, jnp.asarray(sizes)), np.float64)
    np.testing.assert_allclose(got, _grouped_reference(x, w, sizes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("first,count", [(0, 2), (2, 2), (3, 2), (1, 1)])
def test_grouped_matmul_of_a_devices_share_of_the_groups(first, count):
    sizes = (4, 2, 0, 5, 3)
    x = RNG.standard_normal((sum(sizes), 8)).astype(np.float32)
    w = RNG.standard_normal((len(sizes), 8, 6)).astype(np.float32)
    local = w[first:first + count]
    got = grouped_matmul(x, local, jnp.asarray(sizes), first_group=jnp.int32(first), tile_rows=2)
    np.testing.assert_allclose(np.asarray(got), _grouped_reference(x, local, sizes, first), atol=1e-5)


def test_ragged_dot_impl_and_bfloat16():
    sizes = (5, 0, 6, 2)
    x = RNG.standard_normal((13, 16)).astype(np.float32)
    w = RNG.standard_normal((4, 16, 8)).astype(np.float32)
    want = _grouped_reference(x, w, sizes)
    got = grouped_matmul(x, w, jnp.asarray(sizes), impl="ragged_dot")
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    for impl in ("tiled", "ragged_dot"):
        got = grouped_matmul(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), jnp.asarray(sizes), impl=impl)
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=0.1 * np.abs(want).max(), rtol=0.02)


def test_grouped_matmul_validation():
    x, w, sizes = jnp.ones((4, 3)), jnp.ones((2, 3, 5)), jnp.asarray([2, 2])
    with pytest.raises(ValueError, match="impl must be one of tiled, ragged_dot"):
        grouped_matmul(x, w, sizes, impl="megablox")
    with pytest.raises(ValueError, match=r"needs x \[M, K\] and w \[G, K, N\]"):
        grouped_matmul(x, jnp.ones((2, 4, 5)), sizes)
    with pytest.raises(ValueError, match="group_sizes must be 1-D with at least 2 groups"):
        grouped_matmul(x, w, jnp.asarray([4]))
    with pytest.raises(ValueError, match="ragged_dot impl needs the weights of every group"):
        grouped_matmul(x, w[:1], sizes, impl="ragged_dot")


def test_default_tile_rows_tracks_the_mean_group_size():
    assert [default_tile_rows(m, 8) for m in (1, 8, 9, 64, 100, 4096)] == [1, 1, 2, 8, 16, 128]
    assert tiled_rows_computed([5, 0, 1], 4) == 12  # ceil(5/4)*4 + 0 + 4


# --------------------------------------------------------------------------- routing against HF


def _hf_router(kind: str, experts: int, top_k: int, hidden: int, norm: bool):
    import transformers
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

    common = dict(hidden_size=hidden, num_experts_per_tok=top_k)
    if kind == "mixtral":
        return MixtralTopKRouter(transformers.MixtralConfig(num_local_experts=experts, **common))
    if kind == "qwen3":
        return Qwen3MoeTopKRouter(transformers.Qwen3MoeConfig(num_experts=experts, norm_topk_prob=norm, **common))
    return GptOssTopKRouter(transformers.GptOssConfig(num_local_experts=experts, **common))


@pytest.mark.parametrize("kind,moe", [
    ("mixtral", MoeConfig(num_experts=8, top_k=2, intermediate_size=4, norm_topk_prob=True)),
    ("qwen3", MoeConfig(num_experts=7, top_k=3, intermediate_size=4, norm_topk_prob=False)),
    ("qwen3", MoeConfig(num_experts=6, top_k=6, intermediate_size=4, norm_topk_prob=True)),
    ("gpt-oss", MoeConfig(num_experts=5, top_k=2, intermediate_size=4, routing="topk_softmax", router_bias=True)),
])
def test_routing_equals_hf(kind, moe):
    hidden = 16
    router = _hf_router(kind, moe.num_experts, moe.top_k, hidden, moe.norm_topk_prob)
    torch.manual_seed(0)
    for p in router.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(11, hidden)
    with torch.no_grad():
        logits, want_weights, want_experts = router(x)
    weights, experts = route(jnp.asarray(logits.numpy()), moe)
    np.testing.assert_array_equal(np.asarray(experts), want_experts.numpy())
    np.testing.assert_allclose(np.asarray(weights), want_weights.numpy(), atol=1e-6)


# --------------------------------------------------------------------------- the MoE block against HF

def _block_case(kind: str):
    """(our config, HF's sparse block) of one family, at hidden 16 with odd sizes."""
    import transformers
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    base = dict(architecture=kind, vocab_size=8, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                head_dim=8, max_position_embeddings=16)
    if kind == "mixtral":
        hf = MixtralSparseMoeBlock(transformers.MixtralConfig(hidden_size=16, intermediate_size=12, num_local_experts=6,
                                                              num_experts_per_tok=2))
        moe = MoeConfig(num_experts=6, top_k=2, intermediate_size=12, norm_topk_prob=True)
    elif kind == "qwen2-moe":
        hf = Qwen2MoeSparseMoeBlock(transformers.Qwen2MoeConfig(
            hidden_size=16, moe_intermediate_size=10, shared_expert_intermediate_size=20, num_experts=5,
            num_experts_per_tok=3, norm_topk_prob=False))
        moe = MoeConfig(num_experts=5, top_k=3, intermediate_size=10, shared_expert_intermediate_size=20)
    else:
        hf = GptOssMLP(transformers.GptOssConfig(hidden_size=16, intermediate_size=10, num_local_experts=4,
                                                 num_experts_per_tok=2, swiglu_limit=0.5))
        moe = MoeConfig(num_experts=4, top_k=2, intermediate_size=10, routing="topk_softmax", router_bias=True,
                        expert_bias=True, expert_mlp="clamped_swiglu", swiglu_limit=0.5)
    return ModelConfig(intermediate_size=20, moe=moe, **base), hf


def _abstract_moe(cfg: ModelConfig, impl: str = "tiled") -> MoE:
    """A MoE block whose parameters are shapes only (no random init compiles); filled below."""
    return nnx.eval_shape(lambda: MoE(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0), impl=impl))


def _copy_hf_block_into(ours: MoE, hf, kind: str) -> None:
    """HF's in-memory expert layouts (transformers v5) -> our stacked [E, in, out] parameters."""
    def put(param, array):
        param.set_value(jnp.asarray(np.ascontiguousarray(array), jnp.float32))

    t = lambda p: p.detach().numpy()
    router = hf.router if kind == "gpt-oss" else hf.gate
    put(ours.router.kernel, t(router.weight).T)
    if kind == "gpt-oss":
        put(ours.router.bias, t(router.bias))
        gate_up, bias = t(hf.experts.gate_up_proj), t(hf.experts.gate_up_proj_bias)  # [E, H, 2I] interleaved
        put(ours.experts.gate_proj.kernel, gate_up[..., 0::2]), put(ours.experts.up_proj.kernel, gate_up[..., 1::2])
        put(ours.experts.gate_proj.bias, bias[..., 0::2]), put(ours.experts.up_proj.bias, bias[..., 1::2])
        put(ours.experts.down_proj.kernel, t(hf.experts.down_proj))  # [E, I, H]
        put(ours.experts.down_proj.bias, t(hf.experts.down_proj_bias))
        return
    gate_up = t(hf.experts.gate_up_proj)  # [E, 2I, H]: gate rows, then up rows
    inter = gate_up.shape[1] // 2
    put(ours.experts.gate_proj.kernel, gate_up[:, :inter].transpose(0, 2, 1))
    put(ours.experts.up_proj.kernel, gate_up[:, inter:].transpose(0, 2, 1))
    put(ours.experts.down_proj.kernel, t(hf.experts.down_proj).transpose(0, 2, 1))  # [E, H, I] -> [E, I, H]
    if kind == "qwen2-moe":
        for name in ("gate_proj", "up_proj", "down_proj"):
            put(getattr(ours.shared_expert, name).kernel, t(getattr(hf.shared_expert, name).weight).T)
        put(ours.shared_expert_gate.kernel, t(hf.shared_expert_gate.weight).T)


# Every family's block routed (tiled); the other impls on the block with the most parts (biases,
# clamp, router bias): they share routing and weighting with it.
@pytest.mark.parametrize("kind,impl", [("mixtral", "tiled"), ("qwen2-moe", "tiled")]
                         + [("gpt-oss", impl) for impl in MOE_IMPLS])
def test_moe_block_equals_hf(kind, impl):
    cfg, hf = _block_case(kind)
    torch.manual_seed(1)
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ours = _abstract_moe(cfg, impl)
    _copy_hf_block_into(ours, hf, kind)
    x = torch.randn(3, 7, 16)  # [batch, seq, hidden]: 21 tokens
    with torch.no_grad():
        want = hf(x)
    want = (want[0] if isinstance(want, tuple) else want).numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(ours, jnp.asarray(x.numpy())))
    assert got.shape == (3, 7, 16) and np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_gpt_oss_block_case_reaches_the_swiglu_clamp():
    """The GPT-OSS case above is sensitive to the clamp: without it the outputs differ."""
    cfg, hf = _block_case("gpt-oss")
    torch.manual_seed(1)
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = jnp.asarray(torch.randn(3, 7, 16).numpy())
    outs = []
    for limit in (0.5, 1e6):
        limited = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, swiglu_limit=limit))
        ours = _abstract_moe(limited)
        _copy_hf_block_into(ours, hf, "gpt-oss")
        outs.append(np.asarray(nnx.jit(lambda m, x: m(x))(ours, x)))
    assert np.abs(outs[0] - outs[1]).max() > 1e-2


# --------------------------------------------------------------------------- compute follows routing


def _dot_flops(hlo_text: str) -> list[int]:
    """2 * output elements * contracted elements of every dot in an optimized HLO module."""
    shapes = {}
    for name, dims in re.findall(r"%?([\w.\-]+) = f32\[([0-9,]*)\]", hlo_text):
        shapes[name] = [int(d) for d in dims.split(",") if d]
    flops = []
    for line in hlo_text.splitlines():
        m = re.search(r"= f32\[([0-9,]*)\]\S* dot\(%?([\w.\-]+), .*lhs_contracting_dims=\{([0-9,]*)\}", line)
        if m:
            out = math.prod(int(d) for d in m.group(1).split(",") if d)
            lhs = shapes.get(m.group(2), [])
            contracted = math.prod(lhs[int(d)] for d in m.group(3).split(",") if d) if lhs else 0
            flops.append(2 * out * contracted)
    return flops


def test_tiled_moe_multiplies_only_routed_rows_and_dense_every_expert():
    """Compiled for 64 tokens, 8 experts, top-2: the tiled impl's only matmuls are one work
    item's (tile rows x one expert's weights, in the loop); the dense impl multiplies every
    expert on every token; jax 0.10.2's ragged_dot on CPU does too (grouped_matmul's NOTE)."""
    tokens, hidden, inter, experts = 64, 16, 32, 8
    moe = MoeConfig(num_experts=experts, top_k=2, intermediate_size=inter)
    cfg = ModelConfig(architecture="MixtralForCausalLM", vocab_size=8, hidden_size=hidden, intermediate_size=inter,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=16, moe=moe)
    x = jnp.asarray(RNG.standard_normal((tokens, hidden)), jnp.float32)
    dense_expert_flops = 2 * tokens * experts * hidden * inter
    tile = default_tile_rows(tokens * 2, experts)
    biggest = {}
    for impl in MOE_IMPLS:
        graphdef, state = nnx.split(_abstract_moe(cfg, impl))
        text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile().as_text()
        biggest[impl] = max(_dot_flops(text))
    router_flops = 2 * tokens * hidden * experts
    assert biggest["tiled"] <= max(router_flops, 2 * tile * hidden * inter), biggest
    assert biggest["dense"] >= dense_expert_flops, biggest
    assert biggest["ragged_dot"] >= dense_expert_flops * 2, biggest  # [E, T*k, H] x [E, H, I]


# --------------------------------------------------------------------------- weights and config


def test_expert_slice_and_interleaved_transforms_round_trip():
    stacked = RNG.standard_normal((3, 4, 5)).astype(np.float32)  # ours [E, in, out]
    for e in range(3):
        t = ExpertSlice(e, TRANSPOSE)
        hf = t.to_hf([stacked])
        assert hf.shape == t.hf_shape([stacked.shape]) == (5, 4)
        np.testing.assert_array_equal(t.to_ours(hf, [stacked.shape])[0], stacked[e])
    gate, up = RNG.standard_normal((2, 4, 3)), RNG.standard_normal((2, 4, 3))
    fused = Interleaved(2).to_hf([gate, up])
    assert fused.shape == Interleaved(2).hf_shape([gate.shape, up.shape]) == (2, 4, 6)
    np.testing.assert_array_equal(fused[..., 0::2], gate)
    np.testing.assert_array_equal(fused[..., 1::2], up)
    back = Interleaved(2).to_ours(fused, [gate.shape, up.shape])
    np.testing.assert_array_equal(back[0], gate)
    np.testing.assert_array_equal(back[1], up)


def test_stacked_experts_read_only_the_experts_asked_for():
    experts = [RNG.standard_normal((5, 4)).astype(np.float32) for _ in range(4)]  # HF [out, in] each
    reads = []

    def reader(e):
        def read():
            reads.append(e)
            return experts[e]
        return read

    stacked = StackedExperts((4, 4, 5), np.float32, {e: (reader(e), ExpertSlice(e)) for e in range(4)})
    part = stacked[(slice(2, 4), slice(None), slice(1, 3))]  # experts 2, 3; out columns 1:3
    assert reads == [2, 3]
    np.testing.assert_array_equal(part, np.stack([experts[2].T[:, 1:3], experts[3].T[:, 1:3]]))
    np.testing.assert_array_equal(stacked[...], np.stack([e.T for e in experts]))
    with pytest.raises(ValueError, match=r"stacked experts need slices 0..3, got \[0, 1, 3\]"):
        StackedExperts((4, 4, 5), np.float32, {e: (reader(e), ExpertSlice(e)) for e in (0, 1, 3)})


@pytest.mark.parametrize("overrides,message", [
    (dict(top_k=5), r"num_experts_per_tok \(5\) exceeds num_experts \(4\)"),
    (dict(top_k=0), "moe top_k must be >= 1"),
    (dict(routing="sigmoid"), "moe routing must be one of softmax_topk, topk_softmax"),
    (dict(expert_mlp="relu2"), "moe expert_mlp must be one of gated, clamped_swiglu"),
    (dict(sparse_step=0), "moe sparse_step must be >= 1"),
    (dict(expert_mlp="clamped_swiglu", swiglu_limit=0.0), "swiglu_limit and swiglu_alpha must be > 0"),
    (dict(shared_expert_intermediate_size=-1), "shared_expert_intermediate_size must be >= 0"),
])
def test_moe_config_validation_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        MoeConfig(**{**dict(num_experts=4, top_k=2, intermediate_size=8), **overrides})


def test_sparse_layers_follow_hf_rule_and_expert_parallel_is_a_layout_choice():
    moe = MoeConfig(num_experts=4, top_k=2, intermediate_size=8, dense_layers=[1], sparse_step=2)
    # HF: sparse iff layer not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0
    assert [moe.is_sparse(i) for i in range(6)] == [False, False, False, True, False, True]
    fields = dict(architecture="Qwen3MoeForCausalLM", vocab_size=8, hidden_size=16, intermediate_size=8,
                  num_layers=3, num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=16)
    cfg = ModelConfig(**fields, moe=moe)
    assert cfg.with_expert_parallel(True).moe.expert_parallel and not cfg.moe.expert_parallel
    dense = ModelConfig(**fields)
    assert dense.with_expert_parallel(True) is dense and not dense.is_moe_layer(0)
    with pytest.raises(ValueError, match=r"mlp_only_layers \(5,\) name layers outside 0..2"):
        ModelConfig(**fields, moe=MoeConfig(num_experts=4, top_k=2, intermediate_size=8, dense_layers=[5]))
