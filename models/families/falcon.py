"""FalconForCausalLM (and its early name RWForCausalLM). Three layouts, all with LayerNorm:

  * Falcon-7B: multi-query (one KV head), parallel block with one norm, fused q | k | v;
  * new decoder architecture (Falcon-40B/180B): `num_kv_heads` KV groups, parallel block with
    `num_ln_in_parallel_attn` (2 by default) norms, q/k/v rows grouped per KV head;
  * Falcon-RW: sequential block, per-head fused qkv, ALiBi (`alibi=True`) whose slopes HF rounds
    to bfloat16 and scales with the softmax scale.
"""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.weights import GroupedQKV, TensorMap, embedding, fused, linear, norm

PRESETS = {
    # tiiuae/falcon-7b
    "falcon-7b": dict(architectures=["FalconForCausalLM"], vocab_size=65024, hidden_size=4544, num_attention_heads=71,
                      num_hidden_layers=32, multi_query=True, parallel_attn=True, new_decoder_architecture=False,
                      bias=False, alibi=False, layer_norm_epsilon=1e-5, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=11, eos_token_id=11, dtype="bfloat16"),
}


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, layers=("num_hidden_layers", "n_layer"), heads=("num_attention_heads", "n_head"),
                                   intermediate=("ffn_hidden_size",), eps=("layer_norm_epsilon",), eps_default=1e-5,
                                   tie_default=True)
    num_heads = fields["num_heads"]
    new_arch = bool(hf.get("new_decoder_architecture", False))
    if new_arch:
        num_kv_heads = int(hf.get("num_kv_heads") or num_heads)
    else:
        num_kv_heads = 1 if hf.get("multi_query", True) else num_heads
    parallel = new_arch or bool(hf.get("parallel_attn", True))
    norms = int(hf.get("num_ln_in_parallel_attn") or 2) if new_arch else 1
    bias = bool(hf.get("bias", False))
    alibi = bool(hf.get("alibi", False))
    fields.update(num_kv_heads=num_kv_heads, head_dim=fields["hidden_size"] // num_heads, norm="layer",
                  norm_bias=True, mlp="plain", activation=hf_config.activation(hf.get("activation", "gelu")),
                  mlp_bias=bias, qkv_bias=bias, o_bias=bias, residual="parallel" if parallel else "sequential",
                  parallel_norms=norms)
    if alibi:
        fields.update(position="alibi", alibi_variant="falcon")
    else:
        fields["rope"] = hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"])
    return fields


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = embedding("transformer.word_embeddings", "embed_tokens") + norm("transformer.ln_f", "norm", bias=True)
    if not cfg.tie_word_embeddings:
        maps += linear("lm_head", "lm_head", False)
    # Every layout is rows [Hkv, q_per_kv + 2, D]: MQA is one group of all query heads, per-head
    # (Falcon-RW) is H groups of one query head.
    qkv = GroupedQKV(cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim)
    two_norms = cfg.residual == "parallel" and cfg.parallel_norms == 2
    norm_names = (("ln_attn", "ln_mlp") if two_norms
                  else ("input_layernorm",) if cfg.residual == "parallel" else ("input_layernorm", "post_attention_layernorm"))
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}", f"layers.{i}"
        attn = f"{ours}.self_attn"
        for hf_norm, ours_norm in zip(norm_names, ("input_layernorm", "post_attention_layernorm")):
            maps += norm(f"{hf}.{hf_norm}", f"{ours}.{ours_norm}", bias=True)
        maps += fused(f"{hf}.self_attention.query_key_value", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"),
                      cfg.qkv_bias, qkv)
        maps += linear(f"{hf}.self_attention.dense", f"{attn}.o_proj", cfg.o_bias)
        maps += linear(f"{hf}.mlp.dense_h_to_4h", f"{ours}.mlp.up_proj", cfg.mlp_bias)
        maps += linear(f"{hf}.mlp.dense_4h_to_h", f"{ours}.mlp.down_proj", cfg.mlp_bias)
    return maps


_DESCRIPTION = "multi-query or grouped fused qkv, parallel (1 or 2 norms) or sequential block, RoPE or ALiBi"
ARCHITECTURES = (
    Architecture("FalconForCausalLM", _fields, _weights, _DESCRIPTION, presets=PRESETS),
    Architecture("RWForCausalLM", _fields, _weights, "Falcon's early name", reference="FalconForCausalLM"),
)
