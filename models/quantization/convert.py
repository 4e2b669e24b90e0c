"""The narrow interface a loader calls: which checkpoint tensors one quantized linear layer
has, and how they become a `QuantizedWeight`.

    scheme = qcfg.scheme_for("model.layers.0.self_attn.q_proj")     # None: a float layer
    required, optional = checkpoint_tensor_names(scheme, "model.layers.0.self_attn.q_proj")
    weight = convert_linear(scheme, {role: safetensors.get(name) ...})  # host numpy arrays
    weight = weight.to_device()                                      # or a sharding per array

`bias` is never part of the quantized weight: the layer's `<prefix>.bias` stays float.
"""

from __future__ import annotations

from typing import Callable, Mapping

from models.quantization import awq, compressed_tensors, fp8, gptq
from models.quantization.config import LinearScheme
from models.quantization.weights import QuantizedWeight

# format -> (required roles, optional roles, converter(tensors, scheme, scale_dtype))
_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable]] = {
    "gptq": (gptq.REQUIRED, gptq.OPTIONAL, gptq.gptq_weight),
    "awq": (awq.REQUIRED, awq.OPTIONAL, awq.awq_weight),
    "ct-pack": (compressed_tensors.PACKED_REQUIRED, compressed_tensors.OPTIONAL + ("weight_zero_point",),
                compressed_tensors.compressed_weight),
    "ct-int": (compressed_tensors.INT_REQUIRED, compressed_tensors.OPTIONAL + ("weight_zero_point",),
               compressed_tensors.compressed_weight),
    "ct-float": (fp8.CT_REQUIRED, fp8.CT_OPTIONAL, fp8.fp8_weight),
    "hf-fp8": (fp8.CT_REQUIRED, fp8.CT_OPTIONAL, fp8.fp8_weight),
    "on-load-int8": (fp8.ON_LOAD_REQUIRED, (), fp8.quantize_on_load),
    "on-load-fp8": (fp8.ON_LOAD_REQUIRED, (), fp8.quantize_on_load),
}


def tensor_roles(scheme: LinearScheme) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) tensor suffixes of one layer stored in `scheme`'s format."""
    required, optional, _ = _FORMATS[scheme.format]
    if scheme.format == "hf-fp8" and scheme.strategy == "block":
        required = fp8.HF_BLOCK_REQUIRED
    if scheme.format in ("ct-pack", "ct-int") and not scheme.symmetric:
        required = required + ("weight_zero_point",)
        optional = tuple(r for r in optional if r != "weight_zero_point")
    if scheme.activation is not None and not scheme.activation.dynamic:
        required = required + ("input_scale",)
        optional = tuple(r for r in optional if r != "input_scale")
    if scheme.format == "gptq" and scheme.desc_act:
        required, optional = required + ("g_idx",), ()
    return required, optional


def checkpoint_tensor_names(scheme: LinearScheme, prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """({role: checkpoint name} required, {role: name} optional) for the layer at `prefix`."""
    required, optional = tensor_roles(scheme)
    return ({r: f"{prefix}.{r}" for r in required}, {r: f"{prefix}.{r}" for r in optional})


def convert_linear(scheme: LinearScheme, tensors: Mapping[str, object], *,
                   scale_dtype: str | None = None) -> QuantizedWeight:
    """One layer's checkpoint tensors (keyed by role, numpy arrays or memory-mapped views)
    -> its `QuantizedWeight` on the host. Scales keep the checkpoint's dtype unless
    `scale_dtype` is given. ValueError names a missing or unexpected role."""
    required, optional = tensor_roles(scheme)
    missing = [r for r in required if tensors.get(r) is None]
    unexpected = sorted(set(tensors) - set(required) - set(optional))
    if missing or unexpected:
        raise ValueError(f"{scheme.format} layer tensors: missing {missing}, unexpected {unexpected}"
                         f" (expected {list(required)} and optionally {list(optional)})")
    return _FORMATS[scheme.format][2](dict(tensors), scheme, scale_dtype)
