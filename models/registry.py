"""Architecture registry: HF `architectures[0]` -> its `Architecture` (models/families/)."""

from __future__ import annotations

import importlib
import types
from typing import Mapping

from models.architecture import Architecture

# Family modules under models/families/, each declaring ARCHITECTURES.
FAMILY_MODULES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_bigcode", "opt", "gptj", "gpt_neox",
                  "falcon", "bloom", "mpt", "gemma", "phi", "phi3", "starcoder2", "olmo", "stablelm", "granite",
                  "internlm2", "baichuan", "mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss")


def _collect() -> tuple[Mapping[str, Architecture], Mapping[str, str]]:
    found, modules = {}, {}
    for module_name in FAMILY_MODULES:
        module = importlib.import_module(f"models.families.{module_name}")
        for arch in module.ARCHITECTURES:
            if arch.name in found:
                raise ValueError(f"architecture {arch.name} is declared twice")
            found[arch.name], modules[arch.name] = arch, module_name
    return types.MappingProxyType(found), types.MappingProxyType(modules)


ARCHITECTURES, FAMILY_OF = _collect()  # name -> Architecture, name -> its family module


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


def architecture_table() -> str:
    """The README's table of supported architectures (markdown), generated from the registry."""
    lines = ["| HF architecture | Family module | What the shared blocks are configured with | Tested against |",
             "| --- | --- | --- | --- |"]
    for name in supported_architectures():
        arch = ARCHITECTURES[name]
        if not arch.parity_tested:
            tested = "no HF class: weight-map round trip (blocks checked in other families)"
        elif arch.reference_class == name:
            tested = f"`{name}`"
        else:
            tested = f"`{arch.reference_class}`, via a converted checkpoint"
        lines.append(f"| `{name}` | `models/families/{FAMILY_OF[name]}.py` | {arch.description} | {tested} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--table"]:
        raise SystemExit("usage: python -m models.registry --table")
    print(architecture_table(), end="")
