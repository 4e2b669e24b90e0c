"""benchmarks/gpu_check.sh --dry-run: the one-call GPU check runs on CPU with tiny sizes, so the
script cannot rot between the (rare) runs on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_check_dry_run_writes_its_reports(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = {p["part"]: p for p in summary["parts"]}
    assert list(parts) == ["environment", "gpu-tests", "kernels", "engine-tiny", "latency-tiny"]
    assert all(p["result"] == "ok" for p in parts.values()), (parts, res.stdout[-3000:])
    reports = {name: json.loads((tmp_path / name).read_text()) for name in
               ("kernels.json", "throughput-tiny.json", "latency-tiny.json", "environment.json")}
    throughput = reports["throughput-tiny.json"]
    assert throughput["benchmark"] == "throughput" and throughput["output_tokens_per_s"] > 0
    assert set(throughput["baselines"]) == {"hf-generate", "hf-continuous"}
    assert reports["environment.json"]["jax"][0].isdigit()
