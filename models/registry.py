"""Architecture registry: HF `architectures[0]` -> its `Architecture` (models/families/)."""

from __future__ import annotations

import importlib
import types
from typing import Mapping

from models.architecture import Architecture

# Family modules under models/families/, each declaring ARCHITECTURES.
FAMILY_MODULES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_bigcode", "opt", "gptj", "gpt_neox",
                  "falcon", "bloom", "mpt", "gemma", "phi", "phi3", "starcoder2", "olmo", "stablelm", "granite",
                  "internlm2", "baichuan")


def _collect() -> Mapping[str, Architecture]:
    found = {}
    for module_name in FAMILY_MODULES:
        module = importlib.import_module(f"models.families.{module_name}")
        for arch in module.ARCHITECTURES:
            if arch.name in found:
                raise ValueError(f"architecture {arch.name} is declared twice")
            found[arch.name] = arch
    return types.MappingProxyType(found)


ARCHITECTURES: Mapping[str, Architecture] = _collect()


def supported_architectures() -> tuple[str, ...]:
    """Names of the HF architectures this package can build."""
    return tuple(sorted(ARCHITECTURES))


def get_architecture(name: str) -> Architecture:
    """The `Architecture` named `name`; ValueError listing the supported ones otherwise."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ValueError(f"architecture {name!r} is not supported; supported architectures: "
                         f"{', '.join(supported_architectures())}")
    return arch
