"""The scheduler package stays pure Python, and its host benchmark runs."""

from __future__ import annotations

import subprocess
import sys

from scheduler.bench_host import measure_decode_step


def test_scheduler_imports_no_jax_numpy_or_sibling_packages():
    code = (
        "import sys, scheduler, scheduler.bench_host\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('jax', 'jaxlib', 'numpy', 'flax', 'pagedjax', 'models', 'pallas_kernels')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_host_measures_decode_steps():
    result = measure_decode_step(num_seqs=8, prompt_len=20, steps=5)
    assert result["num_seqs"] == 8 and result["steps"] == 5
    assert 0 < result["step_us_median"] <= result["step_us_max"]
