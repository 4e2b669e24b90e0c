"""A decoder layer: attention and MLP sub-layers under one of the residual layouts.

Norm names follow Llama's checkpoints: `input_layernorm` belongs to the attention sub-layer,
`post_attention_layernorm` to the MLP sub-layer, wherever the layout puts them;
`attn_output_norm` / `mlp_output_norm` normalise a sub-layer's output (Gemma 2/3, OLMo 2).
The feed-forward `mlp` is a dense MLP or, on a mixture's sparse layers, a `MoE` (models/blocks/moe.py).

  sequential, pre       x += attn(n1(x)) * m;  x += mlp(n2(x)) * m    (Llama; m: Granite's multiplier)
  sequential, sandwich  x += o1(attn(n1(x)));  x += o2(mlp(n2(x)))    (Gemma 2/3)
  sequential, output    x += o1(attn(x));      x += o2(mlp(x))        (OLMo 2)
  sequential, post      x = n1(x + attn(x));   x = n2(x + mlp(x))     (OPT-350m)
  parallel, 1 norm      x += attn(n1(x)) + mlp(n1(x))                 (GPT-J, Phi, Falcon-7B)
  parallel, 2 norms     x += attn(n1(x)) + mlp(n2(x))                 (GPT-NeoX, Falcon-40B)
"""

from __future__ import annotations

from flax import nnx

from models.blocks.attention import SelfAttention
from models.blocks.mlp import MLP
from models.blocks.moe import MoE, mesh_of
from models.blocks.norms import Norm, NormSpec
from models.config import ModelConfig


class DecoderLayer(nnx.Module):
    """Layer `layer` of `cfg`."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        spec = NormSpec.of(cfg)

        def make_norm(present: bool):
            return Norm(cfg.hidden_size, spec, param_dtype=dtype) if present else None

        placement, parallel = cfg.norm_placement, cfg.residual == "parallel"
        self.placement, self.parallel = placement, parallel
        self.residual_multiplier = cfg.residual_multiplier
        self.input_layernorm = make_norm(placement != "output")
        self.post_attention_layernorm = make_norm(placement != "output" and (not parallel or cfg.parallel_norms == 2))
        self.attn_output_norm = make_norm(placement in ("sandwich", "output"))
        self.mlp_output_norm = make_norm(placement in ("sandwich", "output"))
        self.self_attn = SelfAttention(cfg, layer, dtype=dtype, rngs=rngs)
        self.mlp = MoE(cfg, dtype=dtype, rngs=rngs) if cfg.is_moe_layer(layer) else MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, rope_tables, positions, cache):
        """x `[..., hidden]` -> (`[..., hidden]`, cache)."""
        if self.parallel:
            attn_in = self.input_layernorm(x)
            mlp_in = attn_in if self.post_attention_layernorm is None else self.post_attention_layernorm(x)
            h, cache = self.self_attn(attn_in, rope_tables, positions, cache)
            return x + h + self._feed_forward(mlp_in, cache), cache
        if self.placement == "post":
            h, cache = self.self_attn(x, rope_tables, positions, cache)
            x = self.input_layernorm(x + h)
            return self.post_attention_layernorm(x + self._feed_forward(x, cache)), cache
        pre_attn = x if self.input_layernorm is None else self.input_layernorm(x)
        h, cache = self.self_attn(pre_attn, rope_tables, positions, cache)
        x = x + self._scaled(h if self.attn_output_norm is None else self.attn_output_norm(h))
        pre_mlp = x if self.post_attention_layernorm is None else self.post_attention_layernorm(x)
        h = self._feed_forward(pre_mlp, cache)
        return x + self._scaled(h if self.mlp_output_norm is None else self.mlp_output_norm(h)), cache

    def _feed_forward(self, x, cache):
        return self.mlp(x, mesh=mesh_of(cache)) if isinstance(self.mlp, MoE) else self.mlp(x)

    def _scaled(self, h):
        return h if self.residual_multiplier == 1.0 else h * self.residual_multiplier
