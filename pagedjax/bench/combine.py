"""`pagedjax bench combine`: one report from the parts of a split throughput run.

A run too long for one command (an 8B model with HF baselines under a 10-minute limit per
command) is split: our engine in one part, each baseline in another, all with the same model,
seed, workload options and `--weights-dir`. Parts must agree on the device, the model (name,
dtype, architecture, size) and the full workload's fingerprint; a baseline may appear in one
part only. Ratios are recomputed against our engine's figures on the same requests.
"""

from __future__ import annotations

import copy

from pagedjax.bench.report import compute_ratios

_MODEL_KEYS = ("name", "kind", "dtype", "architecture", "num_params", "weights")


def combine(parts: list[dict]) -> dict:
    """Merges throughput reports (module docstring); ValueError when they do not belong together."""
    if not parts:
        raise ValueError("nothing to combine")
    if any(p.get("benchmark") != "throughput" for p in parts):
        raise ValueError("only throughput reports can be combined")
    first = parts[0]
    for p in parts[1:]:
        for what, a, b in (
                ("device", first["device"]["device_kind"], p["device"]["device_kind"]),
                ("model", [first["model"].get(k) for k in _MODEL_KEYS], [p["model"].get(k) for k in _MODEL_KEYS]),
                ("workload", first["workload"]["fingerprint"], p["workload"]["fingerprint"])):
            if a != b:
                raise ValueError(f"the parts differ in {what}: {a} vs {b}")
    engines = [p for p in parts if p.get("requests_per_s") is not None]
    if len(engines) > 1:
        raise ValueError(f"{len(engines)} parts ran our engine; keep one")
    merged = copy.deepcopy(engines[0] if engines else first)
    merged["baselines"] = {}
    for p in parts:
        for name, fig in p.get("baselines", {}).items():
            if name in merged["baselines"]:
                raise ValueError(f"baseline {name} appears in more than one part")
            merged["baselines"][name] = copy.deepcopy(fig)
        if merged.get("hf_environment") is None and p.get("hf_environment") is not None:
            merged["hf_environment"] = p["hf_environment"]
    merged["parts"] = [dict(timestamp=p.get("timestamp"), git=p.get("git"),
                            engine=p.get("requests_per_s") is not None, baselines=sorted(p.get("baselines", {})))
                       for p in parts]
    merged["ratios"] = compute_ratios(merged)
    return merged
