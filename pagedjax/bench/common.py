"""Helpers shared by the benchmarks: summary statistics, the run's environment, rates, JSON output.

NOTE: nothing here initialises a JAX backend at import time; `environment()` does (it asks
for the device), so call it only after the Hugging Face baselines' child process has run and
released the GPU.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from typing import Sequence

import numpy as np

def summary(values: Sequence[float]) -> dict:
    """mean, median, p90, p99, min, max of `values` (all None when empty)."""
    if len(values) == 0:
        return dict(mean=None, median=None, p90=None, p99=None, min=None, max=None)
    a = np.asarray(values, np.float64)
    return dict(mean=float(a.mean()), median=float(np.median(a)), p90=float(np.percentile(a, 90)),
                p99=float(np.percentile(a, 99)), min=float(a.min()), max=float(a.max()))


def rates(num_requests: int, prompt_tokens: int, output_tokens: int, elapsed_s: float) -> dict:
    """vLLM's throughput figures: requests/s, output tokens/s, (prompt + output) tokens/s."""
    if elapsed_s <= 0:
        raise ValueError(f"elapsed time must be positive, got {elapsed_s}")
    return dict(requests_per_s=num_requests / elapsed_s, output_tokens_per_s=output_tokens / elapsed_s,
                total_tokens_per_s=(prompt_tokens + output_tokens) / elapsed_s, elapsed_s=elapsed_s)


RATE_KEYS = ("requests_per_s", "output_tokens_per_s", "total_tokens_per_s")


def ratios(ours: dict, baseline: dict) -> dict:
    """ours / baseline for each rate in RATE_KEYS."""
    return {k: ours[k] / baseline[k] for k in RATE_KEYS}


def git_info() -> dict:
    """The checkout's commit (`git rev-parse HEAD`) and whether it has uncommitted changes; None outside git."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def git(*args):
        try:
            res = subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return dict(commit=commit, dirty=None if status is None else bool(status))


def environment() -> dict:
    """Device (kind, platform, count), library versions, commit, host CPUs and load, a UTC timestamp.

    The load average says whether other work shared the host (CPU figures are noisy then)."""
    import jax

    device = jax.devices()[0]
    versions = dict(jax=jax.__version__)
    for name in ("jaxlib", "flax", "torch", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return dict(device=dict(device_kind=getattr(device, "device_kind", str(device)), platform=device.platform,
                            num_devices=jax.device_count()),
                jax_version=jax.__version__, versions=versions, git=git_info(), host_cpus=os.cpu_count(),
                host_load_average_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def device_slug(device_kind: str, platform: str) -> str:
    """A file-name-safe device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    text = device_kind if platform != "cpu" else "cpu"
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def write_json(report: dict, path: str) -> None:
    """Writes `report` as indented JSON, creating the parent directory."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
        f.write("\n")
