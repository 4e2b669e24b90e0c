"""`QuantizationConfig`: the frozen view of config.json's `quantization_config` (or of the
on-load `quantization="int8" | "fp8"` option), and the `LinearScheme` each linear layer gets.

Read the way vLLM reads them:
  gptq                bits 4 | 8, group_size (-1 = per channel), desc_act (g_idx), sym,
                      checkpoint_format "gptq" (v1: zeros stored minus one) | "gptq_v2",
                      lm_head (quantized head), dynamic ("-:regex" skips a module,
                      "+:regex" / "regex" overrides bits / group_size / sym / desc_act)
  awq                 GEMM version, 4 bits, zero_point, modules_to_not_convert
  compressed-tensors  config_groups (targets, weights, input_activations, format), ignore;
                      formats pack-quantized, int-quantized (int weights, float activations)
                      and float-quantized (fp8 weights; channel / tensor / block scales;
                      dynamic token / group / tensor or static tensor fp8 activations)
  fp8                 HF fine-grained fp8: weight_block_size ([128, 128]: weight_scale_inv) or
                      per-tensor weight_scale; activation_scheme dynamic | static;
                      modules_to_not_convert
  int8 / fp8 on load  a float checkpoint quantized per output channel when loaded
Module names are the checkpoint's (`model.layers.0.self_attn.q_proj`, `lm_head`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from pallas_kernels.quant_layout import QuantLayout

CHECKPOINT_METHODS = ("gptq", "awq", "compressed-tensors", "fp8")
ON_LOAD_METHODS = ("int8", "fp8")
# How the tensors of one linear layer are stored (models/quantization/convert.py reads each).
FORMATS = ("gptq", "awq", "ct-pack", "ct-int", "ct-float", "hf-fp8", "on-load-int8", "on-load-fp8")
STRATEGIES = ("group", "channel", "tensor", "block")
ACTIVATION_STRATEGIES = ("token", "group", "tensor")


def supported_methods_message() -> str:
    return (f"supported: quant_method {', '.join(CHECKPOINT_METHODS)} in config.json, or"
            f" quantization={' | '.join(repr(m) for m in ON_LOAD_METHODS)} for a float checkpoint")


@dataclasses.dataclass(frozen=True)
class ActivationScheme:
    """fp8 activation quantization of a W8A8 layer (as vLLM runs it)."""

    strategy: str  # token | group | tensor
    dynamic: bool = True  # False: the checkpoint's static per-tensor `input_scale`
    group_size: int | None = None  # strategy "group"

    def __post_init__(self):
        if self.strategy not in ACTIVATION_STRATEGIES:
            raise ValueError(f"activation strategy must be one of {ACTIVATION_STRATEGIES}, got"
                             f" {self.strategy!r}")
        if (self.strategy == "group") != (self.group_size is not None):
            raise ValueError("activation group_size is required by, and only by, strategy 'group'")
        if not self.dynamic and self.strategy != "tensor":
            raise ValueError(f"static activation scales must be per tensor, got {self.strategy!r}")

    @property
    def layout_name(self) -> str:
        if not self.dynamic:
            return "fp8-static"
        return {"token": "fp8-token", "group": "fp8-group", "tensor": "fp8-tensor"}[self.strategy]


@dataclasses.dataclass(frozen=True)
class LinearScheme:
    """How one linear layer's weight is quantized and stored in the checkpoint."""

    format: str  # one of FORMATS
    bits: int  # 4 | 8
    weight_type: str = "int"  # int | float (fp8 e4m3)
    strategy: str = "group"  # group | channel | tensor | block
    group_size: int | None = None  # strategy "group": input features per scale
    block_structure: tuple[int, int] | None = None  # strategy "block": (output rows, input cols)
    symmetric: bool = True
    desc_act: bool = False  # a g_idx gives each input feature's scale group
    zero_offset: int = 0  # GPTQ v1 stores zero points minus one
    activation: ActivationScheme | None = None  # fp8 W8A8; None = weight-only

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.weight_type not in ("int", "float"):
            raise ValueError(f"weight type must be 'int' or 'float', got {self.weight_type!r}")
        allowed_bits = (8,) if self.weight_type == "float" else (4, 8)
        if self.bits not in allowed_bits:
            raise ValueError(f"{self.format}: {self.weight_type} weights of {self.bits} bits are not"
                             f" supported (supported: {allowed_bits})")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if (self.strategy == "group") != (self.group_size is not None):
            raise ValueError("group_size is required by, and only by, strategy 'group'")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 (or -1 for per channel), got {self.group_size}")
        if (self.strategy == "block") != (self.block_structure is not None):
            raise ValueError("block_structure is required by, and only by, strategy 'block'")
        if self.block_structure is not None and (len(self.block_structure) != 2
                                                 or min(self.block_structure) < 1):
            raise ValueError(f"block_structure must be two sizes >= 1, got {self.block_structure}")
        if self.weight_type == "float" and not self.symmetric:
            raise ValueError("fp8 weights are symmetric (no zero points)")
        if self.activation is not None and self.weight_type != "float":
            raise ValueError("quantized activations are supported with fp8 weights only (W8A8 fp8);"
                             " integer activation quantization (W8A8 int8) is not supported")
        if self.desc_act and self.strategy != "group":
            raise ValueError("desc_act / activation ordering needs group-wise scales")

    def layout(self, in_features: int, out_features: int, scale_dtype: str = "float32") -> QuantLayout:
        """The device layout of this scheme's weight W [in_features, out_features]."""
        group_k, group_n = in_features, 1  # channel
        if self.strategy == "group":
            group_k = self.group_size
        elif self.strategy == "tensor":
            group_n = out_features
        elif self.strategy == "block":
            group_n, group_k = self.block_structure
        weight_format = "fp8" if self.weight_type == "float" else f"int{self.bits}"
        activation = self.activation
        return QuantLayout(
            weight_format=weight_format, in_features=in_features, out_features=out_features,
            group_k=group_k, group_n=group_n, has_zeros=not self.symmetric, has_g_idx=self.desc_act,
            scale_dtype=scale_dtype, activation=activation.layout_name if activation else "none",
            activation_group=activation.group_size if activation else None)


@dataclasses.dataclass(frozen=True)
class SchemeRule:
    """Modules matching `targets` (and not `ignore`) get `scheme`, or None to stay float.

    Patterns: "Linear" matches every linear layer, "re:<regex>" is matched (re.match) against
    the module name, "sub:<text>" matches names containing the text, anything else must equal
    the module name.
    """

    targets: tuple[str, ...]
    scheme: LinearScheme | None


def matches(name: str, pattern: str) -> bool:
    if pattern == "Linear":
        return True
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    if pattern.startswith("sub:"):
        return pattern[4:] in name
    return pattern == name


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """Which linear layers are quantized, and how (first matching rule wins)."""

    method: str  # a CHECKPOINT_METHODS entry, or an ON_LOAD_METHODS one with on_load
    rules: tuple[SchemeRule, ...]
    ignore: tuple[str, ...] = ()  # patterns of modules that stay float (see SchemeRule)
    on_load: bool = False  # quantize a float checkpoint while loading

    def __post_init__(self):
        methods = ON_LOAD_METHODS if self.on_load else CHECKPOINT_METHODS
        if self.method not in methods:
            raise ValueError(f"quantization method {self.method!r} is not supported"
                             f" ({supported_methods_message()})")

    def scheme_for(self, module_name: str) -> LinearScheme | None:
        """The scheme of linear layer `module_name`, or None if it is not quantized."""
        if any(matches(module_name, p) for p in self.ignore):
            return None
        for rule in self.rules:
            if any(matches(module_name, p) for p in rule.targets):
                return rule.scheme
        return None

    @classmethod
    def from_hf_config(cls, hf_config: Mapping[str, Any], quantization: str | None = None
                       ) -> "QuantizationConfig | None":
        """From a parsed config.json and the user's `quantization` option; None = unquantized.

        A checkpoint's own `quantization_config` wins; `quantization` may repeat its method
        (or be None). Without one, `quantization` must be None, "int8" or "fp8".
        """
        qcfg = hf_config.get("quantization_config")
        if qcfg is None:
            if quantization is None:
                return None
            if quantization not in ON_LOAD_METHODS:
                raise ValueError(f"quantization={quantization!r} needs a checkpoint whose config.json"
                                 f" has a quantization_config ({supported_methods_message()})")
            return on_load_config(quantization)
        if not isinstance(qcfg, Mapping):
            raise ValueError(f"quantization_config must be a JSON object, got {type(qcfg).__name__}")
        method = str(qcfg.get("quant_method", "")).lower()
        if quantization is not None and quantization != method:
            raise ValueError(f"quantization={quantization!r} does not match the checkpoint's quant_method"
                             f" {method!r}; pass quantization=None or {method!r}")
        from models.quantization.parse import PARSERS  # late: parse.py builds on this module

        if method not in PARSERS:
            raise ValueError(f"quant_method {method!r} is not supported ({supported_methods_message()})")
        return PARSERS[method](qcfg)


def on_load_config(method: str) -> QuantizationConfig:
    """`quantization="int8"` (W8A16) or `"fp8"` (W8A8, dynamic per-token activations), per
    output channel; lm_head stays float, as in vLLM."""
    if method == "int8":
        scheme = LinearScheme("on-load-int8", 8, strategy="channel")
    else:
        scheme = LinearScheme("on-load-fp8", 8, weight_type="float", strategy="channel",
                              activation=ActivationScheme("token"))
    return QuantizationConfig(method, (SchemeRule(("Linear",), scheme),), ignore=("lm_head",),
                              on_load=True)
