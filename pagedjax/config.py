"""`EngineConfig`: every engine option in one frozen, self-validating dataclass (vLLM's defaults)."""

from __future__ import annotations

import dataclasses

SUPPORTED_BLOCK_SIZES = (8, 16, 32, 64)
ATTENTION_BACKENDS = ("auto", "pallas", "reference", "pallas_interpret")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Options of `LLM` / the server (see `LLM` for their meaning)."""

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # default 8192, as vLLM's offline LLM
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"
    seed: int = 0
    skip_tokenizer_init: bool = False  # token ids in and out only (no tokenizer files needed)
    tensor_parallel_size: int = 1  # devices the model is split over (a `tp` mesh axis)
    cpu_kv_cache_bytes: int = 1 << 30  # KV budget where the device reports no memory (CPU)

    def __post_init__(self):
        if self.block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")

    def resolved_backend(self, platform: str) -> str:
        """`auto` -> the Pallas kernels on GPU, the jnp reference elsewhere."""
        if self.attention_backend == "auto":
            return "pallas" if platform == "gpu" else "reference"
        return self.attention_backend
