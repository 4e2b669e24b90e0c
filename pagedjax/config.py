"""`EngineConfig`: every engine option, declared once (vLLM's names, defaults and meanings).

Each field carries its help text; `pagedjax.engine_args` turns the fields into the command-line
options of `generate`, `serve` and `bench` (vLLM's flag names), and `LLM(model, **kwargs)`
accepts every field. Constants shared by the engine, the runner and the server live here too.
"""

from __future__ import annotations

import dataclasses
import typing

SUPPORTED_BLOCK_SIZES = (8, 16, 32, 64)
ATTENTION_BACKENDS = ("auto", "pallas", "reference", "pallas_interpret")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# vLLM's kv_cache_dtype names (pallas_kernels/kv_pool.py; a test keeps the two equal)
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "int8")
# `quantization`: a checkpoint's method (must match its config.json), or int8 / fp8 on load.
QUANTIZATION_METHODS = ("gptq", "awq", "compressed-tensors", "fp8", "int8")
# vLLM's defaults of max_num_batched_tokens: the offline LLM's, and the API server's.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
DEFAULT_SERVER_MAX_NUM_BATCHED_TOKENS = 2048
# The most top logprobs a request may ask for (vLLM's default `max_logprobs`).
MAX_LOGPROBS = 20
# The KV pool's size where the device reports no memory (CPU), unless kv_cache_memory_bytes says.
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


def option(default, help: str, **cli):
    """A field with its help text (and extra argparse settings: choices, aliases, flag)."""
    return dataclasses.field(default=default, metadata=dict(help=help, **cli))


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Options of `LLM`, the server and the benchmarks (vLLM's names and defaults)."""

    model: str | None = option(None, "checkpoint directory, Hugging Face hub id or preset (default: the built-in "
                                      "model)", cli=False)
    tokenizer: str | None = option(None, "tokenizer directory or hub id (default: the model's)")
    skip_tokenizer_init: bool = option(False, "load no tokenizer: prompts as token ids, outputs without text")
    dtype: str = option("auto", "weights and activations: auto (the checkpoint's), float32, bfloat16 or float16",
                         choices=DTYPES)
    kv_cache_dtype: str = option("auto", "KV cache dtype: auto (the model's), fp8 (= fp8_e4m3), fp8_e5m2 (both with "
                                         "per-layer scales from the checkpoint's k_scale/v_scale, else 1.0) or "
                                         "int8 (per-token scales kept beside the blocks)", choices=KV_CACHE_DTYPES)
    seed: int = option(0, "seed of the engine's random stream (requests may carry their own)")
    max_model_len: int | None = option(None, "context length, prompt and output (default: the model's)")
    block_size: int = option(16, "tokens per KV-cache block", choices=SUPPORTED_BLOCK_SIZES)
    gpu_memory_utilization: float = option(0.9, "fraction of device memory for weights, activations and the KV "
                                                 "cache")
    kv_cache_memory_bytes: int | None = option(None, "KV cache size in bytes on any device (default: profiled "
                                                      "from free device memory; 1 GiB where the device reports "
                                                      "none, e.g. CPU)")
    num_kv_blocks: int | None = option(None, "KV cache size in blocks (overrides the profile)",
                                        aliases=("--num-gpu-blocks-override",))
    max_num_seqs: int = option(256, "sequences per step at most")
    max_num_batched_tokens: int | None = option(None, f"tokens per step at most; longer prompts are chunked "
                                                       f"(default {DEFAULT_MAX_NUM_BATCHED_TOKENS} offline, "
                                                       f"{DEFAULT_SERVER_MAX_NUM_BATCHED_TOKENS} in the server)")
    enable_prefix_caching: bool = option(True, "reuse the KV blocks of identical prompt prefixes",
                                          aliases=("--no-prefix-caching",))
    async_scheduling: bool = option(True, "schedule and prepare step N+1 while step N runs on the device")
    tensor_parallel_size: int = option(1, "devices to split the model over (tensor parallelism)",
                                        aliases=("-tp",))
    enable_expert_parallel: bool = option(False, "split a mixture of experts' experts over the tensor-parallel "
                                                 "devices instead of splitting each expert")
    attention_backend: str = option("auto", "auto: the Pallas kernels on GPU, the jnp reference elsewhere; "
                                             "pallas_interpret: the kernels in interpret mode (testing)",
                                     choices=ATTENTION_BACKENDS)
    max_logprobs: int = option(MAX_LOGPROBS, "the most logprobs a request may ask for per token")
    quantization: str | None = option(None, "weight quantization: default the checkpoint's own (gptq, awq, "
                                             "compressed-tensors, fp8); int8 / fp8 quantize a float checkpoint "
                                             "on load, per channel", choices=QUANTIZATION_METHODS,
                                      aliases=("-q",))

    def __post_init__(self):
        _check_types(self)
        if self.block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {self.block_size}")
        for name in ("num_kv_blocks", "max_model_len", "max_num_batched_tokens", "kv_cache_memory_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("max_num_seqs", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if not 0 <= self.max_logprobs <= MAX_LOGPROBS:
            raise ValueError(f"max_logprobs must be in [0, {MAX_LOGPROBS}], got {self.max_logprobs}")
        for name, allowed in (("attention_backend", ATTENTION_BACKENDS), ("dtype", DTYPES),
                              ("kv_cache_dtype", KV_CACHE_DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"quantization must be None or one of {QUANTIZATION_METHODS}, got {self.quantization!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def resolved_backend(self, platform: str) -> str:
        """`auto` -> the Pallas kernels on GPU, the jnp reference elsewhere."""
        if self.attention_backend == "auto":
            return "pallas" if platform == "gpu" else "reference"
        return self.attention_backend

    def resolved_max_num_batched_tokens(self) -> int:
        return self.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS


def field_type(field: dataclasses.Field, cls=None) -> type:
    """The plain type of a config field (`int | None` -> int); of EngineConfig unless `cls`."""
    hint = typing.get_type_hints(cls or EngineConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _check_types(config: EngineConfig) -> None:
    """ValueError naming the field for a value of the wrong type (bools are not ints)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None and field.default is None:
            continue
        want = field_type(field)
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"EngineConfig.{field.name} must be {want.__name__}"
                            f"{' or None' if field.default is None else ''}, got {value!r}")
