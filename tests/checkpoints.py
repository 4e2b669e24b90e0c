"""Tiny random-weight HF checkpoints for tests, built with transformers (PyTorch CPU).

`VARIANTS` names every architecture and variant the models support: the HF config class, its
arguments (the family's own key names) and the init std (`initializer_range`), picked per family
so greedy output does not collapse into one repeated token. Every checkpoint carries the trained
byte-level BPE tokenizer of the default model.

Architectures transformers has no class for (the Llama-compatible names, remote-code families)
are built from a checkpoint of their `reference` class and converted by `convert` (their own
layout, written here independently of the package's weight maps); the HF model the parity
tests compare against is then the reference one, saved in `reference_dir(model_dir)`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable

import numpy as np

from pagedjax.default_model import train_tokenizer

LLAMA_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
GPT2_BASE = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2)
FALCON_BASE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                   bos_token_id=1, eos_token_id=2)
REFERENCE_DIR = "hf_reference"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One tiny checkpoint: `config_class(**kwargs)` with weights of std `std`, optionally converted."""

    config_class: str
    kwargs: dict
    std: float = 0.15
    seed: int = 0  # torch seed of the weights (some seeds' greedy outputs collapse sooner than others)
    convert: Callable[[dict, dict], tuple[dict, dict]] | None = None  # (config, tensors) -> converted


def _rope(**kwargs) -> dict:
    return dict(rope_parameters=dict(rope_theta=10000.0, **kwargs))


def _rename_architecture(name: str, **config_changes):
    def convert(config: dict, tensors: dict) -> tuple[dict, dict]:
        return {**config, "architectures": [name], **config_changes}, tensors
    return convert


def _to_yi_ln_names(config: dict, tensors: dict) -> tuple[dict, dict]:
    """Early Yi checkpoints: Llama's layout with norms named ln1 / ln2."""
    renamed = {k.replace("input_layernorm", "ln1").replace("post_attention_layernorm", "ln2"): v
               for k, v in tensors.items()}
    return {**config, "architectures": ["YiForCausalLM"]}, renamed


def _to_internlm(config: dict, tensors: dict) -> tuple[dict, dict]:
    """InternLM (v1): Llama's layout; `bias` (on q, k, v, o) replaces attention_bias."""
    config = {k: v for k, v in config.items() if k != "attention_bias"}
    return {**config, "architectures": ["InternLMForCausalLM"], "bias": True}, tensors


def _to_internlm2(config: dict, tensors: dict) -> tuple[dict, dict]:
    """InternLM2's layout (its own conversion script, inverted): wqkv rows grouped per KV head as
    [q heads of the group..., k, v]; w1/w3/w2 = gate/up/down; tok_embeddings / output."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    dim = config["hidden_size"] // heads
    group = heads // kv_heads
    out = {"model.tok_embeddings.weight": tensors["model.embed_tokens.weight"],
           "model.norm.weight": tensors["model.norm.weight"], "output.weight": tensors["lm_head.weight"]}
    for i in range(config["num_hidden_layers"]):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        q = tensors[src + "self_attn.q_proj.weight"].reshape(kv_heads, group, dim, -1)
        k = tensors[src + "self_attn.k_proj.weight"].reshape(kv_heads, 1, dim, -1)
        v = tensors[src + "self_attn.v_proj.weight"].reshape(kv_heads, 1, dim, -1)
        out[dst + "attention.wqkv.weight"] = np.concatenate([q, k, v], axis=1).reshape(-1, q.shape[-1])
        out[dst + "attention.wo.weight"] = tensors[src + "self_attn.o_proj.weight"]
        out[dst + "feed_forward.w1.weight"] = tensors[src + "mlp.gate_proj.weight"]
        out[dst + "feed_forward.w3.weight"] = tensors[src + "mlp.up_proj.weight"]
        out[dst + "feed_forward.w2.weight"] = tensors[src + "mlp.down_proj.weight"]
        out[dst + "attention_norm.weight"] = tensors[src + "input_layernorm.weight"]
        out[dst + "ffn_norm.weight"] = tensors[src + "post_attention_layernorm.weight"]
    return {**config, "architectures": ["InternLM2ForCausalLM"], "bias": False}, out


def _to_baichuan(config: dict, tensors: dict) -> tuple[dict, dict]:
    """Baichuan-7B's layout: Llama's names with q | k | v stacked into self_attn.W_pack (MHA)."""
    out = {}
    for name, value in tensors.items():
        if ".self_attn.q_proj." in name:
            base = name.replace(".q_proj.", ".W_pack.")
            out[base] = np.concatenate([value, tensors[name.replace("q_proj", "k_proj")],
                                        tensors[name.replace("q_proj", "v_proj")]], axis=0)
        elif ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
            out[name] = value
    return {**config, "architectures": ["BaiChuanForCausalLM"]}, out


VARIANTS: dict[str, Variant] = {
    # --- Llama family and its rope scaling types
    "llama": Variant("LlamaConfig", dict(LLAMA_BASE, head_dim=16)),
    "llama-tied-headdim32": Variant("LlamaConfig", dict(LLAMA_BASE, head_dim=32, tie_word_embeddings=True,
                                                        attention_bias=True)),
    "llama-mha": Variant("LlamaConfig", dict(LLAMA_BASE, num_key_value_heads=4)),
    # GQA group of 4: tensor parallelism up to 8 ways, KV heads replicated beyond 2
    "llama-8q2kv": Variant("LlamaConfig", dict(LLAMA_BASE, num_attention_heads=8, head_dim=16)),
    "llama-rope-linear": Variant("LlamaConfig", dict(LLAMA_BASE, **_rope(rope_type="linear", factor=2.0))),
    "llama-rope-dynamic": Variant("LlamaConfig", dict(LLAMA_BASE, max_position_embeddings=24,
                                                      **_rope(rope_type="dynamic", factor=4.0))),
    "llama-rope-llama3": Variant("LlamaConfig", dict(LLAMA_BASE, **_rope(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "llama-rope-yarn": Variant("LlamaConfig", dict(LLAMA_BASE, **_rope(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=32.0, beta_slow=1.0))),
    "mistral": Variant("MistralConfig", dict(LLAMA_BASE, head_dim=16, sliding_window=None)),
    # Mistral v0.1's sliding window on every layer: smaller than a block, and spanning two blocks
    "mistral-window5": Variant("MistralConfig", dict(LLAMA_BASE, head_dim=16, sliding_window=5)),
    "mistral-window20": Variant("MistralConfig", dict(LLAMA_BASE, head_dim=16, sliding_window=20)),
    "qwen2": Variant("Qwen2Config", dict(LLAMA_BASE)),
    "qwen3": Variant("Qwen3Config", dict(LLAMA_BASE, head_dim=16)),
    # --- Llama-compatible names and remote-code families, through a conversion of a Llama checkpoint
    "aquila": Variant("LlamaConfig", dict(LLAMA_BASE), convert=_rename_architecture("AquilaForCausalLM")),
    "yi": Variant("LlamaConfig", dict(LLAMA_BASE), convert=_to_yi_ln_names),
    "internlm": Variant("LlamaConfig", dict(LLAMA_BASE, num_key_value_heads=4, attention_bias=True),
                        convert=_to_internlm),
    "internlm2": Variant("LlamaConfig", dict(LLAMA_BASE), convert=_to_internlm2),
    "baichuan": Variant("LlamaConfig", dict(LLAMA_BASE, num_key_value_heads=4), convert=_to_baichuan),
    # --- GPT-2 and GPTBigCode
    "gpt2": Variant("GPT2Config", dict(GPT2_BASE)),
    "gpt2-scale-by-layer": Variant("GPT2Config", dict(GPT2_BASE, n_head=8, scale_attn_by_inverse_layer_idx=True,
                                                      tie_word_embeddings=False)),
    "gpt-bigcode": Variant("GPTBigCodeConfig", dict(GPT2_BASE)),
    # --- OPT: pre-norm (125m-like) and post-norm with project_in/out (350m-like)
    "opt": Variant("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                     max_position_embeddings=256, word_embed_proj_dim=64, bos_token_id=1,
                                     eos_token_id=2, pad_token_id=0)),
    "opt-350m-post-norm": Variant("OPTConfig", dict(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
        word_embed_proj_dim=32, do_layer_norm_before=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # --- GPT-J and GPT-NeoX: parallel blocks, partial rotary
    "gptj": Variant("GPTJConfig", dict(GPT2_BASE, rotary_dim=8, tie_word_embeddings=False)),
    "gpt-neox": Variant("GPTNeoXConfig", dict(LLAMA_BASE, num_key_value_heads=None, layer_norm_eps=1e-5,
                                              **_rope(partial_rotary_factor=0.25))),
    "gpt-neox-sequential": Variant("GPTNeoXConfig", dict(LLAMA_BASE, num_key_value_heads=None,
                                                         use_parallel_residual=False, attention_bias=False,
                                                         **_rope(partial_rotary_factor=0.5))),
    # --- Falcon: 7B (multi-query, parallel, 1 norm), new decoder (KV groups, 2 or 1 norms), RW (ALiBi, sequential)
    "falcon-7b": Variant("FalconConfig", dict(FALCON_BASE)),
    "falcon-new-decoder": Variant("FalconConfig", dict(FALCON_BASE, new_decoder_architecture=True, num_kv_heads=2,
                                                       bias=True)),
    "falcon-new-decoder-1-norm": Variant("FalconConfig", dict(FALCON_BASE, new_decoder_architecture=True,
                                                              num_kv_heads=2, num_ln_in_parallel_attn=1)),
    "falcon-rw-name": Variant("FalconConfig", dict(FALCON_BASE), convert=_rename_architecture("RWForCausalLM")),
    "falcon-rw-alibi": Variant("FalconConfig", dict(FALCON_BASE, alibi=True, multi_query=False, parallel_attn=False,
                                                    bias=True), std=0.3, seed=1),
    # --- BLOOM and MPT (ALiBi); 6 heads take the non-power-of-two slope paths
    "bloom": Variant("BloomConfig", dict(hidden_size=48, n_layer=2, n_head=6, bos_token_id=1, eos_token_id=2), std=0.5, seed=2),
    "mpt": Variant("MptConfig", dict(d_model=48, n_heads=6, n_layers=2, max_seq_len=256,
                                     attn_config=dict(alibi=True, alibi_bias_max=8, clip_qkv=0.6),
                                     bos_token_id=1, eos_token_id=2)),
    # --- Gemma: (1 + w) norms, sqrt(hidden) scale; Gemma 2: sandwich norms, soft-caps and alternating
    # windows shorter than the prompts; Gemma 3: q/k norms and a local RoPE on windowed layers
    "gemma": Variant("GemmaConfig", dict(LLAMA_BASE, head_dim=32, num_key_value_heads=1)),
    "gemma2": Variant("Gemma2Config", dict(LLAMA_BASE, head_dim=16, sliding_window=8, query_pre_attn_scalar=32,
                                           attn_logit_softcapping=2.0, final_logit_softcapping=5.0)),
    "gemma3": Variant("Gemma3TextConfig", dict(
        LLAMA_BASE, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    # --- Phi (parallel, partial rotary, q/k LayerNorm) and Phi-3 (fused qkv / gate_up, longrope, window)
    "phi": Variant("PhiConfig", dict(LLAMA_BASE, num_key_value_heads=4, qk_layernorm=True,
                                     **_rope(partial_rotary_factor=0.5))),
    "phi3-longrope": Variant("Phi3Config", dict(
        LLAMA_BASE, pad_token_id=0, max_position_embeddings=256, original_max_position_embeddings=128,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=[1.0 + 0.1 * i for i in range(8)],
                             long_factor=[1.0 + 0.5 * i for i in range(8)]))),
    "phi3-window-partial": Variant("Phi3Config", dict(LLAMA_BASE, pad_token_id=0, sliding_window=12, **_rope(partial_rotary_factor=0.5))),
    "starcoder2-window": Variant("Starcoder2Config", dict(LLAMA_BASE, norm_epsilon=1e-5, sliding_window=10,
                                                          tie_word_embeddings=True)),
    "olmo": Variant("OlmoConfig", dict(LLAMA_BASE, clip_qkv=0.5)),
    "olmo2": Variant("Olmo2Config", dict(LLAMA_BASE), seed=1),
    "stablelm": Variant("StableLmConfig", dict(LLAMA_BASE, qk_layernorm=True, use_qkv_bias=True,
                                               **_rope(partial_rotary_factor=0.25))),
    "stablelm-parallel": Variant("StableLmConfig", dict(LLAMA_BASE, use_parallel_residual=True,
                                                        **_rope(partial_rotary_factor=0.5))),
    "granite": Variant("GraniteConfig", dict(LLAMA_BASE, embedding_multiplier=3.0, attention_multiplier=0.2,
                                             residual_multiplier=0.5, logits_scaling=2.0)),
    # --- mixtures of experts (a few experts of width 32-64; hidden 64)
    "mixtral": Variant("MixtralConfig", dict(LLAMA_BASE, intermediate_size=64, head_dim=16, num_local_experts=4,
                                             num_experts_per_tok=2)),
    # shared expert with its sigmoid gate, unnormalised top-k, a dense layer (mlp_only_layers)
    "qwen2-moe": Variant("Qwen2MoeConfig", dict(LLAMA_BASE, num_hidden_layers=3, moe_intermediate_size=32,
                                                shared_expert_intermediate_size=96, num_experts=4,
                                                num_experts_per_tok=2, mlp_only_layers=[1])),
    # every other layer sparse (decoder_sparse_step), normalised top-3
    "qwen2-moe-sparse-step": Variant("Qwen2MoeConfig", dict(LLAMA_BASE, moe_intermediate_size=32,
                                                            shared_expert_intermediate_size=64, num_experts=4,
                                                            num_experts_per_tok=3, decoder_sparse_step=2,
                                                            norm_topk_prob=True)),
    # 8 heads and 8 experts: tensor and expert parallel up to 8 ways
    "qwen3-moe": Variant("Qwen3MoeConfig", dict(LLAMA_BASE, num_attention_heads=8, head_dim=16, moe_intermediate_size=32,
                                                num_experts=8, num_experts_per_tok=2, norm_topk_prob=True)),
    # sinks, windows shorter than the prompts on alternate layers, yarn rope, router bias, biased
    # experts with a SwiGLU clamp the activations reach (limit 1)
    "gpt-oss": Variant("GptOssConfig", dict(LLAMA_BASE, intermediate_size=32, head_dim=16, num_local_experts=4,
                                            num_experts_per_tok=2, sliding_window=8, swiglu_limit=1.0,
                                            rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0,
                                                                 beta_fast=32.0, beta_slow=1.0, truncate=False,
                                                                 original_max_position_embeddings=64))),
}


@functools.lru_cache(maxsize=1)
def tokenizer():
    return train_tokenizer()


def hf_config_dict(variant: str) -> dict:
    """The `config.json` contents of `variant` without building its weights (conversions that
    need tensors, InternLM2's and Baichuan's, get them from `build_checkpoint`)."""
    import transformers

    spec = VARIANTS[variant]
    config = getattr(transformers, spec.config_class)(vocab_size=len(tokenizer()), initializer_range=spec.std,
                                                      **spec.kwargs)
    model_class = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    config = {**config.to_dict(), "architectures": [model_class.__name__]}
    return spec.convert(config, {})[0] if spec.convert else config


def reference_dir(model_dir: str) -> str:
    """The directory of the HF checkpoint the model in `model_dir` is tested against."""
    converted = os.path.join(model_dir, REFERENCE_DIR)
    return converted if os.path.isdir(converted) else model_dir


def build_checkpoint(variant: str, out_dir: str, dtype: str = "float32", seed: int | None = None) -> str:
    """Writes a random-weight checkpoint of `variant` (HF `save_pretrained`) plus the tokenizer."""
    import torch
    import transformers

    spec = VARIANTS[variant]
    tok = tokenizer()
    config = getattr(transformers, spec.config_class)(vocab_size=len(tok), initializer_range=spec.std, **spec.kwargs)
    torch.manual_seed(spec.seed if seed is None else seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, REFERENCE_DIR) if spec.convert else out_dir
    model.save_pretrained(target)
    tok.save_pretrained(out_dir)
    if spec.convert:
        _write_converted(target, out_dir, spec.convert)
    return out_dir


def _write_converted(reference: str, out_dir: str, convert) -> None:
    from models.safetensors_io import SafetensorsFile, save_file

    with open(os.path.join(reference, "config.json")) as f:
        config = json.load(f)
    st = SafetensorsFile(os.path.join(reference, "model.safetensors"))
    config, tensors = convert(config, {name: np.array(st.get(name)) for name in st.names()})
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
