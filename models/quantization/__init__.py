"""Quantized checkpoints: GPTQ, AWQ, compressed-tensors (W4A16 / W8A16 / FP8), HF block-wise
fp8, and on-load int8 / fp8, with weights that stay quantized on the device.

  QuantizationConfig.from_hf_config(config_json, quantization=None) -> config or None
  config.scheme_for(module_name)                -> LinearScheme or None (float layer)
  checkpoint_tensor_names(scheme, prefix)       -> the layer's tensor names
  convert_linear(scheme, tensors)               -> QuantizedWeight (host; .to_device())
  quantized_linear(x, weight, bias) / QuantizedLinear   -> x @ W, dequantized in the matmul
"""

from models.quantization.config import (
    CHECKPOINT_METHODS, ON_LOAD_METHODS, ActivationScheme, LinearScheme, QuantizationConfig,
    SchemeRule)
from models.quantization.convert import checkpoint_tensor_names, convert_linear, tensor_roles
from models.quantization.linear import QuantizedLinear, param_bytes, quantized_linear
from models.quantization.weights import QuantizedWeight, from_centred, from_parts
from pallas_kernels.quant_layout import QuantLayout

__all__ = [
    "CHECKPOINT_METHODS", "ON_LOAD_METHODS", "ActivationScheme", "LinearScheme", "QuantLayout",
    "QuantizationConfig", "QuantizedLinear", "QuantizedWeight", "SchemeRule",
    "checkpoint_tensor_names", "convert_linear", "from_centred", "from_parts", "param_bytes",
    "quantized_linear", "tensor_roles",
]
