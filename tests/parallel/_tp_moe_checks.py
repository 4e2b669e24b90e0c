"""Mixtures of experts on 8 CPU devices: tensor parallel inside the experts and expert parallel
(`enable_expert_parallel=True`) give the single-device greedy tokens, each device holds the
share of every weight the partition rules give it, and those bytes are what
`models.sharding.param_bytes_per_device` (the presets' memory plan) reports.

Run by `test_tensor_parallel.py` in a subprocess with 8 CPU devices, like `_tp_checks.py`.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from models.sharding import TP_AXIS, param_bytes_per_device
from tests.parallel.tp_workload import run_workload

# (variant, tensor-parallel degree, expert parallel): Qwen2-MoE's shared expert (split like an
# MLP) and dense layer beside routed experts split by expert; Qwen3-MoE 8 ways both ways (one
# expert per device); GPT-OSS's biased experts and head-split sinks, inside the experts and by
# expert with KV heads replicated. (Mixtral's block is Qwen3-MoE's with other routing options.)
CASES = [("qwen2-moe", 4, True), ("qwen3-moe", 8, False), ("qwen3-moe", 8, True), ("gpt-oss", 2, False),
         ("gpt-oss", 4, True)]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def single_device(checkpoint_factory):
    """variant -> greedy completions on one device (computed once)."""
    cache = {}

    def get(variant: str) -> list[list[int]]:
        if variant not in cache:
            cache[variant] = run_workload(checkpoint_factory(variant), 1, max_tokens=MAX_TOKENS)[0]
        return cache[variant]

    return get


def _expected_expert_spec(name: str, expert_parallel: bool) -> P | None:
    """The spec the rules give a routed expert's kernel or bias (None: not a routed expert)."""
    if ".experts." not in f".{name}":
        return None
    if name.endswith("down_proj.bias"):
        return P()
    if expert_parallel:
        return P(TP_AXIS, None) if name.endswith("bias") else P(TP_AXIS, None, None)
    if name.endswith("bias"):
        return P(None, TP_AXIS)
    return P(None, TP_AXIS, None) if "down_proj" in name else P(None, None, TP_AXIS)


def _bytes_per_device(params, expert_parallel: bool) -> tuple[dict, dict]:
    """(device -> parameter bytes it holds, device -> of them routed-expert bytes), checking each
    routed expert's sharding on the way."""
    held, experts = {}, {}
    for path, var in nnx.to_flat_state(params):
        name = ".".join(map(str, path))
        array = var.get_value()
        spec = _expected_expert_spec(name, expert_parallel)
        if spec is not None and spec != P():
            assert array.sharding.spec == spec, (name, array.sharding.spec)
        for shard in array.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
            if spec is not None:
                experts[shard.device] = experts.get(shard.device, 0) + shard.data.nbytes
    return held, experts


def test_eight_cpu_devices():
    assert jax.default_backend() == "cpu" and len(jax.devices()) == 8


@pytest.mark.parametrize("variant,tp,expert_parallel", CASES)
def test_moe_greedy_and_weight_shares_match_single_device(variant, tp, expert_parallel, checkpoint_factory,
                                                          single_device):
    outputs, llm = run_workload(checkpoint_factory(variant), tp, max_tokens=MAX_TOKENS,
                                enable_expert_parallel=expert_parallel)
    assert outputs == single_device(variant)
    cfg = llm.engine.model_config
    assert cfg.moe.expert_parallel == expert_parallel and llm.stats()["tensor_parallel_size"] == tp
    held, experts = _bytes_per_device(llm.engine.runner.params, expert_parallel)
    assert len(held) == tp
    dtype = jax.tree.leaves(llm.engine.runner.params)[0].dtype
    plan = param_bytes_per_device(cfg, dtype, tp)
    assert set(held.values()) == {plan["per_device"]}, (held, plan)
    assert set(experts.values()) == {plan["experts_per_device"]}, (experts, plan)
    # the routed experts split evenly but for their down-projection biases (replicated)
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_layers))
    down_bias = moe_layers * cfg.moe.num_experts * cfg.hidden_size * dtype.itemsize if cfg.moe.expert_bias else 0
    assert plan["experts_total"] > 0
    assert plan["experts_per_device"] == (plan["experts_total"] - down_bias) // tp + down_bias
