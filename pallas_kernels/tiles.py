"""Tile sizes the kernels may use on the GPU: the defaults they pick, and the check that
rejects tiles an H100 / H200 (sm_90) cannot run.

Limits come from the GPU target config the deviceless compile uses
(pallas_kernels/targets/h100.txtpb), so the check and the compiler agree on the machine.
Triton keeps a program's dot operands in shared memory; `shared_memory_bytes` is a
conservative model of that, calibrated against the compiler
(`tests/kernels/test_deviceless_compile.py` asserts it never underestimates what ptxas /
XLA report for the configurations it compiles).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax.numpy as jnp

from pallas_kernels._common import MIN_DOT_DIM, next_pow2

TARGETS_DIR = Path(__file__).resolve().parent / "targets"
DEFAULT_TARGET = "h100"

# Bytes added to every shared-memory estimate (barriers, reduction scratch: measured <= 512).
_SHARED_MEMORY_SLACK = 512

# Most q rows per ragged program (block_q x padded group) that `default_block_q` picks, and
# the q-tile bytes it aims at (see `max_ragged_rows`).
_MAX_ROWS = 64
_Q_TILE_BYTES = 16384


def target_config_path(target: str) -> Path:
    """A target name ("h100": sm_90, also right for H200) or a path to a GpuTargetConfig .txtpb."""
    path = TARGETS_DIR / f"{target}.txtpb"
    if path.is_file():
        return path
    if Path(target).is_file():
        return Path(target)
    known = sorted(p.stem for p in TARGETS_DIR.glob("*.txtpb"))
    raise ValueError(f"target must be one of {known} or a GpuTargetConfig .txtpb path, got {target!r}")


@dataclasses.dataclass(frozen=True)
class TargetLimits:
    """The per-block limits of a GPU target that tiles must respect."""

    compute_capability: tuple[int, int]
    shared_memory_per_block_optin: int  # bytes a kernel may opt into
    threads_per_block_limit: int
    registers_per_block_limit: int


def target_limits(target: str = DEFAULT_TARGET) -> TargetLimits:
    """Parsed from the target's GpuTargetConfig text proto (a few hundred bytes; read at trace time)."""
    text = target_config_path(target).read_text()

    def field(name: str) -> int:
        match = re.search(rf"\b{name}:\s*(\d+)", text)
        if match is None:
            raise ValueError(f"target config for {target!r} has no {name}")
        return int(match.group(1))

    return TargetLimits((field("major"), field("minor")), field("shared_memory_per_block_optin"),
                        field("threads_per_block_limit"), field("registers_per_block_limit"))


def shared_memory_bytes(*, rows: int, head_dim: int, block_kv: int, q_dtype, kv_dtype,
                        num_stages: int) -> int:
    """Upper bound of the shared memory one program of either kernel asks for on sm_90.

    rows: q rows per program (decode: max(16, padded group); ragged: block_q x padded group).
    Triton stages the q tile and one K and one V tile, all in q's dtype (quantized K/V are
    converted first), for the dots; float32 also stages the probabilities. The gathered K/V
    loads are not pipelined, so num_stages and the storage dtype change nothing. Calibrated
    on ~90 compiled configurations (every factor varied, exact for bf16/f16); the deviceless
    compile test re-checks it against every configuration it compiles.
    """
    del kv_dtype, num_stages  # measured: no effect (see above)
    dp = next_pow2(head_dim)
    q_bytes = jnp.dtype(q_dtype).itemsize
    need = q_bytes * dp * (rows + 2 * block_kv)
    if q_bytes == 4:
        need += rows * block_kv * 4
    return need + _SHARED_MEMORY_SLACK


def check_fits(*, rows: int, head_dim: int, block_kv: int, q_dtype, kv_dtype, num_warps: int,
               num_stages: int, target: str = DEFAULT_TARGET) -> None:
    """ValueError when a program with these tiles cannot launch on `target`."""
    limits = target_limits(target)
    threads = limits.threads_per_block_limit
    if num_warps * 32 > threads:  # NOTE: ptxas accepts more; the launch would fail
        raise ValueError(f"num_warps must be <= {threads // 32} ({threads} threads per block),"
                         f" got {num_warps}")
    need = shared_memory_bytes(rows=rows, head_dim=head_dim, block_kv=block_kv, q_dtype=q_dtype,
                               kv_dtype=kv_dtype, num_stages=num_stages)
    if need > limits.shared_memory_per_block_optin:
        raise ValueError(
            f"tiles of {rows} q rows x {block_kv} KV tokens x head_dim {head_dim} ({jnp.dtype(q_dtype)}"
            f" q, {jnp.dtype(kv_dtype)} KV, num_stages={num_stages}) need ~{need} bytes of shared"
            f" memory, over the {limits.shared_memory_per_block_optin} of {target}: lower block_q"
            " or block_kv")


def default_block_kv(kind: str, head_dim: int, *, q_dtype=jnp.bfloat16, kv_dtype=None) -> int:
    """KV tokens per tile: ragged 32; decode 64 for 2-byte q up to head_dim 128 over a pool in
    q's dtype or int8, else 32 (where 64 makes ptxas spill registers on sm_90: float32 q, head
    dim 256, fp8 pools, whose conversions need the registers)."""
    if kind != "decode":
        return 32
    kv_dtype = q_dtype if kv_dtype is None else kv_dtype
    fp8 = jnp.dtype(kv_dtype) in (jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float8_e5m2))
    two_byte = jnp.dtype(q_dtype).itemsize == 2
    return 64 if two_byte and next_pow2(head_dim) <= 128 and not fp8 else 32


def max_ragged_rows(head_dim: int, q_dtype) -> int:
    """Most q rows (block_q x padded group) `default_block_q` picks: a 16 KiB q tile (8 KiB in
    float32, whose dots need twice the registers), at most 64 rows: the largest tiles that
    compile without register spills on sm_90 (at the default 4 warps, bf16 / f16)."""
    q_bytes = jnp.dtype(q_dtype).itemsize
    budget = _Q_TILE_BYTES // (2 if q_bytes == 4 else 1)
    return max(MIN_DOT_DIM, min(_MAX_ROWS, budget // (next_pow2(head_dim) * q_bytes)))


def default_block_q(group: int, head_dim: int, num_tokens: int, num_seqs: int, *,
                    q_dtype=jnp.bfloat16, kv_dtype=None) -> int:
    """Tokens per ragged q tile: about the mean query length (num_tokens / num_seqs, both
    static), so decode-heavy batches do not pad rows and prefill-heavy ones share K/V loads;
    capped at `max_ragged_rows` rows, raised to the 16 rows Triton's dot needs (a group over
    16 heads: one token of the group), and halved while the tiles would not fit."""
    group_pad = next_pow2(group)
    mean_q_len = next_pow2(-(-num_tokens // max(1, num_seqs)))
    smallest = next_pow2(-(-MIN_DOT_DIM // group_pad))
    block_q = max(min(mean_q_len, max(1, max_ragged_rows(head_dim, q_dtype) // group_pad)), smallest)
    kv_dtype = q_dtype if kv_dtype is None else kv_dtype
    block_kv = default_block_kv("ragged", head_dim, q_dtype=q_dtype, kv_dtype=kv_dtype)
    limit = target_limits().shared_memory_per_block_optin
    while block_q > 1 and shared_memory_bytes(rows=block_q * group_pad, head_dim=head_dim, block_kv=block_kv,
                                              q_dtype=q_dtype, kv_dtype=kv_dtype, num_stages=2) > limit:
        block_q //= 2
    return block_q


def default_tile_choices(kind: str, group: int, head_dim: int, *, q_dtype=jnp.bfloat16,
                         kv_dtype=None) -> tuple[dict, ...]:
    """Every tile setting the defaults can pick for one kernel, GQA group, head_dim and dtypes,
    over all batch shapes: decode one (its block_kv); ragged one per block_q `default_block_q`
    can return (it depends on the mean query length only through powers of two up to a cap)."""
    block_kv = default_block_kv(kind, head_dim, q_dtype=q_dtype, kv_dtype=kv_dtype)
    if kind == "decode":
        return (dict(block_kv=block_kv),)
    choices = sorted({default_block_q(group, head_dim, 1 << t, 1, q_dtype=q_dtype, kv_dtype=kv_dtype)
                      for t in range(0, 8)})
    return tuple(dict(block_q=bq, block_kv=block_kv) for bq in choices)


__all__ = ["MIN_DOT_DIM", "TargetLimits", "check_fits", "default_block_kv", "default_block_q",
           "default_tile_choices", "max_ragged_rows", "shared_memory_bytes", "target_limits", "target_config_path"]
