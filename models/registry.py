"""Architecture registry: HF `architectures[0]` -> the flags that configure the shared layers."""

from __future__ import annotations

from models import llama, mistral, qwen2, qwen3

_ARCHITECTURES = {m.ARCHITECTURE: m for m in (llama, mistral, qwen2, qwen3)}


def supported_architectures() -> tuple[str, ...]:
    """Names of the HF architectures this package can build."""
    return tuple(sorted(_ARCHITECTURES))


def architecture_flags(architecture: str, hf_config: dict) -> dict:
    """ModelConfig fields specific to `architecture`; ValueError listing the supported ones otherwise."""
    module = _ARCHITECTURES.get(architecture)
    if module is None:
        raise ValueError(
            f"architecture {architecture!r} is not supported; supported architectures: "
            f"{', '.join(supported_architectures())}"
        )
    return module.flags(hf_config)
