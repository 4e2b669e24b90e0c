"""Throughput reports: ratios to the baselines, the stdout table, and the optional bar chart."""

from __future__ import annotations

import os

from pagedjax.bench.common import ratios

OURS = "pagedjax"


def engine_figures_for(report: dict, fingerprint: str) -> dict | None:
    """Our engine's figures on the requests with `fingerprint` (the full workload or the baselines' subset)."""
    if report.get("requests_per_s") is not None and report["workload"]["fingerprint"] == fingerprint:
        return report
    subset = report.get("ours_on_baseline_subset")
    if subset and subset.get("workload_fingerprint") == fingerprint:
        return subset
    return None


def compute_ratios(report: dict) -> dict:
    """{baseline: {rate: ours / baseline}} for every baseline measured on requests our engine also ran."""
    out = {}
    for name, base in report.get("baselines", {}).items():
        if "error" in base:
            continue
        ours = engine_figures_for(report, base["workload_fingerprint"])
        if ours is not None:
            out[name] = dict(ratios(ours, base), num_requests=base["num_requests"])
    return out


def _row(name: str, fig: dict, ratio: dict | None) -> str:
    r = f"{ratio['requests_per_s']:8.2f}x" if ratio else f"{'':9s}"
    return (f"{name:22s} {fig['num_requests']:6d} {fig['requests_per_s']:9.3f} {fig['output_tokens_per_s']:11.1f} "
            f"{fig['total_tokens_per_s']:12.1f} {fig['elapsed_s']:10.2f} {r}")


def format_table(report: dict) -> str:
    """The throughput table (one row per system; the last column is ours / that system, in requests/s)."""
    lines = [f"device: {report['device']['device_kind']} ({report['device']['platform']})   "
             f"model: {report['model']['name']} ({report['model']['dtype']})   workload: {report['workload']['kind']}, "
             f"{report['workload']['num_prompts']} requests, seed {report['workload']['seed']}",
             f"{'system':22s} {'reqs':>6s} {'req/s':>9s} {'out tok/s':>11s} {'total tok/s':>12s} "
             f"{'elapsed s':>10s} {'ours/this':>9s}"]
    if report.get("requests_per_s") is not None:
        lines.append(_row(OURS, report, None))
    subset = report.get("ours_on_baseline_subset")
    if subset:
        lines.append(_row(f"{OURS} (subset)", subset, None))
    ratio_table = report.get("ratios", {})
    for name, base in report.get("baselines", {}).items():
        if "error" in base:
            lines.append(f"{name:22s} FAILED: {base['error'][:150]}")
        else:
            lines.append(_row(name, base, ratio_table.get(name)))
    kv = report.get("kv_memory")
    if kv:
        lines.append(f"KV waste (time-averaged over {kv['num_steps_sampled']} steps): paged "
                     f"{100 * kv['paged_waste']:.1f}%, contiguous max_model_len={kv['max_model_len']} reservation "
                     f"{100 * kv['contiguous_waste']:.1f}%")
    roof = report.get("roofline")
    if roof:
        lines.append(f"copy bandwidth: {roof['copy_bandwidth']['gb_per_s']:.1f} GB/s (read + write)")
        for b in roof["batches"]:
            if "skipped" in b:
                lines.append(f"decode roofline batch {b['batch']}: skipped ({b['skipped']})")
            else:
                lines.append(f"decode roofline batch {b['batch']} ctx {b['context']}: step "
                             f"{1e3 * b['step_s']['median']:.3f} ms (host {1e3 * b['host_s']['median']:.3f} ms), "
                             f"floor {1e3 * b['floor_s']:.3f} ms -> {b['ratio_to_floor']:.2f}x the floor")
    return "\n".join(lines)


def plot_path(json_path: str) -> str:
    """The PNG beside a JSON report: same name, .png."""
    root, _ = os.path.splitext(json_path)
    return root + ".png"


def plot_throughput(report: dict, path: str) -> str:
    """Bar chart of output and total tokens/s per system (matplotlib, imported here); returns `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from e
    systems = []
    if report.get("requests_per_s") is not None:
        systems.append((OURS, report))
    if report.get("ours_on_baseline_subset"):
        systems.append((f"{OURS}\n(subset)", report["ours_on_baseline_subset"]))
    systems += [(n, b) for n, b in report.get("baselines", {}).items() if "error" not in b]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(systems), 4.2))
    xs = range(len(systems))
    width = 0.38
    for offset, key, label in ((-width / 2, "output_tokens_per_s", "output tok/s"),
                               (width / 2, "total_tokens_per_s", "total tok/s")):
        values = [fig_[key] for _, fig_ in systems]
        bars = ax.bar([x + offset for x in xs], values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(list(xs), [n for n, _ in systems], fontsize=8)
    ax.set_ylabel("tokens / s")
    ax.set_title(f"{report['model']['name']} ({report['model']['dtype']}) on {report['device']['device_kind']}, "
                 f"{report['workload']['num_prompts']} requests", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
