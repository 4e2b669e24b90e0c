"""The JAX platform when nothing chose one.

The test extra installs jax's CUDA plugin (deviceless sm_90 compiles need it). On a machine with
no NVIDIA driver, jax then prints the plugin's failed initialisation as a long traceback on first
use, which reads as breakage, before falling back to the CPU. Without a driver the CPU is the only
platform the plugin could leave, so we say so up front; `JAX_PLATFORMS` set by the user always wins.
"""

from __future__ import annotations

import importlib.util
import os


def prefer_cpu_without_gpu_driver() -> None:
    """Sets JAX_PLATFORMS=cpu when it is unset, jax's CUDA plugin is installed and no NVIDIA
    driver is loaded (no /proc/driver/nvidia). Call before jax is imported."""
    if "JAX_PLATFORMS" in os.environ or os.path.exists("/proc/driver/nvidia"):
        return
    try:
        has_plugin = importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except (ImportError, ValueError):
        has_plugin = False
    if has_plugin:
        os.environ["JAX_PLATFORMS"] = "cpu"
