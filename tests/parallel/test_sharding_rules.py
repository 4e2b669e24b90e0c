"""Partition rules, divisibility checks and the mesh (in this process: one CPU device)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from models.config import ModelConfig
from models.loader import abstract_model
from models.registry import supported_architectures
from models.sharding import (
    PARTITION_RULES, TP_AXIS, check_tensor_parallel, layout_of, make_mesh, partition_spec,
    pool_kv_heads, shard_map)
from pagedjax import LLM
from pagedjax.config import EngineConfig

COL, ROW, REP = P(None, TP_AXIS), P(TP_AXIS, None), P()


def config(**overrides) -> ModelConfig:
    fields = dict(architecture="Qwen3ForCausalLM", vocab_size=512, hidden_size=64, intermediate_size=128,
                  num_layers=1, num_heads=8, num_kv_heads=2, head_dim=16, max_position_embeddings=64,
                  qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True)
    return ModelConfig(**{**fields, **overrides})


def specs(cfg: ModelConfig, tp: int) -> dict[str, P]:
    _, state = abstract_model(cfg, jnp.float32)
    return {".".join(map(str, path)): partition_spec(cfg, path, tp) for path, _ in nnx.to_flat_state(state)}


def test_megatron_layout_of_every_parameter():
    got = specs(config(), 2)
    attn, mlp = "layers.0.self_attn.", "layers.0.mlp."
    assert got == {
        "embed_tokens.embedding": ROW,  # [vocab, hidden]: vocab-parallel
        "lm_head.kernel": COL,  # [hidden, vocab]: vocab-parallel
        "norm.weight": REP,
        "layers.0.input_layernorm.weight": REP, "layers.0.post_attention_layernorm.weight": REP,
        attn + "q_proj.kernel": COL, attn + "q_proj.bias": P(TP_AXIS),
        attn + "k_proj.kernel": COL, attn + "k_proj.bias": P(TP_AXIS),
        attn + "v_proj.kernel": COL, attn + "v_proj.bias": P(TP_AXIS),
        attn + "o_proj.kernel": ROW, attn + "o_proj.bias": REP,
        attn + "q_norm.weight": REP, attn + "k_norm.weight": REP,
        mlp + "gate_proj.kernel": COL, mlp + "gate_proj.bias": P(TP_AXIS),
        mlp + "up_proj.kernel": COL, mlp + "up_proj.bias": P(TP_AXIS),
        mlp + "down_proj.kernel": ROW, mlp + "down_proj.bias": REP,
    }


def test_kv_projections_are_replicated_beyond_num_kv_heads():
    for tp, expected in ((1, COL), (2, COL), (4, REP), (8, REP)):
        got = specs(config(), tp)
        assert got["layers.0.self_attn.k_proj.kernel"] == expected
        assert got["layers.0.self_attn.v_proj.kernel"] == expected
        assert got["layers.0.self_attn.q_proj.kernel"] == COL
    assert [pool_kv_heads(config(), tp) for tp in (1, 2, 4, 8)] == [2, 2, 4, 8]


def test_vocab_not_divisible_replicates_embedding_and_head():
    cfg = config(vocab_size=513)
    assert specs(cfg, 2)["embed_tokens.embedding"] == REP and specs(cfg, 2)["lm_head.kernel"] == REP
    assert specs(cfg, 1)["embed_tokens.embedding"] == ROW  # tp=1 divides everything


def test_every_supported_architecture_has_rules():
    assert set(PARTITION_RULES) == set(supported_architectures())
    with pytest.raises(ValueError, match="no tensor-parallel partition rules for 'MysteryForCausalLM'"):
        layout_of("MysteryForCausalLM", ("lm_head", "kernel"))
    with pytest.raises(ValueError, match="no partition rule matches parameter 'layers.0.mystery.kernel'"):
        layout_of("LlamaForCausalLM", ("layers", 0, "mystery", "kernel"))


@pytest.mark.parametrize("overrides,tp,message", [
    (dict(), 3, r"tensor_parallel_size \(3\) must divide num_attention_heads \(8\)"),
    (dict(num_heads=12, num_kv_heads=4), 6, r"must divide num_key_value_heads \(4\) or be a multiple of it"),
    (dict(intermediate_size=100), 8, r"must divide intermediate_size \(100\)"),
    (dict(), 0, r"tensor_parallel_size must be >= 1"),
])
def test_indivisible_model_is_a_clear_error(overrides, tp, message):
    with pytest.raises(ValueError, match=message):
        check_tensor_parallel(config(**overrides), tp)


def test_divisible_degrees_pass():
    for tp in (1, 2, 4, 8):
        check_tensor_parallel(config(), tp)


def test_mesh_from_a_device_list():
    devices = jax.devices()
    mesh = make_mesh(1, devices)
    assert mesh.axis_names == (TP_AXIS,) and list(mesh.devices.flat) == devices[:1]
    with pytest.raises(ValueError, match=r"tensor_parallel_size \(2\) is larger than the number of devices \(1 cpu"):
        make_mesh(2, devices[:1])
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        make_mesh(len(devices) + 1)


def test_shard_map_wrapper_runs_per_device():
    mesh = make_mesh(1)
    x = np.arange(8.0, dtype=np.float32).reshape(2, 4)
    out = jax.jit(shard_map(lambda a: a * 2, mesh, in_specs=(P(None, TP_AXIS),), out_specs=P(None, TP_AXIS)))(x)
    np.testing.assert_array_equal(np.asarray(out), x * 2)


def test_engine_rejects_more_devices_than_exist(llama_dir):
    with pytest.raises(ValueError, match=r"tensor_parallel_size \(2\) is larger than the number of devices"):
        LLM(llama_dir, tensor_parallel_size=2, num_kv_blocks=8)
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        EngineConfig(model=llama_dir, tensor_parallel_size=0)


def test_cli_reports_too_few_devices(capsys):
    from pagedjax.cli import main

    assert main(["generate", "--tensor-parallel-size", "2", "--max-tokens", "1"]) == 2
    assert "tensor_parallel_size (2) is larger than the number of devices" in capsys.readouterr().err
