"""Helpers the blocks share: the Linear layer they all use and the activation functions."""

from __future__ import annotations

import jax
from flax import nnx

INIT = nnx.initializers.normal(stddev=0.02)

ACTIVATION_FNS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # gelu_new, gelu_pytorch_tanh, BLOOM's
    "relu": jax.nn.relu,
}


def linear(fan_in: int, fan_out: int, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """`nnx.Linear` with kernel `[fan_in, fan_out]` in `dtype` (computation and storage)."""
    return nnx.Linear(fan_in, fan_out, use_bias=bias, dtype=dtype, param_dtype=dtype, kernel_init=INIT,
                      rngs=rngs)
