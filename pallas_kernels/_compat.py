"""Every Pallas name whose location moves between jax versions, in one place.

Kernel files import Pallas names ONLY from here. Verified on jax 0.10.2 (CPU interpret mode
and CUDA lowering). The fallbacks cover older spellings; the warning filter covers jax 0.11,
which deprecates the Pallas Triton backend (the module is still there; a later jax may drop
it, in which case the kernels raise ImportError when called, while the jnp references keep
working).

Exported:
  pl                    `jax.experimental.pallas` (pallas_call, BlockSpec, program_id, when,
                        cdiv: stable across the versions we support)
  TritonCompilerParams  Triton compiler params (`plgpu.CompilerParams`, formerly
                        `TritonCompilerParams`); passing it selects the Triton backend on GPU
  load, store           masked loads/stores (`plgpu.load/store`, formerly `pl.load/store`)
  dot                   2-D matmul with `trans_b`/`precision` (`plgpu.dot`, formerly `pl.dot`)
  get_topology_desc     `jax.experimental.topologies.get_topology_desc` (deviceless compilation)
"""

from __future__ import annotations

import warnings

from jax.experimental import pallas as pl

with warnings.catch_warnings():
    # NOTE: jax 0.11 deprecates the Pallas Triton backend; importing it may warn.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from jax.experimental.pallas import triton as plgpu
    except ImportError as e:  # pragma: no cover - depends on the jax version
        plgpu, _TRITON_IMPORT_ERROR = None, e
    else:
        _TRITON_IMPORT_ERROR = None


def _missing(name: str):
    def fail(*args, **kwargs):
        raise ImportError(
            f"pallas_kernels: this jax ({__import__('jax').__version__}) has no Pallas {name}"
            f" (Triton backend import error: {_TRITON_IMPORT_ERROR})"
        )

    return fail


def _first_attr(name: str, *candidates):
    """The first `module.attr` that exists among `(module, attr)` candidates."""
    for module, attr in candidates:
        if module is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            value = getattr(module, attr, None)
        if value is not None:
            return value
    return _missing(name)


TritonCompilerParams = _first_attr(
    "Triton CompilerParams",
    (plgpu, "CompilerParams"),
    (plgpu, "TritonCompilerParams"),
    (pl, "TritonCompilerParams"),
)
load = _first_attr("load", (plgpu, "load"), (pl, "load"))
store = _first_attr("store", (plgpu, "store"), (pl, "store"))
dot = _first_attr("dot", (plgpu, "dot"), (pl, "dot"))



def get_topology_desc(**kwargs):
    """`jax.experimental.topologies.get_topology_desc` (imported on use: deviceless compiles only)."""
    from jax.experimental import topologies

    return topologies.get_topology_desc(**kwargs)


__all__ = ["pl", "TritonCompilerParams", "load", "store", "dot", "get_topology_desc"]
