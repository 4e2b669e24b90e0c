"""What the mixture-of-experts families share: their partition rules, the config keys of a MoE
(`num_experts` / `num_local_experts`, `num_experts_per_tok`, `mlp_only_layers`,
`decoder_sparse_step`) and the weight map of a sparse layer whose checkpoint holds one tensor
per expert (Mixtral's `block_sparse_moe.experts.N.w1`, Qwen-MoE's `mlp.experts.N.gate_proj`),
stacked at load into our `[num_experts, in, out]` parameters (models/weights.py ExpertSlice)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from models import hf_config
from models.architecture import MOE_RULES, STANDARD_RULES
from models.config import ModelConfig, MoeConfig
from models.families._llama_like import mlp_weights
from models.weights import TensorMap, linear, stacked_experts

PARTITION_RULES = MOE_RULES + STANDARD_RULES
OURS_EXPERTS = ("gate_proj", "up_proj", "down_proj")


def moe_config(hf: Mapping[str, Any], *, intermediate: tuple[str, ...] = ("moe_intermediate_size",),
               **family) -> MoeConfig | None:
    """The `MoeConfig` of `hf` (None when it has no experts: every layer dense, as HF builds it):
    the keys every family reads (experts, top-k, the experts' width, which layers are sparse:
    HF's mlp_only_layers, decoder_sparse_step) plus the family's own choices `family`."""
    num_experts = int(hf_config.get(hf, "num_experts", "num_local_experts", default=0))
    if num_experts == 0:
        return None
    return MoeConfig(num_experts=num_experts, top_k=int(hf_config.get(hf, "num_experts_per_tok", "experts_per_token")),
                     intermediate_size=int(hf_config.get(hf, *intermediate)),
                     dense_layers=tuple(hf.get("mlp_only_layers") or ()),
                     sparse_step=int(hf.get("decoder_sparse_step") or 1), **family)


def sparse_feed_forward(*, block: str = "mlp", router: str = "gate", experts: tuple[str, str, str] = OURS_EXPERTS,
                        shared_expert: str = "shared_expert") -> Callable[[ModelConfig, str, str, int], list[TensorMap]]:
    """A `feed_forward` for `llama_weights`: on sparse layers the router `{block}.{router}`, the
    per-expert Linear weights `{block}.experts.N.{gate, up, down names}` and, if the config has
    one, the shared expert and its gate; on dense layers Llama's MLP."""
    def feed_forward(cfg: ModelConfig, hf_layer: str, ours: str, layer: int) -> list[TensorMap]:
        if not cfg.is_moe_layer(layer):
            return mlp_weights(cfg, f"{hf_layer}.mlp", ours)
        moe, hf_block = cfg.moe, f"{hf_layer}.{block}"
        maps = linear(f"{hf_block}.{router}", f"{ours}.mlp.router", moe.router_bias)
        for hf_name, ours_name in zip(experts, OURS_EXPERTS):
            maps += stacked_experts(f"{hf_block}.experts.{{}}.{hf_name}.weight",
                                    f"{ours}.mlp.experts.{ours_name}.kernel", moe.num_experts)
        if moe.shared_expert_intermediate_size:
            for name in OURS_EXPERTS:
                maps += linear(f"{hf_block}.{shared_expert}.{name}", f"{ours}.mlp.shared_expert.{name}", False)
            if moe.shared_expert_gate:
                maps += linear(f"{hf_block}.{shared_expert}_gate", f"{ours}.mlp.shared_expert_gate", False)
        return maps

    return feed_forward
