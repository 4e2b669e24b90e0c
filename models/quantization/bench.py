"""What quantized linear layers buy: device bytes of a model's parameters and the KV blocks they
free (`param_bytes_table`), and the quantized matmul's time against a bfloat16 matmul
(`matmul_timing`). The command line is benchmarks/quant_bench.py.

Bytes come from the model itself, built abstractly (`nnx.eval_shape`, nothing allocated): the
preset's `ModelConfig` with the scheme's `quantization_config`, the loader's quantization plan
and its `QuantizedLinear`s, counted by `param_bytes` as `LLM.stats()["param_bytes"]` counts the
loaded ones. Embeddings and the LM head stay bfloat16 unless the scheme quantizes the head
(GPTQ's `lm_head`), as the tools leave them.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

BF16_BYTES = 2


@dataclasses.dataclass(frozen=True)
class BenchScheme:
    """One row: a checkpoint's `quantization_config` (or the on-load option) and its scales' dtype."""

    name: str
    quantization_config: dict | None = None
    on_load: str | None = None  # the engine's `quantization="int8" | "fp8"`
    scale_dtype: str = "bfloat16"  # what the format's checkpoints store (GPTQ / AWQ: float16)


SCHEMES = (
    BenchScheme("bf16"),
    BenchScheme("gptq-int4-g128-sym", {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True,
                                       "desc_act": False}, scale_dtype="float16"),
    BenchScheme("awq-int4-g128", {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                  "version": "gemm"}, scale_dtype="float16"),
    BenchScheme("gptq-int4-g128-sym+lm_head", {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True,
                                               "desc_act": False, "lm_head": True}, scale_dtype="float16"),
    BenchScheme("gptq-int8-channel", {"quant_method": "gptq", "bits": 8, "group_size": -1, "sym": True},
                scale_dtype="float16"),
    BenchScheme("int8-channel (on load)", on_load="int8"),
    BenchScheme("fp8-channel W8A8 (on load)", on_load="fp8"),
    BenchScheme("fp8-block-128x128", {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}, scale_dtype="float32"),
)


def model_param_bytes(hf_config: dict, schemes=SCHEMES, dtype=jnp.bfloat16) -> list[int]:
    """Device bytes of the parameters of the model `hf_config` describes, quantized as each of
    `schemes` says (the float model is built once; each scheme's `QuantizedLinear`s replace its
    projections in a copy, as `abstract_model` does)."""
    from flax import nnx

    from models.config import ModelConfig
    from models.loader import abstract_model, quantization_plan
    from models.quantization.linear import param_bytes
    from models.quantization.loading import install_quantized_linears

    graphdef, float_state = abstract_model(ModelConfig.from_hf_dict(hf_config), dtype)
    sizes = []
    for scheme in schemes:
        hf = dict(hf_config)
        if scheme.quantization_config is not None:
            hf["quantization_config"] = scheme.quantization_config
        cfg = ModelConfig.from_hf_dict(hf, quantization=scheme.on_load)
        plan = quantization_plan(cfg, dtype, default_scale_dtype=scheme.scale_dtype, float_state=float_state)
        model = nnx.merge(graphdef, float_state)
        install_quantized_linears(model, plan, bias_dtype=dtype)
        sizes.append(param_bytes(nnx.state(model, nnx.Param)))
    return sizes


def param_bytes_table(hf_config: dict, schemes=SCHEMES, *, memory_bytes: int, gpu_memory_utilization: float = 0.9,
                      block_size: int = 16, kv_cache_dtype: str = "auto") -> list[dict]:
    """One row per scheme: parameter bytes, the ratio to the first (bfloat16) row, and the KV blocks
    (`block_size` tokens of a bfloat16 model's pool in `kv_cache_dtype`, scales included) that fit
    in `gpu_memory_utilization * memory_bytes` once the parameters are in, as the runner's memory
    profile sizes the pool (less the step's activations, which do not depend on how the weights are
    stored); `kv_blocks_gained` against the first row."""
    from models.config import ModelConfig
    from pallas_kernels.kv_pool import KVPoolLayout

    cfg = ModelConfig.from_hf_dict(hf_config)
    per_block = KVPoolLayout.create(cfg.num_layers, cfg.num_kv_heads, block_size, cfg.head_dim,
                                    model_dtype=jnp.bfloat16, kv_cache_dtype=kv_cache_dtype).bytes_per_block
    budget = int(memory_bytes * gpu_memory_utilization)
    rows = []
    for scheme, nbytes in zip(schemes, model_param_bytes(hf_config, schemes)):
        rows.append(dict(scheme=scheme.name, param_bytes=nbytes, kv_bytes_per_block=per_block,
                         kv_blocks=max(0, (budget - nbytes) // per_block)))
    base = rows[0]
    for row in rows:
        row["ratio_to_" + schemes[0].name] = row["param_bytes"] / base["param_bytes"]
        row["kv_blocks_gained"] = row["kv_blocks"] - base["kv_blocks"]
        row["kv_tokens_gained"] = row["kv_blocks_gained"] * block_size
    return rows


def linear_shapes(cfg) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of one Llama-style decoder layer's linear layers."""
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    return [("q_proj", h, cfg.num_heads * hd), ("k_proj", h, cfg.num_kv_heads * hd),
            ("v_proj", h, cfg.num_kv_heads * hd), ("o_proj", cfg.num_heads * hd, h),
            ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]


# name -> the layer's scheme as the loader builds it (LinearScheme.layout)
TIMED_SCHEMES = {
    "int4-g128-sym": dict(format="gptq", bits=4, group_size=128),
    "int4-g128-asym": dict(format="gptq", bits=4, group_size=128, symmetric=False),
    "int8-channel": dict(format="gptq", bits=8, strategy="channel"),
    "fp8-channel-w8a8": dict(format="on-load-fp8", bits=8, weight_type="float", strategy="channel",
                             activation="token"),
    "fp8-block128-w8a8": dict(format="hf-fp8", bits=8, weight_type="float", strategy="block",
                              block_structure=(128, 128), activation="group"),
}


def timed_layout(name: str, in_features: int, out_features: int):
    """The `QuantLayout` of TIMED_SCHEMES[name] for a [in_features, out_features] weight (bf16 scales)."""
    from models.quantization.config import ActivationScheme, LinearScheme

    kwargs = dict(TIMED_SCHEMES[name])
    activation = kwargs.pop("activation", None)
    if activation is not None:
        group = kwargs["block_structure"][1] if activation == "group" else None
        kwargs["activation"] = ActivationScheme(activation, group_size=group)
    return LinearScheme(**kwargs).layout(in_features, out_features, "bfloat16")


def random_arrays(layout, seed: int = 0) -> dict:
    """Device arrays of `layout` with random contents (timing only: the values do not matter)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, spec in layout.param_specs().items():
        if name == "qweight" and layout.weight_format == "fp8":
            value = rng.normal(size=spec.shape).astype(np.float32)
        elif name == "qweight" or name == "zeros":
            info = np.iinfo(spec.dtype)
            value = rng.integers(info.min, info.max, spec.shape, dtype=np.int64)
            value = value if name == "qweight" else value % 8 - 4
        elif name == "g_idx":
            value = np.arange(layout.in_features) // layout.group_k
        else:  # scales, input_scale
            value = rng.uniform(0.001, 0.01, spec.shape)
        arrays[name] = jnp.asarray(value, spec.dtype)
    return arrays


def median_seconds(fn, *args, repeats: int) -> float:
    """Median wall time of `fn(*args)` (compiled and warmed up first)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_timing(tokens: int, in_features: int, out_features: int, schemes, backends, *,
                  repeats: int = 5, seed: int = 0) -> list[dict]:
    """Rows of the quantized matmul x [tokens, K] bf16 @ W [K, N] (each scheme, each backend of
    `quantized_linear`) against a bf16 x bf16 matmul of the same shape, timed side by side on
    this device; the bf16 matmul is timed before and after the rows (the mean of the two medians)."""
    from models.quantization.linear import quantized_linear
    from models.quantization.weights import QuantizedWeight

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(tokens, in_features)), jnp.bfloat16)  # [M, K]
    w = jnp.asarray(rng.normal(size=(in_features, out_features)) * 0.02, jnp.bfloat16)  # [K, N]
    dense = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype))
    dense_times = [median_seconds(dense, x, w, repeats=repeats)]
    rows = []
    for name in schemes:
        layout = timed_layout(name, in_features, out_features)
        arrays = random_arrays(layout, seed)
        for backend in backends:
            fn = jax.jit(lambda x, a, layout=layout, backend=backend:
                         quantized_linear(x, QuantizedWeight(layout, a), backend=backend))
            seconds = median_seconds(fn, x, arrays, repeats=repeats)
            rows.append(dict(scheme=name, backend=backend, shape=[tokens, in_features, out_features],
                             weight_bytes=layout.param_bytes(), ms=seconds * 1e3))
    dense_times.append(median_seconds(dense, x, w, repeats=repeats))
    dense_ms = statistics.median(dense_times) * 1e3
    for row in rows:
        row.update(bf16_matmul_ms=dense_ms, time_ratio_to_bf16=row["ms"] / dense_ms,
                   bf16_weight_bytes=in_features * out_features * BF16_BYTES)
    return rows
