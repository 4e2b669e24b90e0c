"""Tensor-parallel checks on 8 CPU devices.

Not collected by the normal run (the name does not start with `test_`): `test_tensor_parallel.py`
runs this file with pytest in a subprocess whose environment has
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, which jax reads once, when it starts.
Run it alone with:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/parallel/_tp_checks.py
"""

from __future__ import annotations

import logging
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from models.config import ModelConfig
from models.loader import _to_device
from models.presets import random_params
from models.sharding import TP_AXIS, make_mesh, param_sharding_fn
import pagedjax.runner
from pagedjax import LLM
from pagedjax.convert import convert_checkpoint
from pagedjax.runner import ModelRunner
from tests.parallel.tp_workload import run_workload

# (variant, tensor-parallel degree): plain head sharding, KV heads replicated (tp > num_kv_heads),
# q/k norm (Qwen3), tied embeddings with q/k/v/o biases; then other families' layouts: GPT-2
# (split Conv1D qkv, learned positions, biases), Falcon's grouped qkv with KV heads replicated,
# GPT-NeoX (per-head fused qkv, partial rotary, parallel block), OLMo 2 (a q/k norm over all
# heads: sharded activations), OPT-350m (post-norm, replicated project_in/out).
CASES = [("llama", 2), ("llama", 4), ("llama-8q2kv", 8), ("qwen3", 2), ("llama-tied-headdim32", 4),
         ("gpt2", 2), ("falcon-new-decoder", 4), ("gpt-neox", 4), ("olmo2", 2), ("opt-350m-post-norm", 2)]


@pytest.fixture(scope="module")
def single_device(checkpoint_factory):
    """variant -> greedy completions with tensor_parallel_size=1 (computed once)."""
    cache = {}

    def get(variant: str) -> list[list[int]]:
        if variant not in cache:
            cache[variant] = run_workload(checkpoint_factory(variant), 1)[0]
        return cache[variant]

    return get


@pytest.fixture(scope="module")
def tp_engines():
    return {}  # (variant, tp) -> LLM, filled by test_greedy_matches_single_device


def test_eight_cpu_devices():
    assert jax.default_backend() == "cpu" and len(jax.devices()) == 8


@pytest.mark.parametrize("variant,tp", CASES)
def test_greedy_matches_single_device(variant, tp, checkpoint_factory, single_device, tp_engines):
    outputs, llm = run_workload(checkpoint_factory(variant), tp)
    assert outputs == single_device(variant)
    runner = llm.engine.runner
    assert any(isinstance(k, tuple) and k[0] == "copy" for k in runner.steps._compiled)  # copy-on-write ran sharded
    assert llm.stats()["prefix_cache_hits"] > 0 and llm.stats()["tensor_parallel_size"] == tp
    tp_engines[(variant, tp)] = llm


def _check_sharded(array, spec: P, tp: int):
    """Each of the `tp` devices holds exactly its 1/tp slice along the spec's `tp` dimension."""
    assert isinstance(array.sharding, NamedSharding) and array.sharding.spec == spec
    assert len(array.addressable_shards) == tp
    expected = tuple(d // tp if axis == TP_AXIS else d
                     for d, axis in zip(array.shape, tuple(spec) + (None,) * array.ndim))
    assert {s.data.shape for s in array.addressable_shards} == {expected}
    assert len({s.device for s in array.addressable_shards}) == tp


@pytest.mark.parametrize("variant,tp", [("llama", 2), ("llama-8q2kv", 8), ("llama-tied-headdim32", 4), ("gpt2", 2),
                                        ("falcon-new-decoder", 4)])
def test_each_device_holds_its_share_of_the_weights(variant, tp, tp_engines):
    llm = tp_engines[(variant, tp)]
    cfg = llm.engine.model_config
    replicate_kv = cfg.num_kv_heads < tp
    column, row = P(None, TP_AXIS), P(TP_AXIS, None)
    expected = {"q_proj.kernel": column, "k_proj.kernel": P() if replicate_kv else column,
                "v_proj.kernel": P() if replicate_kv else column, "o_proj.kernel": row,
                "gate_proj.kernel": column, "up_proj.kernel": column, "down_proj.kernel": row,
                "embed_tokens.embedding": P(TP_AXIS, None), "lm_head.kernel": column,
                "q_proj.bias": P(TP_AXIS), "k_proj.bias": P() if replicate_kv else P(TP_AXIS),
                "v_proj.bias": P() if replicate_kv else P(TP_AXIS),
                "o_proj.bias": P(), "norm.weight": P(), "layernorm.weight": P(), "norm.bias": P(),
                "layernorm.bias": P(), "up_proj.bias": P(TP_AXIS), "down_proj.bias": P(),
                "embed_positions.embedding": P()}
    per_device = np.zeros(tp)
    total = 0
    for path, var in nnx.to_flat_state(llm.engine.runner.params):
        name = ".".join(map(str, path))
        array = var.get_value()
        spec = next(s for suffix, s in expected.items() if name.endswith(suffix))
        if spec == P():
            assert array.sharding.is_fully_replicated and array.addressable_shards[0].data.shape == array.shape
        else:
            _check_sharded(array, spec, tp)
            for i, shard in enumerate(array.addressable_shards):
                per_device[i] += shard.data.size
            total += array.size
    assert total > 0 and np.all(per_device == total // tp)


@pytest.mark.parametrize("variant,tp", [("llama", 2), ("llama", 4), ("llama-8q2kv", 8)])
def test_kv_pool_is_sharded_on_its_kv_head_axis(variant, tp, tp_engines):
    llm = tp_engines[(variant, tp)]
    cfg, pool = llm.engine.model_config, llm.engine.runner.kv_pool.data
    heads = max(cfg.num_kv_heads, tp)  # replicated up to tp when tp > num_kv_heads
    assert pool.shape == (cfg.num_layers, 2, heads, 48, 16, cfg.head_dim)
    _check_sharded(pool, P(None, None, TP_AXIS), tp)


def test_step_moves_no_weights_between_devices():
    """GSPMD partitions the step without all-gathering any weight: every all-gather / all-to-all
    moves less than the smallest sharded weight (here: the sampler's vocab-parallel logits).
    And the donated, sharded pool is written in place under shard_map (no temporary copy)."""
    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=512, hidden_size=128, intermediate_size=256,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=256)
    mesh = make_mesh(2)
    graphdef, params = random_params(cfg, jnp.float32, sharding_for=param_sharding_fn(cfg, mesh))
    runner = ModelRunner(graphdef, params, cfg, num_blocks=512, block_size=16, max_model_len=64, max_num_seqs=8,
                         max_num_batched_tokens=32, backend="reference", kv_dtype=jnp.float32, mesh=mesh)
    smallest_weight = cfg.hidden_size * cfg.head_dim * cfg.num_kv_heads // 2  # a k_proj shard
    for shape in (runner.steps.shape(32, 2, 4, False),):  # mixed prefill + decode step
        memory = runner.steps.memory(shape)  # the sharded pool is updated in place, not copied
        assert memory["temp_bytes"] < memory["kv_pool_bytes"] // 4, memory
        text = runner.steps.get(shape).as_text()
        assert len(re.findall(r" all-reduce(-start)?\(", text)) >= 2 * cfg.num_layers  # o_proj, down_proj
        for line in text.splitlines():
            m = re.search(r"= (.*?) (all-gather|all-to-all)(-start)?\(", line)
            if m:
                sizes = [math.prod(int(d) for d in dims.split(",") if d)
                         for dims in re.findall(r"\[([0-9,]*)\]", m.group(1))]
                assert max(sizes) < smallest_weight, line


def test_pallas_interpret_backend_matches_single_device(checkpoint_factory, single_device):
    """The Pallas kernels (interpret mode) under shard_map, incl. replicated KV heads at tp=4;
    equal to the single-device jnp reference as well."""
    model = checkpoint_factory("llama")
    for tp in (1, 2, 4):
        assert run_workload(model, tp, backend="pallas_interpret", max_tokens=8)[0] == [
            out[:8] for out in single_device("llama")], f"tensor_parallel_size={tp}"


def test_orbax_checkpoint_restores_into_shards(checkpoint_factory, single_device, tmp_path):
    out = str(tmp_path / "orbax")
    convert_checkpoint(checkpoint_factory("llama"), out)
    outputs, llm = run_workload(out, 2)
    assert outputs == single_device("llama")
    q = llm.engine.runner.params["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    _check_sharded(q, P(None, TP_AXIS), 2)


def test_safetensors_loader_reads_only_each_devices_slice():
    mesh = make_mesh(4)
    full = np.arange(8 * 12, dtype=np.float32).reshape(8, 12)

    class Recording:
        """A host array that records which slices are read."""

        shape, dtype, reads = full.shape, full.dtype, []

        def __getitem__(self, index):
            self.reads.append(index)
            return full[index]

    source = Recording()
    out = _to_device(source, jnp.bfloat16, NamedSharding(mesh, P(None, TP_AXIS)))
    assert [full[i].shape for i in source.reads] == [(8, 3)] * 4  # never the whole tensor
    np.testing.assert_array_equal(np.asarray(out, np.float32), full.astype(jnp.bfloat16).astype(np.float32))


def test_random_preset_weights_are_generated_in_their_shards(checkpoint_factory):
    cfg = ModelConfig.from_pretrained(checkpoint_factory("llama-8q2kv"))
    mesh = make_mesh(4)
    _, sharded = random_params(cfg, jnp.float32, sharding_for=param_sharding_fn(cfg, mesh))
    _, single = random_params(cfg, jnp.float32)
    q = sharded["layers"][1]["self_attn"]["q_proj"]["kernel"][...]
    _check_sharded(q, P(None, TP_AXIS), 4)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same values, only placed differently


def test_indivisible_vocab_is_replicated_with_a_warning(caplog):
    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=513, hidden_size=64, intermediate_size=128,
                      num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=64)
    with caplog.at_level(logging.WARNING, logger="pagedjax"):
        sharding_for = param_sharding_fn(cfg, make_mesh(2))
    assert "vocab_size 513 is not divisible by tensor_parallel_size 2" in caplog.text
    _, params = random_params(cfg, jnp.float32, sharding_for=sharding_for)
    assert params["embed_tokens"]["embedding"][...].sharding.is_fully_replicated
    _check_sharded(params["layers"][0]["mlp"]["up_proj"]["kernel"][...], P(None, TP_AXIS), 2)


def test_kv_pool_is_sized_from_the_tightest_devices_free_memory(checkpoint_factory, monkeypatch):
    """The GPU sizing path, on CPU devices made to report memory: with tensor parallelism each
    device holds 1/N of every block, and the device with the least free memory decides."""
    limit, in_use = 32 << 20, {0: 1 << 20, 1: 9 << 20}  # device 1 is the tight one
    monkeypatch.setattr(pagedjax.runner, "device_memory_stats", lambda devices: [
        dict(bytes_limit=limit, bytes_in_use=in_use[d.id]) for d in devices])
    llm = LLM(checkpoint_factory("llama"), tensor_parallel_size=2, gpu_memory_utilization=0.5,
              max_model_len=256, max_num_seqs=256, max_num_batched_tokens=64)
    cfg, profile = llm.engine.model_config, llm.engine.profile
    per_device_block = 2 * cfg.num_layers * (cfg.num_kv_heads // 2) * cfg.head_dim * 4 * 16  # float32, 16 tokens
    assert profile["bytes_in_use"] == in_use[1] and profile["bytes_per_block"] == per_device_block
    expected = int((limit * 0.5 - in_use[1] - profile["step_temp_bytes"]) // per_device_block)
    assert 0 < expected < 256 * 256 // 16 and llm.stats()["num_kv_blocks"] == expected  # below the cap
    assert llm.engine.runner.kv_pool.nbytes_per_device() == expected * per_device_block


@pytest.mark.parametrize("tp,message", [
    (16, r"tensor_parallel_size \(16\) is larger than the number of devices \(8 cpu devices\)"),
    (3, r"tensor_parallel_size \(3\) must divide num_attention_heads \(4\)"),
    (8, r"tensor_parallel_size \(8\) must divide num_attention_heads \(4\)"),
])
def test_bad_tensor_parallel_size_is_a_clear_error(tp, message, checkpoint_factory):
    with pytest.raises(ValueError, match=message):
        LLM(checkpoint_factory("llama"), tensor_parallel_size=tp, num_kv_blocks=8)
