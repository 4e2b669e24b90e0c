"""Benchmark of the paged attention kernels against the device's copy bandwidth and XLA.

For each workload (decode: batch x context; ragged: a prefill-heavy and a mixed batch) it
times the Pallas kernel (warm-up, then the median of many runs, `block_until_ready`), sweeps
the tuning knobs by coordinate descent from the defaults, and reports:
  * achieved bandwidth = K/V bytes the step must read (each sequence's keys its queries can
    see: kv_len tokens, or with a sliding window W the last W + q_len - 1; K and V, all kv
    heads, read once, in the pool's storage dtype with int8's scales) / time, against the
    measured copy bandwidth (a large device-to-device copy, bytes read + written);
  * time against the jnp `*_reference` compiled by XLA on the same device;
  * attention TFLOP/s (4 x query-key pairs x head_dim x q heads, causal pairs only);
  * max |kernel - reference| as a sanity check.
Prints a table and writes JSON (device, jax version, git commit, figures) to --output-json.
It also reports the bytes model alone (no timing, so on CPU too) for windowed decode: the K/V
bytes a decode step reads against the window, at a fixed batch and context, for each KV cache
dtype: the windowed kernels' cost follows the window, not the context.

GPU:  python benchmarks/kernel_bench.py --output-json benchmarks/results/kernels-<gpu>.json
CPU:  python benchmarks/kernel_bench.py --smoke --output-json /tmp/k.json   (tiny, interpret
      mode: checks that the script runs; its figures mean nothing)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "decode" | "ragged"
    seqs: tuple[tuple[int, int], ...]  # (q_len, kv_len) per sequence
    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16
    dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"
    sliding_window: int | None = None

    @property
    def num_tokens(self) -> int:
        return sum(q for q, _ in self.seqs)

    @property
    def spec(self) -> pk.AttentionSpec:
        return pk.AttentionSpec(sm_scale=self.head_dim ** -0.5, sliding_window=self.sliding_window)

    @property
    def layout(self) -> pk.KVPoolLayout:
        return pk.KVPoolLayout.create(1, self.num_kv_heads, self.block_size, self.head_dim,
                                      model_dtype=self.dtype, kv_cache_dtype=self.kv_cache_dtype)

    @property
    def kv_bytes(self) -> int:
        return kv_bytes_read(self.seqs, self.layout, self.sliding_window)

    @property
    def flops(self) -> int:
        pairs = sum(visible_pairs(q, kv, self.sliding_window) for q, kv in self.seqs)
        return 4 * pairs * self.head_dim * self.num_q_heads


def visible_pairs(q_len: int, kv_len: int, window: int | None) -> int:
    """(query, key) pairs a sequence's last q_len queries attend (causal, windowed)."""
    positions = np.arange(kv_len - q_len, kv_len)
    seen = positions + 1 if window is None else np.minimum(positions + 1, window)
    return int(seen.sum())


def kv_bytes_read(seqs, layout: pk.KVPoolLayout, window: int | None) -> int:
    """K/V bytes a step must read: each sequence's keys visible to its first query onwards
    (the window's start, or 0), every kv head, K and V, scales included."""
    per_token = layout.bytes_per_block // layout.block_size  # one layer: K + V of every head
    total = 0
    for q_len, kv_len in seqs:
        first = 0 if window is None else max(0, kv_len - q_len - window + 1)
        total += (kv_len - first) * per_token
    return total


def windowed_decode_bytes(batch: int, context: int, windows, kv_cache_dtypes, **shape) -> list[dict]:
    """The bytes model of windowed decode: K/V bytes one step reads, per window and KV cache
    dtype, also as a fraction of the full context in the model's dtype ("auto")."""

    def layout(kv_cache_dtype):
        return pk.KVPoolLayout.create(1, shape["num_kv_heads"], shape["block_size"], shape["head_dim"],
                                      model_dtype=shape["dtype"], kv_cache_dtype=kv_cache_dtype)

    seqs = [(1, context)] * batch
    full = kv_bytes_read(seqs, layout("auto"), None)
    rows = []
    for kv_cache_dtype in kv_cache_dtypes:
        for window in windows:
            read = kv_bytes_read(seqs, layout(kv_cache_dtype), window)
            rows.append(dict(batch=batch, context=context, window=window, kv_cache_dtype=kv_cache_dtype,
                             kv_bytes=read, fraction_of_full_context=read / full))
    return rows


# Tuning knobs swept (coordinate descent from the defaults; None = the kernel's default).
SPACES = {
    "decode": {"block_kv": [None, 16, 32, 64, 128], "k_splits": [None, 1, 2, 4, 8, 16],
               "num_warps": [4, 2, 8], "num_stages": [2, 1, 3, 4]},
    "ragged": {"block_q": [None, 4, 8, 16, 32], "block_kv": [None, 16, 64, 128],
               "num_warps": [4, 8], "num_stages": [2, 1, 3]},
}
SMOKE_SPACES = {"decode": {"block_kv": [None, 16]}, "ragged": {"block_q": [None, 8]}}


def kv_cache_accuracy(smoke: bool) -> list[dict]:
    """Attention over fp8 / int8 / bf16 pools against float32 attention over the same N(0, 1)
    K/V (the jnp reference, a mixed ragged batch, q in bf16 for the bf16-model pools):
    max and mean |error| of the outputs. Runs anywhere (no kernel timing)."""
    num_q_heads, num_kv_heads, head_dim, block_size = (8, 2, 64, 16) if smoke else (32, 8, 128, 16)
    seqs = ((24, 24), (1, 40), (5, 21)) if smoke else ((256, 256), (1, 1024), (64, 512), (1, 333))
    pages = [-(-kv // block_size) for _, kv in seqs]
    tables = np.zeros((len(seqs), max(pages)), np.int32)
    slots = []
    start = 0
    for s, ((_, kv), n) in enumerate(zip(seqs, pages)):
        tables[s, :n] = np.arange(start, start + n)
        slots += [start * block_size + p for p in range(kv)]
        start += n
    key_q, key_kv = jax.random.split(jax.random.key(1))
    num_tokens = sum(q for q, _ in seqs)
    q = jax.random.normal(key_q, (num_tokens, num_q_heads, head_dim), jnp.float32)
    k, v = jax.random.normal(key_kv, (2, len(slots), num_kv_heads, head_dim), jnp.float32)
    metadata = (jnp.asarray(tables), jnp.asarray([kv for _, kv in seqs], jnp.int32),
                jnp.asarray(np.concatenate([[0], np.cumsum([q_len for q_len, _ in seqs])]), jnp.int32))
    slot_mapping = jnp.asarray(slots, jnp.int32)

    def attend(model_dtype, kv_cache_dtype):
        layout = pk.KVPoolLayout.create(1, num_kv_heads, block_size, head_dim, model_dtype=model_dtype,
                                        kv_cache_dtype=kv_cache_dtype)
        pool = pk.write_kv_to_pool(layout.allocate(start), 0, k, v, slot_mapping)
        out = pk.ragged_paged_attention_reference_from_pool(q.astype(model_dtype), pool, 0, *metadata)
        return np.asarray(out.astype(jnp.float32), np.float64)

    exact = attend(jnp.float32, "auto")
    rows = []
    for kv_cache_dtype in ("auto", "fp8", "fp8_e5m2", "int8"):
        err = np.abs(attend(jnp.bfloat16, kv_cache_dtype) - exact)
        rows.append(dict(kv_cache_dtype=kv_cache_dtype, model_dtype="bfloat16", max_abs_err=float(err.max()),
                         mean_abs_err=float(err.mean()), num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                         head_dim=head_dim, seqs=seqs))
    return rows


def workloads(smoke: bool, batches, contexts) -> list[Workload]:
    if smoke:
        tiny = dict(num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16)
        return [Workload("decode-b2-ctx40", "decode", ((1, 40), (1, 33)), **tiny),
                Workload("ragged-mixed-tiny", "ragged", ((24, 24), (1, 40), (5, 21)), **tiny),
                Workload("decode-b2-ctx40-win16-int8", "decode", ((1, 40), (1, 33)), **tiny,
                         sliding_window=16, kv_cache_dtype="int8")]
    out = [Workload(f"decode-b{b}-ctx{c}", "decode", ((1, c),) * b)
           for b in batches for c in contexts]
    big = max(contexts)
    out += [Workload(f"decode-b64-ctx{big}-win{w}", "decode", ((1, big),) * 64, sliding_window=w)
            for w in (big // 4, big // 16)]
    out += [Workload(f"decode-b64-ctx{big}-{d}", "decode", ((1, big),) * 64, kv_cache_dtype=d)
            for d in ("fp8", "int8")]
    out.append(Workload("ragged-prefill-4x512", "ragged", ((512, 512),) * 4))
    out.append(Workload("ragged-mixed-2x384chunk-256decode", "ragged",
                        ((384, 1024),) * 2 + ((1, 2048),) * 256))
    return out


def build_inputs(w: Workload, rng) -> dict:
    """A one-layer pool holding every sequence's blocks, randomly permuted."""
    pages = [-(-kv // w.block_size) for _, kv in w.seqs]
    width, num_blocks = max(pages), sum(pages) + 1
    ids = rng.permutation(num_blocks)
    tables = np.zeros((len(w.seqs), width), np.int32)
    start = 0
    for s, n in enumerate(pages):
        tables[s, :n] = ids[start:start + n]
        start += n
    dtype = jnp.dtype(w.dtype)
    key_q, key_kv = jax.random.split(jax.random.key(0))
    qsl = np.concatenate([[0], np.cumsum([q for q, _ in w.seqs])]).astype(np.int32)
    inputs = dict(
        q=jax.random.normal(key_q, (w.num_tokens, w.num_q_heads, w.head_dim), dtype),
        kv_pool=random_pool(w.layout, num_blocks, key_kv),
        block_tables=jnp.asarray(tables),
        kv_lens=jnp.asarray([kv for _, kv in w.seqs], jnp.int32),
    )
    if w.kind == "ragged":
        inputs["query_start_loc"] = jnp.asarray(qsl)
    return inputs


def random_pool(layout: pk.KVPoolLayout, num_blocks: int, key) -> pk.KVPool:
    """A one-layer pool of N(0, 1) K/V, written (quantized) through the engine's write path."""
    pool = layout.allocate(num_blocks)
    tokens = num_blocks * layout.block_size
    k, v = jax.random.normal(key, (2, tokens, layout.num_kv_heads, layout.head_dim), jnp.float32)
    return pk.write_kv_to_pool(pool, 0, k, v, jnp.arange(tokens, dtype=jnp.int32))


def kernel_fn(w: Workload, interpret: bool, knobs: dict):
    """The public jitted kernel (compiled once per knob setting and shape)."""
    knobs = {k: v for k, v in knobs.items() if v is not None}
    attention = (pk.paged_attention_from_pool if w.kind == "decode"
                 else pk.ragged_paged_attention_from_pool)
    return lambda i: attention(i["q"], i["kv_pool"], 0, *_metadata(i), spec=w.spec,
                               interpret=interpret, **knobs)


def reference_fn(w: Workload):
    """The jnp reference in one jit with the pool slicing (as the engine's CPU path)."""
    attention = (pk.paged_attention_reference_from_pool if w.kind == "decode"
                 else pk.ragged_paged_attention_reference_from_pool)
    return jax.jit(lambda i: attention(i["q"], i["kv_pool"], 0, *_metadata(i), spec=w.spec))


def _metadata(i):
    return [i[k] for k in ("block_tables", "kv_lens", "query_start_loc") if k in i]


def median_seconds(fn, args, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(nbytes: int, warmup: int, iters: int) -> float:
    """Bytes/s of a device-to-device copy (x + 1 over a large array), read + write counted."""
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    seconds = median_seconds(jax.jit(lambda x: x + 1), x, warmup, iters)
    return 2 * x.nbytes / seconds


def tune(w: Workload, inputs, space: dict, interpret: bool, warmup: int, iters: int):
    """Coordinate descent over `space`, one pass; returns (best, every trial)."""
    trials = []

    def measure(knobs):
        try:
            seconds = median_seconds(kernel_fn(w, interpret, knobs), inputs, warmup, iters)
        except Exception as e:  # a config the kernel rejects or the GPU cannot run
            trials.append(dict(knobs=knobs, error=f"{type(e).__name__}: {e}"[:300]))
            return None
        trials.append(dict(knobs=knobs, ms=seconds * 1e3))
        return seconds

    best = {knob: values[0] for knob, values in space.items()}
    best_s = measure(best)
    for knob, values in space.items():
        for value in values[1:]:
            knobs = {**best, knob: value}
            seconds = measure(knobs)
            if seconds is not None and (best_s is None or seconds < best_s):
                best, best_s = knobs, seconds
    return dict(knobs=best, ms=None if best_s is None else best_s * 1e3), trials


def git_commit() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()

    return dict(commit=git("rev-parse", "HEAD") or None, dirty=bool(git("status", "--porcelain")))


def bench_workload(w: Workload, inputs, *, tuned: bool, space: dict, interpret: bool,
                   copy_bps: float, warmup: int, iters: int) -> dict:
    ref = reference_fn(w)
    ref_s = median_seconds(ref, inputs, warmup, iters)
    default = kernel_fn(w, interpret, {})
    err = float(jnp.max(jnp.abs(default(inputs).astype(jnp.float32)
                                - ref(inputs).astype(jnp.float32))))
    if tuned:
        best, trials = tune(w, inputs, space, interpret, warmup, iters)
        default_s = trials[0].get("ms", float("nan")) / 1e3  # NOTE: defaults come first
    else:
        default_s = median_seconds(default, inputs, warmup, iters)
        best, trials = dict(knobs={}, ms=default_s * 1e3), []
    best_s = float("nan") if best["ms"] is None else best["ms"] / 1e3
    return dict(
        workload=w.name, kind=w.kind, num_seqs=len(w.seqs), num_tokens=w.num_tokens,
        max_context=max(kv for _, kv in w.seqs), num_q_heads=w.num_q_heads,
        num_kv_heads=w.num_kv_heads, head_dim=w.head_dim, block_size=w.block_size,
        dtype=w.dtype, kv_cache_dtype=w.kv_cache_dtype, sliding_window=w.sliding_window,
        kv_bytes=w.kv_bytes, flops=w.flops,
        default_ms=default_s * 1e3, best=best, best_ms=best_s * 1e3,
        best_gbps=w.kv_bytes / best_s / 1e9,
        best_fraction_of_copy_bw=w.kv_bytes / best_s / copy_bps,
        best_tflops=w.flops / best_s / 1e12,
        reference_ms=ref_s * 1e3, speedup_vs_reference=ref_s / best_s,
        max_abs_err_vs_reference=err, trials=trials)


def run(args) -> dict:
    interpret = jax.default_backend() != "gpu"
    warmup, iters = (1, 3) if args.smoke else (args.warmup, args.iters)
    spaces = SMOKE_SPACES if args.smoke else SPACES
    copy_bps = copy_bandwidth((8 if args.smoke else args.copy_mib) << 20, warmup, iters)
    rng = np.random.default_rng(0)
    corners = {(min(args.decode_batches), min(args.decode_contexts)),
               (max(args.decode_batches), max(args.decode_contexts))}
    results = []
    for w in workloads(args.smoke, args.decode_batches, args.decode_contexts):
        is_corner = w.kind == "ragged" or (len(w.seqs), w.seqs[0][1]) in corners
        tuned = args.smoke or args.tune == "all" or (args.tune == "corners" and is_corner)
        try:
            results.append(bench_workload(
                w, build_inputs(w, rng), tuned=tuned, space=spaces[w.kind],
                interpret=interpret, copy_bps=copy_bps, warmup=warmup, iters=iters))
            print(_row(results[-1]), flush=True)
        except Exception as e:  # keep the other workloads' figures (e.g. out of memory)
            results.append(dict(workload=w.name, kind=w.kind, error=f"{type(e).__name__}: {e}"))
            print(f"{w.name:36s} FAILED {results[-1]['error'][:200]}", flush=True)
    device = jax.devices()[0]
    shape = dict(num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16")
    window_bytes = windowed_decode_bytes(64, 32768, [None, 16384, 4096, 1024, 256], ["auto", "fp8", "int8"], **shape)
    return dict(windowed_decode_bytes=window_bytes, kv_cache_accuracy=kv_cache_accuracy(args.smoke),
        device=getattr(device, "device_kind", str(device)), platform=device.platform,
        interpret=interpret, smoke=args.smoke, jax_version=jax.__version__,
        jaxlib_version=getattr(__import__("jaxlib"), "__version__", None), **git_commit(),
        copy_bandwidth_gbps=copy_bps / 1e9,
        timing=dict(warmup=warmup, iters=iters, statistic="median"), results=results)


HEADER = (f"{'workload':36s} {'tokens':>6s} {'ctx':>5s} {'default ms':>10s} {'best ms':>9s}"
          f" {'GB/s':>8s} {'%copy':>6s} {'TFLOP/s':>8s} {'ref ms':>9s} {'x ref':>6s}  best knobs")


def _row(r) -> str:
    knobs = {k: v for k, v in r["best"]["knobs"].items() if v is not None}
    return (f"{r['workload']:36s} {r['num_tokens']:6d} {r['max_context']:5d}"
            f" {r['default_ms']:10.3f} {r['best_ms']:9.3f} {r['best_gbps']:8.1f}"
            f" {100 * r['best_fraction_of_copy_bw']:6.1f} {r['best_tflops']:8.2f}"
            f" {r['reference_ms']:9.3f} {r['speedup_vs_reference']:6.2f}  {knobs}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-json", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, interpret mode on CPU")
    parser.add_argument("--tune", choices=["all", "corners", "none"], default="corners",
                        help="which workloads get the knob sweep (corners: the smallest and"
                             " largest decode batch x context, and the ragged batches)")
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--decode-contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--copy-mib", type=int, default=1024)
    args = parser.parse_args(argv)
    print(f"device: {jax.devices()[0]}  jax {jax.__version__}", flush=True)
    print(HEADER, flush=True)
    report = run(args)
    print(f"copy bandwidth (read + write): {report['copy_bandwidth_gbps']:.1f} GB/s")
    print("\nwindowed decode, bytes model (64 sequences x 32768 context, 8 KV heads x 128, one layer):")
    print(f"{'kv cache':>9s} {'window':>7s} {'MiB read':>9s} {'of full bf16':>12s}")
    for r in report["windowed_decode_bytes"]:
        print(f"{r['kv_cache_dtype']:>9s} {str(r['window']):>7s} {r['kv_bytes'] / 2**20:9.1f}"
              f" {r['fraction_of_full_context']:12.4f}")
    print("\nKV cache accuracy vs float32 attention (bf16 model, N(0, 1) K/V, jnp reference):")
    for r in report["kv_cache_accuracy"]:
        print(f"{r['kv_cache_dtype']:>9s}  max |err| {r['max_abs_err']:.4f}  mean |err| {r['mean_abs_err']:.5f}")
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
