"""GPTJForCausalLM: parallel block with one shared LayerNorm (x + attn(ln(x)) + mlp(ln(x))),
partial rotary (`rotary_dim`) in GPT-J's interleaved pair layout, no q/k/v/o bias, GELU(tanh)
MLP with bias, untied LM head with a bias."""

from __future__ import annotations

from models import hf_config
from models.architecture import DEFAULT_IGNORED, Architecture
from models.config import ModelConfig
from models.families._llama_like import attention_weights
from models.weights import TensorMap, embedding, linear, norm


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, hidden=("n_embd", "hidden_size"), layers=("n_layer", "num_hidden_layers"),
                                   heads=("n_head", "num_attention_heads"), intermediate=("n_inner",),
                                   max_positions=("n_positions", "max_position_embeddings"),
                                   eps=("layer_norm_epsilon",), eps_default=1e-5)
    rotary_dim = hf.get("rotary_dim") or fields["head_dim"]
    rope = hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"],
                                 rotary_dim=int(rotary_dim), interleaved=True)
    return {**fields, "rope": rope, "norm": "layer", "norm_bias": True, "mlp": "plain", "mlp_bias": True,
            "activation": hf_config.activation(hf.get("activation_function", "gelu_new")),
            "residual": "parallel", "lm_head_bias": True}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = embedding("transformer.wte", "embed_tokens") + norm("transformer.ln_f", "norm", bias=True)
    if not cfg.tie_word_embeddings:
        maps += linear("lm_head", "lm_head", cfg.lm_head_bias)
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}", f"layers.{i}"
        maps += norm(f"{hf}.ln_1", f"{ours}.input_layernorm", bias=True)
        maps += attention_weights(cfg, hf, ours, hf_attn="attn", names=("q_proj", "k_proj", "v_proj", "out_proj"))
        maps += linear(f"{hf}.mlp.fc_in", f"{ours}.mlp.up_proj", True)
        maps += linear(f"{hf}.mlp.fc_out", f"{ours}.mlp.down_proj", True)
    return maps


ARCHITECTURES = (Architecture("GPTJForCausalLM", _fields, _weights,
                              "parallel block, partial interleaved RoPE, LM head bias",
                              ignored=DEFAULT_IGNORED + (r".*\.attn\.(bias|masked_bias)",)),)
