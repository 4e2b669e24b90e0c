"""One parser per `quant_method`: config.json's `quantization_config` -> `QuantizationConfig`.

Every unsupported setting is a ValueError naming the field and what is supported.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from models.quantization.config import ActivationScheme, LinearScheme, QuantizationConfig, SchemeRule

_GPTQ_FORMATS = {"gptq": 1, "gptq_v2": 2}
# compressed-tensors format -> our storage format (naive: decided by the weights' type).
_CT_FORMATS = {"pack-quantized": "ct-pack", "int-quantized": "ct-int", "float-quantized": "ct-float",
               "naive-quantized": None}


def _int_field(q: Mapping, *keys: str, default=None) -> int:
    for key in keys:
        if q.get(key) is not None:
            value = q[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"quantization_config.{key} must be an int, got {value!r}")
            return value
    if default is None:
        raise ValueError(f"quantization_config needs {' or '.join(keys)}")
    return default


def gptq_scheme(bits: int, group_size: int, sym: bool, desc_act: bool, version: int) -> LinearScheme:
    """A GPTQ layer: group_size -1 = one scale per output channel (act order is then moot)."""
    if bits not in (4, 8):
        raise ValueError(f"gptq bits={bits} is not supported (supported: 4, 8)")
    if group_size == -1:
        return LinearScheme("gptq", bits, strategy="channel", symmetric=sym,
                            zero_offset=1 if version == 1 else 0)
    if group_size < 1:
        raise ValueError(f"gptq group_size must be -1 or >= 1, got {group_size}")
    return LinearScheme("gptq", bits, group_size=group_size, symmetric=sym, desc_act=desc_act,
                        zero_offset=1 if version == 1 else 0)


def parse_gptq(q: Mapping[str, Any]) -> QuantizationConfig:
    fmt = str(q.get("checkpoint_format") or q.get("format") or "gptq").lower()
    if fmt not in _GPTQ_FORMATS:
        raise ValueError(f"gptq checkpoint_format {fmt!r} is not supported (supported: gptq (v1), gptq_v2)")
    base = dict(bits=_int_field(q, "bits"), group_size=_int_field(q, "group_size", default=-1),
                sym=bool(q.get("sym", True)), desc_act=bool(q.get("desc_act", False)),
                version=_GPTQ_FORMATS[fmt])
    rules, ignore = [], []
    for key, overrides in (q.get("dynamic") or {}).items():
        # GPTQModel's per-module overrides: "-:regex" = not quantized, "+:regex" / "regex" = override.
        if key.startswith("-:"):
            ignore.append("re:" + key[2:])
            continue
        unknown = set(overrides or {}) - {"bits", "group_size", "sym", "desc_act"}
        if unknown:
            raise ValueError(f"gptq dynamic override {key!r} sets unsupported fields {sorted(unknown)}")
        pattern = key[2:] if key.startswith("+:") else key
        rules.append(SchemeRule(("re:" + pattern,), gptq_scheme(**{**base, **(overrides or {})})))
    if not q.get("lm_head", False):
        ignore.append("lm_head")
    rules.append(SchemeRule(("Linear",), gptq_scheme(**base)))
    return QuantizationConfig("gptq", tuple(rules), tuple(ignore))


def parse_awq(q: Mapping[str, Any]) -> QuantizationConfig:
    version = str(q.get("version", "gemm")).lower()
    if version != "gemm":
        raise ValueError(f"awq version {version!r} is not supported (supported: gemm)")
    bits = _int_field(q, "bits", "w_bit")
    if bits != 4:
        raise ValueError(f"awq bits={bits} is not supported (supported: 4)")
    if not q.get("zero_point", True):
        raise ValueError("awq zero_point=false is not supported (the GEMM layout stores zero points)")
    group_size = _int_field(q, "group_size", "q_group_size", default=-1)
    if group_size == -1:
        scheme = LinearScheme("awq", 4, strategy="channel", symmetric=False)
    else:
        scheme = LinearScheme("awq", 4, group_size=group_size, symmetric=False)
    ignore = ("lm_head",) + tuple("sub:" + m for m in q.get("modules_to_not_convert") or ())
    return QuantizationConfig("awq", (SchemeRule(("Linear",), scheme),), ignore)


def _ct_activation(acts: Mapping | None) -> ActivationScheme | None:
    if acts is None:
        return None
    if acts.get("type") != "float" or acts.get("num_bits") != 8:
        raise ValueError(f"compressed-tensors input_activations {acts.get('type')}{acts.get('num_bits')}"
                         " are not supported (supported: none, or float 8-bit (fp8))")
    dynamic = acts.get("dynamic", False)
    if dynamic not in (True, False):
        raise ValueError(f"compressed-tensors input_activations.dynamic={dynamic!r} is not supported")
    strategy = acts.get("strategy") or "tensor"
    group = acts.get("group_size") if strategy == "group" else None
    return ActivationScheme(strategy, dynamic=bool(dynamic), group_size=group)


def ct_scheme(weights: Mapping | None, acts: Mapping | None, fmt: str) -> LinearScheme | None:
    """One compressed-tensors config group -> its scheme (None: weights are not quantized)."""
    if weights is None:
        if acts is not None:
            raise ValueError("compressed-tensors activation-only quantization is not supported")
        return None
    if fmt not in _CT_FORMATS:
        raise ValueError(f"compressed-tensors format {fmt!r} is not supported (supported: "
                         f"{', '.join(_CT_FORMATS)})")
    wtype, bits = weights.get("type", "int"), weights.get("num_bits")
    if (wtype, bits) not in (("int", 4), ("int", 8), ("float", 8)):
        raise ValueError(f"compressed-tensors weights {wtype}{bits} are not supported (supported:"
                         " int4, int8, float8)")
    storage = _CT_FORMATS[fmt] or ("ct-float" if wtype == "float" else "ct-int")
    if (storage == "ct-float") != (wtype == "float"):
        raise ValueError(f"compressed-tensors format {fmt!r} cannot hold {wtype} weights")
    activation = _ct_activation(acts)
    if activation is not None and wtype != "float":
        raise ValueError("compressed-tensors int weights with quantized activations (W8A8 int8,"
                         " W4AFP8) are not supported; supported: weight-only int4/int8, fp8 W8A8")
    strategy = weights.get("strategy") or "tensor"
    block = weights.get("block_structure")
    actorder = weights.get("actorder")
    if strategy not in ("group", "channel", "tensor", "block"):
        raise ValueError(f"compressed-tensors weight strategy {strategy!r} is not supported"
                         " (supported: group, channel, tensor, block)")
    return LinearScheme(
        storage, bits, weight_type=wtype, strategy=strategy,
        group_size=weights.get("group_size") if strategy == "group" else None,
        block_structure=tuple(block) if strategy == "block" else None,
        symmetric=bool(weights.get("symmetric", True)), desc_act=actorder == "group",
        activation=activation)


def parse_compressed_tensors(q: Mapping[str, Any]) -> QuantizationConfig:
    for field in ("kv_cache_scheme", "transform_config"):
        if q.get(field):
            raise ValueError(f"compressed-tensors {field} is not supported yet")
    sparsity = q.get("sparsity_config") or {}
    if sparsity.get("format") not in (None, "dense"):
        raise ValueError(f"compressed-tensors sparsity format {sparsity.get('format')!r} is not supported")
    rules = []
    for name, group in (q.get("config_groups") or {}).items():
        targets = group.get("targets")
        if not targets:
            raise ValueError(f"compressed-tensors config group {name!r} has no targets")
        scheme = ct_scheme(group.get("weights"), group.get("input_activations"),
                           group.get("format") or q.get("format") or "pack-quantized")
        rules.append(SchemeRule(tuple(targets), scheme))
    if not rules:
        raise ValueError("compressed-tensors quantization_config has no config_groups")
    return QuantizationConfig("compressed-tensors", tuple(rules), tuple(q.get("ignore") or ()))


def parse_hf_fp8(q: Mapping[str, Any]) -> QuantizationConfig:
    if str(q.get("fmt", "e4m3")).lower() != "e4m3":
        raise ValueError(f"fp8 fmt {q.get('fmt')!r} is not supported (supported: e4m3)")
    activation = str(q.get("activation_scheme", "dynamic")).lower()
    if activation not in ("dynamic", "static"):
        raise ValueError(f"fp8 activation_scheme {activation!r} is not supported (dynamic, static)")
    block = q.get("weight_block_size")
    if block is not None:
        if activation != "dynamic":
            raise ValueError("fp8 weight_block_size needs activation_scheme 'dynamic'")
        if len(block) != 2:
            raise ValueError(f"fp8 weight_block_size must be [rows, cols], got {block}")
        # vLLM: block-wise weights, activations per token and group of block[1] features.
        scheme = LinearScheme("hf-fp8", 8, weight_type="float", strategy="block",
                              block_structure=(int(block[0]), int(block[1])),
                              activation=ActivationScheme("group", group_size=int(block[1])))
    else:
        scheme = LinearScheme("hf-fp8", 8, weight_type="float", strategy="tensor",
                              activation=ActivationScheme("tensor", dynamic=activation == "dynamic"))
    skipped = tuple(q.get("modules_to_not_convert") or ()) + tuple(q.get("ignored_layers") or ())
    ignore = ("lm_head",) + tuple("sub:" + m for m in skipped)
    return QuantizationConfig("fp8", (SchemeRule(("Linear",), scheme),), ignore)


PARSERS: dict[str, Callable[[Mapping[str, Any]], QuantizationConfig]] = {
    "gptq": parse_gptq,
    "awq": parse_awq,
    "compressed-tensors": parse_compressed_tensors,
    "fp8": parse_hf_fp8,
}
