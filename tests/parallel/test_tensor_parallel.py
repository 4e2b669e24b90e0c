"""Runs the 8-device tensor-parallel checks (`_tp_checks.py`) in a pytest subprocess.

jax reads `XLA_FLAGS=--xla_force_host_platform_device_count=8` once, when it initialises, and
this test process has one CPU device; so the checks run in a fresh interpreter whose
environment has the flag. Their pytest output is shown when anything fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKS = os.path.join("tests", "parallel", "_tp_checks.py")
SPEC_CHECKS = os.path.join("tests", "parallel", "_tp_spec_checks.py")  # passes after the kernels merge
MOE_CHECKS = os.path.join("tests", "parallel", "_tp_moe_checks.py")


def subprocess_env(device_count: int) -> dict:
    """This environment plus `device_count` host CPU devices and the repository on sys.path."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={device_count}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    for name in [k for k in env if k.startswith("PYTEST_XDIST") or k == "PYTEST_CURRENT_TEST"]:
        del env[name]
    return env


def _run_checks(path: str, min_passed: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic",
         "-rfEs"],
        cwd=REPO, env=subprocess_env(8), capture_output=True, text=True, timeout=1200)
    output = f"--- stdout ---\n{proc.stdout[-30000:]}\n--- stderr ---\n{proc.stderr[-10000:]}"
    assert proc.returncode == 0, output
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= min_passed, output
    assert not re.search(r"skipped|xfail|deselected|error", summary), output


def test_tensor_parallel_checks_on_eight_cpu_devices():
    _run_checks(CHECKS, 29)


def test_tensor_parallel_of_alibi_softcap_and_window_families():
    _run_checks(SPEC_CHECKS, 4)


def test_mixtures_of_experts_tensor_and_expert_parallel():
    _run_checks(MOE_CHECKS, 6)
