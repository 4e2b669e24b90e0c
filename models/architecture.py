"""`Architecture`: everything the package knows about one HF model class, declared in its family
module (models/families/) and read by the registry, the loader, the sharding rules and presets.

    config_fields(hf config dict) -> ModelConfig fields (architecture, dtype and token ids aside)
    weight_map(ModelConfig) -> [TensorMap]: every checkpoint tensor, the parameters it fills, the transform
    partition_rules: (regex over our dotted parameter path, layout) pairs, first match wins
    presets: bench presets with the real shapes of released checkpoints (HF config dicts)
    checkpoint_name: a checkpoint tensor's name -> the name the weight map uses (e.g. GPT-2 hub
        files without the `transformer.` prefix)
    ignored: regexes of checkpoint tensors that are buffers, not parameters
    reference: the transformers class the parity tests compare against (Llama-compatible names
        and remote-code families are tested through a conversion to it); `parity_tested=False`
        where there is none
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Callable, Mapping, Sequence

from models.weights import TensorMap

# Layouts a partition rule may name (models/sharding.py turns them into PartitionSpecs).
COLUMN, COLUMN_KV, ROW, VOCAB_EMBED, VOCAB_HEAD, REPLICATED = (
    "column", "column_kv", "row", "vocab_embed", "vocab_head", "replicated")
# Mixture-of-experts layouts: stacked expert kernels [E, in, out] (biases [E, out]) split inside
# each expert (column: `out`, row: `in`) or, with expert parallelism, by expert (`E`); HEADS: a
# per-query-head vector [Hq] (GPT-OSS's attention sinks) split like the heads.
EXPERT_COLUMN, EXPERT_ROW, HEADS = "expert_column", "expert_row", "heads"

# The rules of every family: checkpoints' fused tensors are split at load, so our parameters
# have the same names and layouts whatever the family (Megatron layout; see models/sharding.py).
STANDARD_RULES: tuple[tuple[str, str], ...] = (
    (r"embed_tokens\.embedding", VOCAB_EMBED),
    (r"lm_head\.(kernel|bias)", VOCAB_HEAD),
    (r"self_attn\.q_proj\.(kernel|bias)", COLUMN),
    (r"self_attn\.[kv]_proj\.(kernel|bias)", COLUMN_KV),
    (r"self_attn\.o_proj\.kernel", ROW),
    (r"mlp\.(gate|up)_proj\.(kernel|bias)", COLUMN),
    (r"mlp\.down_proj\.kernel", ROW),
    (r"(o_proj|down_proj)\.bias", REPLICATED),  # added once after the all-reduce
    (r"(norm|_layernorm|_norm|norms\.\d+)\.(weight|bias)", REPLICATED),
    (r"embed_positions\.embedding", REPLICATED),
    (r"project_(in|out)\.kernel", REPLICATED),
)

# Added in front of STANDARD_RULES by the mixture-of-experts families (models/families/_moe.py).
MOE_RULES: tuple[tuple[str, str], ...] = (
    (r"mlp\.router\.(kernel|bias)", REPLICATED),  # [hidden, E]: small; every device routes every token
    (r"mlp\.experts\.(gate|up)_proj\.(kernel|bias)", EXPERT_COLUMN),
    (r"mlp\.experts\.down_proj\.kernel", EXPERT_ROW),
    (r"mlp\.experts\.down_proj\.bias", REPLICATED),  # added once, after the reduction
    (r"mlp\.shared_expert\.(gate|up)_proj\.kernel", COLUMN),
    (r"mlp\.shared_expert\.down_proj\.kernel", ROW),
    (r"mlp\.shared_expert_gate\.kernel", REPLICATED),
    (r"self_attn\.sinks", HEADS),
)

# Buffers, not parameters: rotary tables, and an fp8 KV cache's scales (read by pagedjax/model_setup.py).
DEFAULT_IGNORED = (r".*rotary_emb\.inv_freq$", r".*layers\.\d+\..*\b(k_scale|v_scale|kv_scale)$")


def _same_name(name: str) -> str:
    return name


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One supported HF architecture (see the module docstring)."""

    name: str
    config_fields: Callable[[Mapping[str, Any]], dict]
    weight_map: Callable[[Any], list[TensorMap]]
    description: str
    reference: str | None = None  # transformers class tested against; None = `name`
    parity_tested: bool = True  # False: no HF class to compare with (blocks and weights checked elsewhere)
    partition_rules: tuple[tuple[str, str], ...] = STANDARD_RULES
    presets: Mapping[str, dict] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    checkpoint_name: Callable[[str], str] = _same_name
    ignored: Sequence[str] = DEFAULT_IGNORED

    def __post_init__(self):
        if not self.name:
            raise ValueError("Architecture.name must be set")
        object.__setattr__(self, "presets", types.MappingProxyType(dict(self.presets)))
        object.__setattr__(self, "ignored", tuple(self.ignored))

    @property
    def reference_class(self) -> str:
        return self.reference or self.name

    def is_ignored(self, name: str) -> bool:
        """Whether the checkpoint tensor `name` (canonical) is a buffer the model recomputes."""
        return any(re.fullmatch(p, name) for p in self.ignored)


def prefix_adder(prefix: str, keep: Sequence[str]) -> Callable[[str], str]:
    """`checkpoint_name` that adds `prefix` to names not starting with it or with one of `keep`."""
    def canonical(name: str) -> str:
        if name.startswith(prefix) or any(name.startswith(k) for k in keep):
            return name
        return prefix + name

    return canonical
