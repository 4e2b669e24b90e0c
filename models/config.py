"""`ModelConfig`: the frozen, self-validating view of a Hugging Face `config.json`.

One config describes every family: the hyper-parameters every decoder has, plus the block
choices the shared layers (models/blocks/) read: which norm, which MLP, which position
encoding, which residual layout, what each layer's attention computes. Each family's
`Architecture` (models/families/) translates its HF config into these fields; the defaults are
Llama's. Both HF config generations are read: the older top-level `rope_theta` / `rope_scaling`
/ `torch_dtype` keys and transformers v5's `rope_parameters` / `dtype`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from pallas_kernels.attention_spec import AttentionSpec

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
NORM_KINDS = ("rms", "layer")
MLP_KINDS = ("gated", "plain")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
POSITION_KINDS = ("rope", "learned", "alibi", "none")
ALIBI_VARIANTS = ("bloom", "falcon", "mpt")
RESIDUAL_KINDS = ("sequential", "parallel")
# Where a sub-layer's norms sit: "pre" x + f(n(x)); "sandwich" x + n2(f(n(x))) (Gemma 2/3);
# "output" x + n(f(x)) (OLMo 2); "post" n(x + f(x)) (OPT-350m).
NORM_PLACEMENTS = ("pre", "sandwich", "output", "post")
QK_NORM_KINDS = ("head", "all_heads", "per_head")
# How a router's logits become top-k expert weights (models/blocks/moe.py):
#   softmax_topk  softmax over all experts, then the top k probabilities (Mixtral, Qwen-MoE)
#   topk_softmax  the top k logits, then a softmax over those k (GPT-OSS)
ROUTING_KINDS = ("softmax_topk", "topk_softmax")
# An expert's feed-forward: "gated" act(gate(x)) * up(x) with the model's activation;
# "clamped_swiglu" GPT-OSS's (up + 1) * g * sigmoid(alpha * g), g and up clamped to the limit.
EXPERT_MLP_KINDS = ("gated", "clamped_swiglu")


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding parameters (HF `rope_parameters` / `rope_scaling`)."""

    theta: float = 10000.0
    rope_type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0  # linear, dynamic, llama3, yarn, longrope
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int | None = None  # llama3, yarn, longrope
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn: round the correction range to whole dimensions
    attention_factor: float | None = None  # yarn, longrope: cos/sin scale (None: derived from factor)
    short_factor: tuple[float, ...] | None = None  # longrope, rotary_dim // 2 values
    long_factor: tuple[float, ...] | None = None  # longrope, used from original_max_position_embeddings on
    rotary_dim: int | None = None  # dims rotated per head (partial rotary); None = all of head_dim
    interleaved: bool = False  # GPT-J pairs (2i, 2i+1) instead of NeoX halves (i, i + d/2)

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"rope_scaling type {self.rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
            )
        if self.theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.theta}")
        if self.rope_type != "default" and self.factor <= 0:
            raise ValueError(f"rope factor must be positive, got {self.factor}")
        if self.rope_type in ("llama3", "yarn", "longrope") and self.original_max_position_embeddings is None:
            raise ValueError(f"{self.rope_type} rope scaling needs original_max_position_embeddings")
        if self.rotary_dim is not None and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise ValueError(f"rotary_dim must be an even number >= 2, got {self.rotary_dim}")
        if self.rope_type == "longrope":
            if self.short_factor is None or self.long_factor is None:
                raise ValueError("longrope rope scaling needs short_factor and long_factor")
            if len(self.short_factor) != len(self.long_factor):
                raise ValueError("longrope short_factor and long_factor must have the same length")

    def dim(self, head_dim: int) -> int:
        """Dims rotated per head."""
        return head_dim if self.rotary_dim is None else self.rotary_dim


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """A mixture-of-experts feed-forward (HF's `num_experts`, `num_experts_per_tok`, ...).

    A layer is sparse iff `layer not in dense_layers and (layer + 1) % sparse_step == 0`
    (HF's `mlp_only_layers` and `decoder_sparse_step`); the other layers keep the dense MLP of
    `ModelConfig.intermediate_size`. `expert_parallel` is not read from a checkpoint: it says how
    the experts are laid out over a tensor-parallel mesh (EngineConfig.enable_expert_parallel).
    """

    num_experts: int
    top_k: int  # experts per token
    intermediate_size: int  # of each expert
    routing: str = "softmax_topk"  # ROUTING_KINDS
    norm_topk_prob: bool = False  # renormalise the k weights to sum to 1 (softmax_topk)
    router_bias: bool = False  # GPT-OSS
    expert_bias: bool = False  # biases on the experts' projections (GPT-OSS)
    expert_mlp: str = "gated"  # EXPERT_MLP_KINDS
    swiglu_limit: float = 7.0  # clamped_swiglu
    swiglu_alpha: float = 1.702  # clamped_swiglu
    shared_expert_intermediate_size: int = 0  # a dense expert every token takes (Qwen2-MoE); 0 = none
    shared_expert_gate: bool = True  # the shared expert's output scaled by sigmoid(x . w)
    dense_layers: tuple[int, ...] = ()  # HF mlp_only_layers
    sparse_step: int = 1  # HF decoder_sparse_step
    expert_parallel: bool = False  # experts split over the mesh instead of tensor parallel inside each

    def __post_init__(self):
        object.__setattr__(self, "dense_layers", tuple(int(i) for i in self.dense_layers))
        for name in ("num_experts", "top_k", "intermediate_size", "sparse_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"moe {name} must be >= 1, got {getattr(self, name)}")
        if self.top_k > self.num_experts:
            raise ValueError(f"num_experts_per_tok ({self.top_k}) exceeds num_experts ({self.num_experts})")
        _check_choice("moe routing", self.routing, ROUTING_KINDS)
        _check_choice("moe expert_mlp", self.expert_mlp, EXPERT_MLP_KINDS)
        if self.shared_expert_intermediate_size < 0:
            raise ValueError(f"shared_expert_intermediate_size must be >= 0, got "
                             f"{self.shared_expert_intermediate_size}")
        if self.expert_mlp == "clamped_swiglu" and not (self.swiglu_limit > 0 and self.swiglu_alpha > 0):
            raise ValueError(f"swiglu_limit and swiglu_alpha must be > 0, got {self.swiglu_limit}, {self.swiglu_alpha}")

    def is_sparse(self, layer: int) -> bool:
        """Whether `layer`'s feed-forward is this mixture (else the model's dense MLP)."""
        return layer not in self.dense_layers and (layer + 1) % self.sparse_step == 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters and block choices of a decoder-only transformer.

    The defaults describe Llama: RMSNorm, SwiGLU, full RoPE, sequential pre-norm blocks.
    """

    architecture: str  # HF class name, e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float = 1e-6  # epsilon of every norm
    rope: RopeConfig = RopeConfig()
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # bias on q/k/v projections
    o_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False
    qk_norm: str | bool | None = None  # QK_NORM_KINDS; True = "head" (over head_dim, shared by heads)
    sliding_window: int | None = None  # the window of windowed layers; None = full attention
    torch_dtype: str | None = None  # the checkpoint's dtype name, used by dtype="auto"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # --- block choices (models/blocks/)
    norm: str = "rms"  # NORM_KINDS
    norm_bias: bool = False  # LayerNorm with a bias
    norm_scale: bool = True  # False: no learned weight (OLMo's non-parametric LayerNorm)
    norm_unit_offset: bool = False  # scale by (1 + w) (Gemma)
    norm_scale_in_float32: bool = False  # RMSNorm: (x * w) in float32, then cast (Gemma, OLMo 2)
    qk_norm_bias: bool | None = None  # LayerNorm q/k norms with a bias (Phi); None = norm_bias
    mlp: str = "gated"  # MLP_KINDS: act(gate(x)) * up(x), or act(up(x))
    activation: str = "silu"  # ACTIVATIONS
    position: str = "rope"  # POSITION_KINDS
    position_offset: int = 0  # learned positions: row = position + offset (OPT: 2)
    alibi_variant: str = "bloom"  # ALIBI_VARIANTS
    alibi_bias_max: float = 8.0  # MPT's slopes
    local_rope: RopeConfig | None = None  # RoPE of windowed layers when it differs (Gemma 3)
    residual: str = "sequential"  # RESIDUAL_KINDS
    parallel_norms: int = 1  # parallel blocks: 1 norm shared by attention and MLP, or 2
    norm_placement: str = "pre"  # NORM_PLACEMENTS
    final_norm: bool = True  # a norm after the last layer
    embed_norm: bool = False  # a norm right after the embedding (BLOOM)
    embed_dim: int | None = None  # OPT's word_embed_proj_dim: embeddings of this width, projected in/out
    embedding_multiplier: float | None = None  # embeddings * m, in the model dtype (Gemma's sqrt(hidden), Granite)
    residual_multiplier: float = 1.0  # x + f(x) * m (Granite)
    logits_scaling: float = 1.0  # logits / s (Granite)
    final_logit_softcap: float | None = None  # cap * tanh(logits / cap) (Gemma 2)
    lm_head_bias: bool = False  # GPT-J, Phi
    attn_scale: float | None = None  # q.k multiplier; None = head_dim ** -0.5
    attn_scale_by_layer: bool = False  # GPT-2's scale_attn_by_inverse_layer_idx: scale / (layer + 1)
    attn_logit_softcap: float | None = None  # Gemma 2
    layer_windows: tuple[int | None, ...] | None = None  # per-layer windows; None: every layer `sliding_window`
    clip_qkv: float | None = None  # clamp q, k, v to [-c, c] (OLMo, MPT)
    lm_head_normalized: bool = False  # rows of the LM head normalised at load (Baichuan 2)
    # --- quantized linear layers (models/quantization/): config.json's quantization_config or
    # the on-load option; None = every layer float
    quantization: Any = None  # models.quantization.QuantizationConfig | None
    attention_sinks: bool = False  # a learned per-head logit in each softmax's denominator (GPT-OSS)
    moe: MoeConfig | None = None  # mixture-of-experts feed-forward; None = dense

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.qk_norm is True:
            object.__setattr__(self, "qk_norm", "head")
        elif self.qk_norm is False:
            object.__setattr__(self, "qk_norm", None)
        if self.qk_norm is not None:
            _check_choice("qk_norm", self.qk_norm, QK_NORM_KINDS)
        for field, choices in (("norm", NORM_KINDS), ("mlp", MLP_KINDS), ("activation", ACTIVATIONS),
                               ("position", POSITION_KINDS), ("alibi_variant", ALIBI_VARIANTS),
                               ("residual", RESIDUAL_KINDS), ("norm_placement", NORM_PLACEMENTS)):
            _check_choice(field, getattr(self, field), choices)
        if self.parallel_norms not in (1, 2):
            raise ValueError(f"parallel_norms must be 1 or 2, got {self.parallel_norms}")
        if self.residual == "parallel" and self.norm_placement != "pre":
            raise ValueError("parallel residual blocks need norm_placement 'pre'")
        if not self.norm_eps > 0:
            raise ValueError(f"norm epsilon must be > 0, got {self.norm_eps}")
        if self.position == "rope" and self.rope.dim(self.head_dim) > self.head_dim:
            raise ValueError(f"rotary_dim ({self.rope.rotary_dim}) exceeds head_dim ({self.head_dim})")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be None or >= 1, got {self.sliding_window}")
        if self.layer_windows is not None:
            if len(self.layer_windows) != self.num_layers:
                raise ValueError(f"layer_windows has {len(self.layer_windows)} entries for {self.num_layers} layers")
            if any(w is not None and w < 1 for w in self.layer_windows):
                raise ValueError(f"layer_windows entries must be None or >= 1: {self.layer_windows}")
        for name in ("residual_multiplier", "logits_scaling"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("attn_scale", "attn_logit_softcap", "final_logit_softcap", "clip_qkv", "embedding_multiplier"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be None or > 0, got {value}")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim must be None or >= 1, got {self.embed_dim}")
        if self.position == "learned" and self.position_offset < 0:
            raise ValueError(f"position_offset must be >= 0, got {self.position_offset}")
        if self.quantization is not None:
            from models.quantization.config import QuantizationConfig  # late: keeps this module light

            if not isinstance(self.quantization, QuantizationConfig):
                raise ValueError(f"quantization must be a QuantizationConfig or None, got {self.quantization!r}")
        if self.moe is not None and any(not 0 <= i < self.num_layers for i in self.moe.dense_layers):
            raise ValueError(f"mlp_only_layers {self.moe.dense_layers} name layers outside 0..{self.num_layers - 1}")

    # ------------------------------------------------------------------ derived

    @property
    def q_per_kv(self) -> int:
        """Query heads per KV head (the GQA group size)."""
        return self.num_heads // self.num_kv_heads

    @property
    def rms_norm_eps(self) -> float:
        """The norm epsilon (the name of the Llama-only configs of old)."""
        return self.norm_eps

    @property
    def embedding_width(self) -> int:
        """Width of the token (and learned position) embeddings: `embed_dim` or `hidden_size`."""
        return self.embed_dim or self.hidden_size

    def layer_sliding_windows(self) -> tuple[int | None, ...]:
        """Each layer's attention window (None = the whole context)."""
        if self.layer_windows is not None:
            return self.layer_windows
        return (self.sliding_window,) * self.num_layers

    def layer_rope(self, layer: int) -> RopeConfig:
        """The rotary parameters of `layer` (windowed layers may have their own)."""
        if self.local_rope is not None and self.layer_sliding_windows()[layer] is not None:
            return self.local_rope
        return self.rope

    def attention_spec(self, layer: int) -> AttentionSpec:
        """The static attention variant of `layer`, handed to the cache's `attend`."""
        scale = self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5
        if self.attn_scale_by_layer:
            scale = scale / (layer + 1)
        return AttentionSpec(sm_scale=float(scale), sliding_window=self.layer_sliding_windows()[layer],
                             logit_softcap=self.attn_logit_softcap, use_alibi=self.position == "alibi",
                             use_sinks=self.attention_sinks)

    def is_moe_layer(self, layer: int) -> bool:
        """Whether `layer`'s feed-forward is a mixture of experts."""
        return self.moe is not None and self.moe.is_sparse(layer)

    def with_expert_parallel(self, enabled: bool) -> "ModelConfig":
        """This config with its experts split over the mesh (`enabled`) or tensor-parallel inside
        each expert; unchanged for a dense model."""
        if self.moe is None or self.moe.expert_parallel == enabled:
            return self
        return dataclasses.replace(self, moe=dataclasses.replace(self.moe, expert_parallel=enabled))

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V cache one token needs over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def num_params(self) -> int:
        """Parameter count of the model this config builds (embeddings and LM head included)."""
        import jax.numpy as jnp
        from flax import nnx

        from models.loader import abstract_model  # late import: the model imports this module

        _, state = abstract_model(self, jnp.float32)
        return int(sum(var.get_value().size for _, var in nnx.to_flat_state(state)))

    # ------------------------------------------------------------------ HF configs

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], *, quantization: str | None = None, **overrides) -> "ModelConfig":
        """Builds the config from a parsed HF `config.json` through its family's `Architecture`.

        `quantization`: the engine option (None: the checkpoint's own `quantization_config`, if
        any; "int8" / "fp8": quantize a float checkpoint on load; or the checkpoint's method).
        """
        from models.quantization.config import QuantizationConfig
        from models.registry import get_architecture  # late import: the registry imports the families

        archs = hf.get("architectures") or []
        if not archs:
            raise ValueError("config.json has no 'architectures' entry; cannot tell which model to build")
        arch = get_architecture(archs[0])
        fields = dict(arch.config_fields(hf))
        fields.update(architecture=archs[0], torch_dtype=hf.get("dtype") or hf.get("torch_dtype"),
                      bos_token_id=hf.get("bos_token_id"), eos_token_ids=eos_token_ids(hf),
                      quantization=QuantizationConfig.from_hf_config(hf, quantization))
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, **overrides) -> "ModelConfig":
        """Reads `config.json` from a local checkpoint directory."""
        path = os.path.join(model_dir, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no config.json in {model_dir}")
        with open(path) as f:
            return cls.from_hf_dict(json.load(f), **overrides)


def eos_token_ids(hf: Mapping[str, Any]) -> tuple[int, ...]:
    """`eos_token_id` as a tuple (HF allows an int, a list or nothing)."""
    eos = hf.get("eos_token_id")
    if isinstance(eos, (list, tuple)):
        return tuple(int(e) for e in eos)
    return () if eos is None else (int(eos),)
