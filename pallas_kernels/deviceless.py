"""Compiling for an NVIDIA GPU on a machine without one (deviceless ahead-of-time compilation).

With `jax-cuda12-plugin` (== jax's version) and `nvidia-cuda-nvcc-cu12` (ptxas) installed,
jax builds sm_90 binaries on a CPU-only machine: a GPU topology is described from a
GpuTargetConfig text proto (pallas_kernels/targets/), every argument is placed on that
topology's device, and `jit(f).trace(...).lower().compile()` runs XLA's GPU pipeline, Pallas'
Triton lowering, Triton -> PTX and ptxas -> cubin. Shared-memory and register overflows fail
here, as they would on the GPU. Run with `JAX_PLATFORMS=cpu` (the default backend stays the
CPU; kernels must be called with `interpret=False`).

`compile_for_target` also reports, per GPU kernel of the compiled module, its launch shape
and shared memory (XLA's thunk sequence, dumped while compiling) and, for Triton kernels,
ptxas' register / spill / stack figures (`ptxas -v` on the dumped PTX).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
from jax.sharding import SingleDeviceSharding

from pallas_kernels._compat import get_topology_desc
from pallas_kernels.tiles import DEFAULT_TARGET, target_config_path

INSTALL_HINT = ("pip install 'jax-cuda12-plugin==<jax version>' nvidia-cuda-nvcc-cu12"
                " (both in pagedjax's `test` extra), and run with JAX_PLATFORMS=cpu")


class DevicelessCompileUnavailable(RuntimeError):
    """The CUDA plugin or ptxas is missing: deviceless GPU compilation cannot run here."""


@dataclasses.dataclass(frozen=True)
class KernelStats:
    """One GPU kernel of a compiled module."""

    name: str  # the kernel's entry name (a Pallas kernel: its pallas_call name)
    grid: tuple[int, int, int]
    threads_per_block: int
    shared_memory_bytes: int  # what the launch asks for (Triton: dynamic shared memory)
    triton: bool  # compiled by Triton (Pallas kernels, XLA's Triton fusions)
    registers: int | None = None  # per thread, from ptxas (Triton kernels)
    spill_store_bytes: int | None = None
    spill_load_bytes: int | None = None
    stack_frame_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class TargetCompilation:
    """The result of `compile_for_target`."""

    compiled: jax.stages.Compiled
    kernels: tuple[KernelStats, ...]
    target: str

    def memory_analysis(self):
        """XLA's `CompiledMemoryStats` (argument, output, alias and temp bytes)."""
        return self.compiled.memory_analysis()

    @property
    def triton_kernels(self) -> tuple[KernelStats, ...]:
        return tuple(k for k in self.kernels if k.triton)


def _cuda_nvcc_dir() -> Path | None:
    spec = importlib.util.find_spec("nvidia.cuda_nvcc") if importlib.util.find_spec("nvidia") else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def ptxas_path() -> Path:
    """ptxas from nvidia-cuda-nvcc-cu12 (where XLA finds it too), else from PATH."""
    nvcc = _cuda_nvcc_dir()
    if nvcc is not None and (nvcc / "bin" / "ptxas").is_file():
        return nvcc / "bin" / "ptxas"
    found = shutil.which("ptxas")
    if found is None:
        raise DevicelessCompileUnavailable(f"ptxas not found: {INSTALL_HINT}")
    return Path(found)


def target_device(target: str = DEFAULT_TARGET):
    """The (only) device of a 1x1x1 topology of `target`: put abstract arguments on it."""
    if importlib.util.find_spec("jax_plugins") is None or importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
        raise DevicelessCompileUnavailable(f"jax's CUDA plugin is not installed: {INSTALL_HINT}")
    plugin = importlib.metadata.version("jax-cuda12-plugin")
    if plugin != jax.__version__:
        raise DevicelessCompileUnavailable(
            f"jax-cuda12-plugin {plugin} does not match jax {jax.__version__}: {INSTALL_HINT}")
    ptxas_path()
    config = target_config_path(target).read_text()
    topology = get_topology_desc(platform="cuda", target_config=config, topology="1x1x1")
    return topology.devices[0]


def place_on_device(tree, device):
    """`tree` with every `jax.ShapeDtypeStruct` leaf placed on `device` (e.g. `target_device()`)."""
    sharding = SingleDeviceSharding(device)

    def place(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return x

    return jax.tree.map(place, tree)


def compile_for_target(fn, *abstract_args, target: str = DEFAULT_TARGET,
                       kernel_stats: bool = True, donate_argnums: tuple[int, ...] = ()) -> TargetCompilation:
    """Compiles `fn(*abstract_args)` for `target` ("h100" = sm_90, right for H200 too) with no GPU.

    abstract_args: pytrees of `jax.ShapeDtypeStruct` (their shardings are replaced by the
    target device's); static arguments go into `fn` (functools.partial). Kernels inside must
    be called with `interpret=False`. kernel_stats: also run `ptxas -v` on each Triton
    kernel's PTX for registers and spills (about as long as XLA's own ptxas run); without
    it those fields are None. donate_argnums: as `jax.jit`'s (a donated KV pool is updated in
    place, so temp bytes are what serving would use). Raises `DevicelessCompileUnavailable` when the CUDA plugin or
    ptxas is missing, and what XLA raises for a module the GPU could not run (e.g.
    RESOURCE_EXHAUSTED: shared memory size limit exceeded).
    """
    device = target_device(target)
    args = place_on_device(abstract_args, device)
    with tempfile.TemporaryDirectory(prefix="pagedjax-deviceless-") as dump:
        # NOTE: a fresh dump path per call also keeps the persistent cache from serving a
        # compile whose dump we need.
        compiled = jax.jit(fn, donate_argnums=donate_argnums).trace(*args).lower().compile({"xla_dump_to": dump})
        kernels = _kernel_stats(Path(dump), kernel_stats)
    return TargetCompilation(compiled, kernels, target)


_THUNK = re.compile(r"kCustomKernel\s*\[[^\]]*\]\s*(\S+)\s+grid:\s*\[(\d+),\s*(\d+),\s*(\d+)\]\s+"
                    r"threads:\s*\[(\d+),\s*(\d+),\s*(\d+)\]\s+shared_memory:\s*(\d+)")
_ENTRY = re.compile(r"^\.visible \.entry (\w+)\(", re.M)


def _kernel_stats(dump: Path, with_ptxas: bool) -> tuple[KernelStats, ...]:
    thunks = [m for f in sorted(dump.glob("*thunk_sequence.txt")) for m in _THUNK.finditer(f.read_text())]
    triton_ptx = {}  # entry name -> PTX file, for Triton-compiled modules
    for ptx in sorted(dump.glob("*.ptx")):
        text = ptx.read_text()
        if ".extern .shared .align 16 .b8 global_smem[]" in text:
            for name in _ENTRY.findall(text):
                triton_ptx[name] = ptx
    ptxas = {}
    if with_ptxas:
        for ptx in sorted(set(triton_ptx.values())):
            ptxas.update(run_ptxas_verbose(ptx))
    stats = []
    for m in thunks:
        name = m.group(1)
        figures = ptxas.get(name, {})
        stats.append(KernelStats(
            name=name, grid=tuple(int(m.group(i)) for i in (2, 3, 4)),
            threads_per_block=int(m.group(5)) * int(m.group(6)) * int(m.group(7)),
            shared_memory_bytes=int(m.group(8)), triton=name in triton_ptx, **figures))
    return tuple(stats)


def run_ptxas_verbose(ptx: Path) -> dict[str, dict[str, int]]:
    """{entry: {registers, spill_store_bytes, spill_load_bytes, stack_frame_bytes}} of `ptxas -v`."""
    arch = re.search(r"^\.target\s+(\w+)", ptx.read_text(), re.M).group(1)
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run([str(ptxas_path()), f"-arch={arch}", "-v", str(ptx), "-o",
                                 os.path.join(out, "kernel.cubin")], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"ptxas failed on {ptx.name}: {result.stderr[-2000:]}")
    return parse_ptxas_verbose(result.stderr + result.stdout)


def parse_ptxas_verbose(text: str) -> dict[str, dict[str, int]]:
    """Per-function figures from ptxas' `-v` report."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.update(stack_frame_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)),
                           spill_load_bytes=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
    return out
