"""Baichuan (remote code): Llama's layers and names with q | k | v fused into `self_attn.W_pack`.

  BaiChuanForCausalLM  Baichuan-7B: RoPE
  BaichuanForCausalLM  Baichuan-13B and Baichuan 2: as vLLM decides, RoPE when hidden_size is 4096
                       (the 7B models), else ALiBi (the 13B models); Baichuan 2 (vocabulary 125696)
                       normalises its LM head's rows (NormHead), done once at load
Tested through a conversion of a Llama checkpoint (tests/checkpoints.py).
"""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import LLAMA_NORMS, head_weights, layer_norm_weights, mlp_weights
from models.weights import NormalizeRows, Split, TensorMap, fused, linear

_BAICHUAN2_VOCAB = 125696


def _fields(hf, *, alibi: bool) -> dict:
    fields = hf_config.base_fields(hf, max_positions=("max_position_embeddings", "model_max_length"))
    fields["num_kv_heads"] = fields["num_heads"]  # W_pack is always multi-head
    fields["lm_head_normalized"] = fields["vocab_size"] == _BAICHUAN2_VOCAB
    if alibi:
        return {**fields, "position": "alibi", "alibi_variant": "bloom"}
    return {**fields, "rope": hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"])}


def _baichuan_fields(hf) -> dict:
    return _fields(hf, alibi=int(hf_config.get(hf, "hidden_size")) != 4096)


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = head_weights(cfg, "model.embed_tokens", "model.norm")
    if cfg.lm_head_normalized and not cfg.tie_word_embeddings:
        maps = [m if m.hf != "lm_head.weight" else TensorMap(m.hf, m.ours, NormalizeRows()) for m in maps]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        attn = f"{ours}.self_attn"
        maps += layer_norm_weights(cfg, hf, ours, LLAMA_NORMS)
        maps += fused(f"{hf}.self_attn.W_pack", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"), False, Split())
        maps += linear(f"{hf}.self_attn.o_proj", f"{attn}.o_proj", False)
        maps += mlp_weights(cfg, f"{hf}.mlp", ours)
    return maps


ARCHITECTURES = (
    Architecture("BaiChuanForCausalLM", lambda hf: _fields(hf, alibi=False), _weights, "Llama's layers, fused W_pack",
                 reference="LlamaForCausalLM"),
    Architecture("BaichuanForCausalLM", _baichuan_fields, _weights,
                 "as BaiChuan; ALiBi unless hidden_size is 4096; Baichuan 2's NormHead",
                 reference="LlamaForCausalLM", parity_tested=False),
)
