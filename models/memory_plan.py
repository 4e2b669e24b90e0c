"""Memory plan of a model over a tensor-parallel mesh, from its config alone (allocates nothing):
the parameter bytes each device holds under the partition rules (models/sharding.py), with the
experts split inside each expert (tensor parallel) or by expert (`expert_parallel`, vLLM's
`enable_expert_parallel`), the KV cache bytes a token takes on each device, and how many tokens
of KV cache fit in what the device's memory leaves.

    python -m models.memory_plan mixtral-8x7b qwen3-30b-a3b gpt-oss-20b --tp 1,2,4,8 [--device-gb 80]

NOTE: the KV figure is the pool's (every layer stores every token; a sliding-window layer's
blocks are not given back while other layers are global) and counts no activation memory:
the engine measures the step's temporary bytes at start-up and sizes the pool after them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax.numpy as jnp

from models.config import ModelConfig
from models.sharding import check_tensor_parallel, param_bytes_per_device, param_shapes, pool_kv_heads


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """One (model, dtype, tensor-parallel degree, expert layout) on devices of `device_bytes`."""

    tensor_parallel_size: int
    expert_parallel: bool
    param_bytes_total: int
    param_bytes_per_device: int
    expert_bytes_total: int  # the routed experts' stacked weights (0 for a dense model)
    expert_bytes_per_device: int
    experts_per_device: int  # routed experts each device computes: E / N whole (EP), all E (TP; 0 if dense)
    expert_width_per_device: int  # of each of them: the intermediate size (EP), a 1/N slice of it (TP)
    kv_bytes_per_token_per_device: int
    device_bytes: int
    gpu_memory_utilization: float

    @property
    def kv_budget_bytes_per_device(self) -> int:
        """What the memory fraction leaves each device for KV cache after its parameters (may be < 0)."""
        return int(self.device_bytes * self.gpu_memory_utilization) - self.param_bytes_per_device

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV cache (over all sequences) the mesh holds; 0 when the parameters do not fit."""
        return max(0, self.kv_budget_bytes_per_device // self.kv_bytes_per_token_per_device)

    @property
    def fits(self) -> bool:
        return self.kv_tokens > 0

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "kv_budget_bytes_per_device": self.kv_budget_bytes_per_device,
                "kv_tokens": self.kv_tokens, "fits": self.fits}


def memory_plan(cfg: ModelConfig, *, tensor_parallel_size: int = 1, expert_parallel: bool = False,
                dtype="bfloat16", kv_dtype=None, device_bytes: int = 80 * 10**9,
                gpu_memory_utilization: float = 0.9, shapes=None) -> MemoryPlan:
    """The `MemoryPlan` of `cfg` (see the module docstring); ValueError when `cfg` cannot be split
    `tensor_parallel_size` ways with that expert layout, or on a bad field. `shapes`:
    `models.sharding.param_shapes(cfg)`, to plan several meshes of one model without rebuilding it."""
    if device_bytes < 1:
        raise ValueError(f"device_bytes must be >= 1, got {device_bytes}")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if expert_parallel and cfg.moe is None:
        raise ValueError(f"expert_parallel needs a mixture of experts; {cfg.architecture} has none")
    tp = tensor_parallel_size
    cfg = cfg.with_expert_parallel(expert_parallel)
    check_tensor_parallel(cfg, tp)
    params = param_bytes_per_device(cfg, jnp.dtype(dtype), tp, shapes)
    kv_itemsize = jnp.dtype(kv_dtype or dtype).itemsize
    kv_per_device = cfg.kv_bytes_per_token(kv_itemsize) * pool_kv_heads(cfg, tp) // (cfg.num_kv_heads * tp)
    moe = cfg.moe
    if moe is None:
        experts, width = 0, 0
    elif expert_parallel:
        experts, width = moe.num_experts // tp, moe.intermediate_size
    else:
        experts, width = moe.num_experts, moe.intermediate_size // tp
    return MemoryPlan(tensor_parallel_size=tp, expert_parallel=expert_parallel, param_bytes_total=params["total"],
                      param_bytes_per_device=params["per_device"], expert_bytes_total=params["experts_total"],
                      expert_bytes_per_device=params["experts_per_device"], experts_per_device=experts,
                      expert_width_per_device=width,
                      kv_bytes_per_token_per_device=kv_per_device, device_bytes=int(device_bytes),
                      gpu_memory_utilization=gpu_memory_utilization)


def format_plans(name: str, plans: list[MemoryPlan]) -> str:
    """A plain-text table: one line per plan."""
    lines = [f"{name}: {plans[0].param_bytes_total / 1e9:.2f} GB of parameters "
             f"({plans[0].expert_bytes_total / 1e9:.2f} GB routed experts); devices of "
             f"{plans[0].device_bytes / 1e9:.0f} GB at {plans[0].gpu_memory_utilization}",
             f"{'tp':>3} {'layout':>6} {'experts/dev':>16} {'params/dev GB':>13} {'experts/dev GB':>14} "
             f"{'KV/token/dev KB':>15} {'KV tokens':>10}"]
    for p in plans:
        held = f"{p.experts_per_device} x width {p.expert_width_per_device}"
        lines.append(f"{p.tensor_parallel_size:>3} {'EP' if p.expert_parallel else 'TP':>6} {held:>16} "
                     f"{p.param_bytes_per_device / 1e9:>13.2f} {p.expert_bytes_per_device / 1e9:>14.2f} "
                     f"{p.kv_bytes_per_token_per_device / 1024:>15.1f} "
                     f"{p.kv_tokens if p.fits else 'no fit':>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from models.presets import preset_config

    parser = argparse.ArgumentParser(description="Per-device parameter and KV bytes of presets under TP / EP.")
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--tp", default="1,2,4,8", help="tensor-parallel degrees, comma-separated")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device-gb", type=float, default=80.0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    args = parser.parse_args(argv)
    for name in args.presets:
        cfg = preset_config(name)
        shapes, plans = param_shapes(cfg), []
        for tp in (int(t) for t in args.tp.split(",")):
            for ep in ((False, True) if cfg.moe is not None else (False,)):
                try:
                    plans.append(memory_plan(cfg, tensor_parallel_size=tp, expert_parallel=ep, dtype=args.dtype,
                                             device_bytes=int(args.device_gb * 1e9),
                                             gpu_memory_utilization=args.gpu_memory_utilization, shapes=shapes))
                except ValueError as e:
                    print(f"{name} tp={tp} {'EP' if ep else 'TP'}: {e}", file=sys.stderr)
        if plans:
            print(format_plans(name, plans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
