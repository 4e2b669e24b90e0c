"""models/memory_plan.py: per-device parameter and KV bytes under tensor and expert parallelism,
counted by hand on a small MoE config, and the Mixtral-8x7B preset planned on 80 GB devices.
(The per-device bytes are also checked against what each of 8 CPU devices really holds:
tests/parallel/_tp_moe_checks.py.)"""

from __future__ import annotations

import pytest

from models.config import ModelConfig, MoeConfig
from models.memory_plan import format_plans, main, memory_plan
from models.presets import PRESETS, preset_config
from models.sharding import param_shapes

H, I, E, V, L, HQ, HKV, D = 64, 32, 8, 512, 2, 8, 2, 16


def _cfg(num_experts: int = E, **moe) -> ModelConfig:
    return ModelConfig(architecture="Qwen3MoeForCausalLM", vocab_size=V, hidden_size=H, intermediate_size=128,
                       num_layers=L, num_heads=HQ, num_kv_heads=HKV, head_dim=D, max_position_embeddings=64,
                       qk_norm="head", moe=MoeConfig(num_experts=num_experts, top_k=2, intermediate_size=I, **moe))


@pytest.mark.parametrize("tp,expert_parallel", [(1, False), (4, False), (4, True), (8, True)])
def test_plan_counts_every_weight_and_its_share(tp, expert_parallel):
    plan = memory_plan(_cfg(), tensor_parallel_size=tp, expert_parallel=expert_parallel, dtype="bfloat16",
                       device_bytes=10**6, gpu_memory_utilization=0.5)
    experts = L * E * 3 * H * I * 2  # gate, up, down per expert, bf16
    router = L * H * E * 2
    attention = L * (H * HQ * D * 2 + H * HKV * D * 2) * 2  # q, o; k, v
    norms = (L * (2 * H + 2 * D) + H) * 2  # two per layer, q/k norms, the final norm
    vocab = 2 * V * H * 2  # embedding and LM head, both vocab-split
    assert plan.expert_bytes_total == experts
    assert plan.param_bytes_total == experts + router + attention + norms + vocab
    kv_shared = tp > HKV  # k/v projections replicated then
    kv_proj = L * 2 * H * HKV * D * 2
    sharded = experts + vocab + attention - (kv_proj if kv_shared else 0)
    assert plan.param_bytes_per_device == sharded // tp + router + norms + (kv_proj if kv_shared else 0)
    assert plan.expert_bytes_per_device == experts // tp
    held = (E // tp, I) if expert_parallel else (E, I // tp)  # whole experts, or a slice of each
    assert (plan.experts_per_device, plan.expert_width_per_device) == held
    kv_heads_per_device = max(HKV, tp) // tp
    assert plan.kv_bytes_per_token_per_device == 2 * L * kv_heads_per_device * D * 2
    assert plan.kv_budget_bytes_per_device == 500_000 - plan.param_bytes_per_device
    assert plan.kv_tokens == max(0, plan.kv_budget_bytes_per_device // plan.kv_bytes_per_token_per_device)
    assert plan.fits == (plan.kv_tokens > 0) and plan.as_dict()["kv_tokens"] == plan.kv_tokens


def test_expert_biases_down_bias_replicated():
    cfg = _cfg(expert_bias=True)
    plan = memory_plan(cfg, tensor_parallel_size=4, expert_parallel=True, dtype="float32")
    split = L * E * (3 * H * I + 2 * I) * 4  # kernels, gate/up biases
    down_bias = L * E * H * 4
    assert plan.expert_bytes_total == split + down_bias
    assert plan.expert_bytes_per_device == split // 4 + down_bias


@pytest.mark.parametrize("num_experts,kwargs,message", [
    (E, dict(tensor_parallel_size=3), r"tensor_parallel_size \(3\) must divide num_attention_heads"),
    (4, dict(tensor_parallel_size=8, expert_parallel=True), r"must divide num_experts \(4\)"),
    (E, dict(device_bytes=0), "device_bytes must be >= 1"),
    (E, dict(gpu_memory_utilization=1.5), r"gpu_memory_utilization must be in \(0, 1\]"),
])
def test_plan_validation_names_the_field(num_experts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        memory_plan(_cfg(num_experts), **kwargs)


def test_expert_parallel_needs_experts():
    dense = ModelConfig(architecture="LlamaForCausalLM", vocab_size=V, hidden_size=H, intermediate_size=128,
                        num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=64)
    with pytest.raises(ValueError, match="expert_parallel needs a mixture of experts"):
        memory_plan(dense, expert_parallel=True)
    assert memory_plan(dense).expert_bytes_total == 0


def test_mixtral_8x7b_needs_two_80gb_devices(capsys):
    cfg = preset_config("mixtral-8x7b")
    shapes = param_shapes(cfg)
    plans = [memory_plan(cfg, tensor_parallel_size=tp, expert_parallel=ep, shapes=shapes)
             for tp, ep in ((1, False), (2, False), (8, False), (8, True))]
    single, two, tp8, ep8 = plans
    assert abs(single.param_bytes_total / (2 * 46.70e9) - 1) < 0.01  # 46.7 B parameters in bf16
    assert not single.fits and two.fits and two.kv_tokens < tp8.kv_tokens
    assert tp8.param_bytes_per_device == ep8.param_bytes_per_device  # the same bytes, split differently
    assert (tp8.experts_per_device, tp8.expert_width_per_device) == (8, 14336 // 8)
    assert (ep8.experts_per_device, ep8.expert_width_per_device) == (1, 14336)
    assert tp8.kv_bytes_per_token_per_device == 2 * 32 * 1 * 128 * 2  # 8 KV heads: one per device
    table = format_plans("mixtral-8x7b", plans)
    assert "no fit" in table and "1 x width 14336" in table


def test_cli_prints_tp_and_ep_rows(capsys, monkeypatch):
    tiny = dict(architectures=["Qwen3MoeForCausalLM"], vocab_size=V, hidden_size=H, intermediate_size=128,
                moe_intermediate_size=I, num_hidden_layers=L, num_attention_heads=HQ, num_key_value_heads=HKV,
                head_dim=D, max_position_embeddings=64, num_experts=E, num_experts_per_tok=2)
    monkeypatch.setitem(PRESETS, "tiny-moe", tiny)
    assert main(["tiny-moe", "--tp", "1,3,8", "--device-gb", "141"]) == 0
    out, err = capsys.readouterr()
    assert "8 x width 4" in out and "1 x width 32" in out and "8 x width 32" in out and "devices of 141 GB" in out
    assert "tiny-moe tp=3 TP: tensor_parallel_size (3) must divide num_attention_heads (8)" in err
