"""`CausalLM`: the one decoder-only language model every family builds, from the shared blocks.

Parameter names are ours and the same for every family (`embed_tokens`, `layers.N.self_attn.
q_proj`, `layers.N.mlp.down_proj`, `norm`, `lm_head`, ...); each family's weight map
(models/families/) translates its checkpoint's names and layouts. Layers are shape-agnostic in
their leading axes: the engine runs packed tokens `[num_tokens, hidden]`, static batches run
`[batch, seq, hidden]`. How K/V are stored and attended is the cache's business.

    x = embed_tokens(ids) [* embedding_multiplier] [-> project_in] [+ embed_positions(pos + offset)]
        [-> embed_norm]
    x = layers(x)          (models/blocks/decoder.py)
    hidden = norm(x)       (unless final_norm is off)
    logits = lm_head([project_out](hidden)) [/ logits_scaling] [-> cap * tanh(. / cap)]

Any linear layer may be a `QuantizedLinear` instead (the loader puts one in place of each
quantized projection, models/quantization/loading.py): same call, weights quantized.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from models.blocks.common import INIT, linear
from models.blocks.decoder import DecoderLayer
from models.blocks.norms import Norm, NormSpec
from models.blocks.rope import rope_cos_sin
from models.config import ModelConfig
from models.quantization.linear import QuantizedLinear


class CausalLM(nnx.Module):
    """A decoder-only language model assembled from `cfg`'s block choices."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        width, hidden = cfg.embedding_width, cfg.hidden_size
        self.embed_tokens = nnx.Embed(cfg.vocab_size, width, dtype=dtype, param_dtype=dtype,
                                      embedding_init=INIT, rngs=rngs)
        self.embed_positions = (nnx.Embed(cfg.max_position_embeddings + cfg.position_offset, hidden, dtype=dtype,
                                          param_dtype=dtype, embedding_init=INIT, rngs=rngs)
                                if cfg.position == "learned" else None)
        self.project_in = linear(width, hidden, False, dtype, rngs) if cfg.embed_dim else None
        self.project_out = linear(hidden, width, False, dtype, rngs) if cfg.embed_dim else None
        self.embed_norm = Norm(hidden, NormSpec.of(cfg), param_dtype=dtype) if cfg.embed_norm else None
        self.layers = nnx.List([DecoderLayer(cfg, i, dtype=dtype, rngs=rngs) for i in range(cfg.num_layers)])
        self.norm = Norm(hidden, NormSpec.of(cfg), param_dtype=dtype) if cfg.final_norm else None
        self.lm_head = (None if cfg.tie_word_embeddings
                        else linear(width, cfg.vocab_size, cfg.lm_head_bias, dtype, rngs))

    def __call__(self, token_ids, positions, cache):
        """token_ids/positions `i32[...]` -> (final hidden states `[..., hidden]`, updated cache)."""
        cfg = self.config
        x = self.embed_tokens(token_ids)  # [..., E]
        if cfg.embedding_multiplier is not None:
            x = x * jnp.asarray(cfg.embedding_multiplier, x.dtype)
        if self.project_in is not None:
            x = self.project_in(x)  # [..., H]
        if self.embed_positions is not None:
            table = self.embed_positions.embedding[...]  # [P + offset, H]
            x = x + jnp.take(table, positions + cfg.position_offset, axis=0, mode="clip")
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        rope_tables = {}
        if cfg.position == "rope":
            for rope in {cfg.layer_rope(i) for i in range(cfg.num_layers)}:
                rope_tables[rope] = rope_cos_sin(rope, cfg.head_dim, cfg.max_position_embeddings, positions)
        for layer in self.layers:
            x, cache = layer(x, rope_tables, positions, cache)
        return (x if self.norm is None else self.norm(x)), cache

    def compute_logits(self, hidden):
        """hidden `[..., hidden]` -> float32 logits `[..., vocab]`."""
        cfg = self.config
        if self.project_out is not None:
            hidden = self.project_out(hidden)  # [..., E]
        if self.lm_head is None:
            table = self.embed_tokens.embedding[...]  # [vocab, E]
            logits = jnp.einsum("...h,vh->...v", hidden, table, preferred_element_type=jnp.float32)
        elif isinstance(self.lm_head, QuantizedLinear):  # logits in the model dtype, then float32 (vLLM)
            logits = self.lm_head(hidden).astype(jnp.float32)  # [..., vocab]
        else:
            kernel = self.lm_head.kernel[...]  # [E, vocab]
            logits = jnp.einsum("...h,hv->...v", hidden, kernel, preferred_element_type=jnp.float32)
            if self.lm_head.bias is not None:
                logits = logits + self.lm_head.bias[...].astype(jnp.float32)
        if cfg.logits_scaling != 1.0:
            logits = logits / cfg.logits_scaling
        if cfg.final_logit_softcap is not None:
            logits = cfg.final_logit_softcap * jnp.tanh(logits / cfg.final_logit_softcap)
        return logits


def init_constant(cfg: ModelConfig, path: tuple) -> float | None:
    """The constant a random-weight model gives the parameter at `path` (None: drawn at random):
    norm weights their identity scale (1, or 0 for Gemma's (1 + w)), norm biases 0."""
    if str(path[-1]) not in ("weight", "bias") or not any("norm" in str(p) for p in path[:-1]):
        return None
    if str(path[-1]) == "bias":
        return 0.0
    return 0.0 if cfg.norm_unit_offset else 1.0
