"""A checkpoint's quantized linear layers in the model: which of the family's linear layers
are quantized and each of our projections' layout (`plan_quantized_modules`), the model with
a `QuantizedLinear` in each one's place (`install_quantized_linears`), and one layer's
checkpoint tensors -> each projection's `QuantizedWeight` (`load_quantized_module`).

A linear layer is a weight-map entry `<module>.weight` filling `<ours>.kernel`s; its scheme is
`QuantizationConfig.scheme_for(<module>)` (the checkpoint's module name). A fused checkpoint
layer (q|k|v, gate|up, grouped qkv) is converted whole and split into our projections by its
transform (models/quantization/split.py). A layer the config would quantize but whose checkpoint
holds a plain float `weight` and none of the quantized tensors stays float (as checkpoints that
leave layers out of their quantization without saying so need).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping

import numpy as np
from flax import nnx

from models.quantization.config import LinearScheme, QuantizationConfig
from models.quantization.convert import checkpoint_tensor_names, convert_linear
from models.quantization.linear import QuantizedLinear
from models.quantization.split import output_columns, select_columns
from models.quantization.tensor_parallel import ParallelLinear
from models.quantization.weights import QuantizedWeight
from models.weights import TensorMap
from pallas_kernels.quant_layout import SCALE_DTYPES, QuantLayout

_WEIGHT, _KERNEL = ".weight", ".kernel"
_PLAIN_FLOATS = ("float16", "bfloat16", "float32", "float64")  # a float checkpoint's weights (not fp8)


@dataclasses.dataclass(frozen=True)
class QuantizedModule:
    """One quantized checkpoint layer and the projections of ours it fills."""

    prefix: str  # the checkpoint's module name, e.g. "model.layers.0.self_attn.qkv_proj"
    scheme: LinearScheme
    tensor_map: TensorMap  # the float weight's weight-map entry (its transform places the columns)
    parts: tuple[str, ...]  # our module paths, e.g. ("layers.0.self_attn.q_proj", ...)
    layouts: tuple[QuantLayout, ...]  # each part's device layout
    scale_dtype: str

    def tensor_names(self) -> tuple[dict[str, str], dict[str, str]]:
        """({role: checkpoint name} required, {role: name} optional)."""
        return checkpoint_tensor_names(self.scheme, self.prefix)


def is_linear_map(m: TensorMap) -> bool:
    """Whether a weight-map entry is a linear layer's weight (it fills kernels)."""
    return m.hf.endswith(_WEIGHT) and bool(m.ours) and all(p.endswith(_KERNEL) for p in m.ours)


def _scale_role(scheme: LinearScheme) -> str | None:
    if scheme.format in ("gptq", "awq"):
        return "scales"
    if scheme.format == "hf-fp8" and scheme.strategy == "block":
        return "weight_scale_inv"
    if scheme.format.startswith("on-load"):
        return None
    return "weight_scale"


def _scale_dtype(dtype) -> str:
    name = np.dtype(dtype).name
    return name if name in SCALE_DTYPES else "float32"


def _stored_quantized(scheme: LinearScheme, prefix: str, dtypes: Mapping[str, np.dtype]) -> bool:
    """False where the checkpoint holds this layer as a plain float weight only."""
    if scheme.format.startswith("on-load"):
        return True
    required, optional = checkpoint_tensor_names(scheme, prefix)
    quantized_names = [n for r, n in {**required, **optional}.items() if r != "weight"]
    weight = dtypes.get(prefix + _WEIGHT)
    plain_float = weight is not None and np.dtype(weight).name in _PLAIN_FLOATS
    return not (plain_float and not any(n in dtypes for n in quantized_names))


def plan_quantized_modules(qcfg: QuantizationConfig, weight_map: Iterable[TensorMap],
                           kernel_shapes: Mapping[str, tuple[int, int]],
                           checkpoint_dtypes: Mapping[str, np.dtype] | None = None,
                           default_scale_dtype: str = "bfloat16") -> dict[str, QuantizedModule]:
    """{checkpoint module name: QuantizedModule} of every quantized linear layer.

    kernel_shapes: our float kernels' shapes `[in, out]` by dotted path. checkpoint_dtypes:
    every checkpoint tensor's dtype by (canonical) name; scales keep the checkpoint's dtype.
    Without it (shapes only, e.g. for a preset) every layer the config names is quantized,
    with `default_scale_dtype` scales.
    """
    plan = {}
    for m in weight_map:
        if not is_linear_map(m):
            continue
        prefix = m.hf[: -len(_WEIGHT)]
        scheme = qcfg.scheme_for(prefix)
        if scheme is None or (checkpoint_dtypes is not None
                              and not _stored_quantized(scheme, prefix, checkpoint_dtypes)):
            continue
        shapes = [tuple(kernel_shapes[p]) for p in m.ours]
        if len({k for k, _ in shapes}) != 1:
            raise ValueError(f"{prefix}: the parts of a fused layer must share in_features, got {shapes}")
        role = _scale_role(scheme)
        if role is None:
            scale_dtype = "float32"
        elif checkpoint_dtypes is None or f"{prefix}.{role}" not in checkpoint_dtypes:
            scale_dtype = default_scale_dtype
        else:
            scale_dtype = _scale_dtype(checkpoint_dtypes[f"{prefix}.{role}"])
        layouts = tuple(scheme.layout(k, n, scale_dtype) for k, n in shapes)
        plan[prefix] = QuantizedModule(prefix, scheme, m, tuple(p[: -len(_KERNEL)] for p in m.ours),
                                       layouts, scale_dtype)
    return plan


def _path(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def _parent_and_key(model: nnx.Module, path: tuple):
    node = model
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node, path[-1]


def part_parallel(part: str, sharding_for: Callable[[tuple], object] | None) -> ParallelLinear | None:
    """The tensor-parallel placement of our projection `part` (from its float kernel's sharding)."""
    if sharding_for is None:
        return None
    return ParallelLinear.of(sharding_for(_path(part) + ("kernel",)))


def install_quantized_linears(model: nnx.Module, plan: Mapping[str, QuantizedModule], *, bias_dtype,
                              backend: str = "auto",
                              sharding_for: Callable[[tuple], object] | None = None) -> None:
    """Replaces each planned projection of an abstract model (`nnx.eval_shape`) by an abstract
    `QuantizedLinear` (a bias where the float layer had one)."""
    for module in plan.values():
        for part, layout in zip(module.parts, module.layouts):
            parent, key = _parent_and_key(model, _path(part))
            float_layer = parent[key] if isinstance(key, int) else getattr(parent, key)
            use_bias = getattr(float_layer, "bias", None) is not None
            parallel = part_parallel(part, sharding_for)
            try:
                layer = nnx.eval_shape(lambda: QuantizedLinear(layout, use_bias=use_bias, bias_dtype=bias_dtype,
                                                               backend=backend, parallel=parallel))
            except ValueError as e:
                raise ValueError(f"{module.prefix} ({part}): {e}") from e
            if isinstance(key, int):
                parent[key] = layer
            else:
                setattr(parent, key, layer)


def load_quantized_module(module: QuantizedModule, tensors: Mapping[str, np.ndarray]) -> list[QuantizedWeight]:
    """One layer's checkpoint tensors (by role) -> each part's host `QuantizedWeight`.
    ValueError names the layer and what does not fit."""
    in_features = module.layouts[0].in_features
    widths = [layout.out_features for layout in module.layouts]
    out_axis, columns = output_columns(module.tensor_map.transform, in_features, widths)
    tensors = dict(tensors)
    if out_axis == 1 and "weight" in tensors:  # a Conv1D weight [in, out]: the formats read [out, in]
        tensors["weight"] = np.asarray(tensors["weight"]).T
    try:
        fused = convert_linear(module.scheme, tensors, scale_dtype=module.scale_dtype)
    except ValueError as e:
        raise ValueError(f"{module.prefix}: {e}") from e
    have = (fused.layout.in_features, fused.layout.out_features)
    if have != (in_features, sum(widths)):
        raise ValueError(f"{module.prefix}: checkpoint holds a [{have[0]}, {have[1]}] weight, the model"
                         f" expects [{in_features}, {sum(widths)}] (in, out)")
    if len(columns) == 1 and fused.layout == module.layouts[0]:
        return [fused]
    return [select_columns(fused, cols, layout, module.prefix) for cols, layout in zip(columns, module.layouts)]
