"""Baselines of the throughput benchmark, measured in the same run on the same weights and requests.

* `hf-generate`, `hf-continuous`: Hugging Face transformers (PyTorch), in a child process
  (`hf_worker.py`: see there what each does and what is excluded from its time).
* `jax-static`: our model with a contiguous cache and static batches (`static_baseline.py`).

Every baseline's entry carries the same figures as our engine's (requests/s, output and total
tokens/s, elapsed), the number of requests it ran and their fingerprint, and how its greedy
outputs agree with ours on the same requests (equal weights and requests give equal tokens up
to floating-point ties and reduction order; bfloat16 drifts sooner).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pagedjax.bench.common import rates
from pagedjax.bench.datasets import Workload
from pagedjax.bench.weights import ModelSource

HF_BASELINES = ("hf-generate", "hf-continuous")
ALL_BASELINES = HF_BASELINES + ("jax-static",)


def parse_baselines(text: str) -> tuple[str, ...]:
    """'all' / 'none' / a comma-separated subset of ALL_BASELINES -> their names, in a fixed order."""
    text = text.strip().lower()
    if text == "all":
        return ALL_BASELINES
    if text in ("", "none"):
        return ()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(ALL_BASELINES)}, "
                         f"all or none")
    return tuple(n for n in ALL_BASELINES if n in names)


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    """How a baseline's greedy outputs agree with ours on the same requests.

    `exact`: fraction of requests with identical outputs; `first_token`: fraction whose first
    output token matches (prefill parity); `prefix`: mean fraction of each output matching
    ours before the first difference.
    """
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"cannot compare {len(ours)} outputs with {len(theirs)}")
    exact = first = 0
    prefix = 0.0
    for a, b in zip(ours, theirs):
        exact += a == b
        first += bool(a) and bool(b) and a[0] == b[0]
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix += common / max(len(a), 1)
    n = len(ours)
    return dict(exact=exact / n, first_token=first / n, prefix=prefix / n)


def _hf_spec(source: ModelSource, workload: Workload, names, batch_size: int | None) -> dict:
    return dict(model_dir=source.model_dir, dtype=source.dtype, baselines=list(names),
                prompts=[list(p) for p in workload.prompts], output_lens=list(workload.output_lens),
                batch_size=batch_size, require_cuda=os.path.exists("/dev/nvidiactl"))


def run_hf_baselines(source: ModelSource, workload: Workload, names, *, batch_size: int | None,
                     scratch_dir: str) -> tuple[dict, dict]:
    """Runs the Hugging Face baselines `names` in a child process.

    Returns ({name: figures}, meta) where meta has the torch device, versions and load time.
    `batch_size` None: 32 on a CUDA device, 8 on the CPU (hf-generate's static batch size).
    A baseline that failed has {"error": message} instead of figures.
    """
    spec = _hf_spec(source, workload, names, batch_size)
    spec_path, result_path = os.path.join(scratch_dir, "hf_spec.json"), os.path.join(scratch_dir, "hf_result.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_worker.py")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, worker, spec_path, result_path], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0 or not os.path.exists(result_path):
        tail = (proc.stderr or proc.stdout or "")[-3000:]
        raise RuntimeError(f"the Hugging Face baselines failed (exit {proc.returncode}):\n{tail}")
    with open(result_path) as f:
        result = json.load(f)
    figures = {}
    for name in names:
        if name in result["errors"]:
            figures[name] = dict(error=result["errors"][name])
            continue
        r = result["results"][name]
        figures[name] = dict(**rates(len(workload), workload.num_prompt_tokens, workload.num_output_tokens,
                                     r.pop("elapsed_s")),
                             num_requests=len(workload), prompt_tokens=workload.num_prompt_tokens,
                             output_tokens=workload.num_output_tokens, device=result["device_name"], **r)
    meta = {k: v for k, v in result.items() if k not in ("results", "errors")}
    return figures, meta
