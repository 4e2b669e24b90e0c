"""Feed-forward blocks: gated (SwiGLU / GeGLU: down(act(gate(x)) * up(x))) and plain
(down(act(up(x))), GPT-2 / OPT / NeoX / Falcon / BLOOM / MPT / Phi / Starcoder2)."""

from __future__ import annotations

from flax import nnx

from models.blocks.common import ACTIVATION_FNS, linear
from models.config import ModelConfig


class MLP(nnx.Module):
    """`cfg.mlp` ("gated" | "plain") with `cfg.activation` and `cfg.mlp_bias`, of width
    `intermediate_size` (default `cfg.intermediate_size`; a MoE's shared expert has its own)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, intermediate_size: int | None = None):
        h, i, bias = cfg.hidden_size, intermediate_size or cfg.intermediate_size, cfg.mlp_bias
        self.activation = cfg.activation
        self.gate_proj = linear(h, i, bias, dtype, rngs) if cfg.mlp == "gated" else None
        self.up_proj = linear(h, i, bias, dtype, rngs)
        self.down_proj = linear(i, h, bias, dtype, rngs)

    def __call__(self, x):
        act = ACTIVATION_FNS[self.activation]
        if self.gate_proj is None:
            return self.down_proj(act(self.up_proj(x)))
        return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))
