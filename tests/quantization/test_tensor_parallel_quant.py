"""Runs the 8-device tensor-parallel checks of quantized models (`_tp_quant_checks.py`) in a
pytest subprocess whose environment has `--xla_force_host_platform_device_count=8` (this
process has one CPU device); their output is shown when anything fails."""

from __future__ import annotations

import os

from tests.parallel.test_tensor_parallel import _run_checks

CHECKS = os.path.join("tests", "quantization", "_tp_quant_checks.py")


def test_quantized_tensor_parallel_equals_one_device_on_eight_cpu_devices():
    _run_checks(CHECKS, 11)
