"""Grouped matrix products over rows sorted by group (expert): the compute of a mixture-of-experts
layer that follows its routing.

`x [M, K]` holds rows sorted by group: the first `group_sizes[0]` rows belong to group 0, the
next `group_sizes[1]` to group 1, and so on. `w [G, K, N]` holds the weights of groups
`first_group .. first_group + G - 1` (all of them on one device; a device's share of the experts
under expert parallelism). Row r of the result is `x[r] @ w[group(r) - first_group]`, and 0 for
rows of groups `w` does not hold.

    grouped_matmul(x, w, group_sizes, *, first_group=0, impl="tiled", tile_rows=None) -> [M, N]

Implementations:

  tiled       a loop over work items, each `tile_rows` rows of one group (rows from the group's
              start, the last item of a group masked at its end): as many items as the routing
              produces (a while loop with a dynamic trip count), so the FLOPs are
              `sum_g ceil(n_g / t) * t * 2 * K * N` over the groups present: never every group on
              every row. Any backend.
  ragged_dot  `jax.lax.ragged_dot`. NOTE (measured with jax 0.10.2): it lowers, on CPU and on GPU
              alike (XLA's GPU compiler rewrites the HLO ragged dot), to a dense product of every
              group over every row, `[G, M, K] x [G, K, N]` with masks, and jax's Pallas-Triton
              lowering for it is not in this jaxlib. Kept for comparison and for jax versions that
              lower it to a grouped kernel; one device or tensor parallel only (no `first_group`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

GROUPED_MATMUL_IMPLS = ("tiled", "ragged_dot")
MAX_TILE_ROWS = 128


def default_tile_rows(num_rows: int, num_groups: int) -> int:
    """Rows per work item: the mean group size rounded up to a power of two, in [1, 128]. Fewer
    rows waste less compute at group ends; more rows read each group's weights fewer times."""
    mean = max(1, -(-num_rows // max(1, num_groups)))
    return min(MAX_TILE_ROWS, 1 << math.ceil(math.log2(mean)))


def group_starts(group_sizes):
    """i32[E] first row of each group in the sorted rows."""
    return jnp.cumsum(group_sizes) - group_sizes


def _tiled(x, w, group_sizes, first_group, tile: int):
    num_rows, fan_in = x.shape
    local_groups, _, fan_out = w.shape
    sizes = jax.lax.dynamic_slice(group_sizes, (first_group,), (local_groups,))  # i32[G]
    starts = jax.lax.dynamic_slice(group_starts(group_sizes), (first_group,), (local_groups,))  # i32[G]
    tiles = (sizes + tile - 1) // tile  # i32[G]: work items of each group
    tile_ends = jnp.cumsum(tiles)  # i32[G]
    padded_x = jnp.pad(x, ((0, tile), (0, 0)))  # [M + t, K]: a tile never reads past the end
    out = jnp.zeros((num_rows + tile, fan_out), x.dtype)  # [M + t, N]

    def item(i, out):
        g = jnp.searchsorted(tile_ends, i, side="right")  # the group of work item i
        row = starts[g] + (i - (tile_ends[g] - tiles[g])) * tile
        rows = jax.lax.dynamic_slice(padded_x, (row, 0), (tile, fan_in))  # [t, K]
        product = jnp.dot(rows, w[g], preferred_element_type=jnp.float32).astype(out.dtype)  # [t, N]
        in_group = (jnp.arange(tile) < starts[g] + sizes[g] - row)[:, None]  # [t, 1]
        previous = jax.lax.dynamic_slice(out, (row, 0), (tile, fan_out))
        return jax.lax.dynamic_update_slice(out, jnp.where(in_group, product, previous), (row, 0))

    return jax.lax.fori_loop(0, tile_ends[-1], item, out)[:num_rows]


def grouped_matmul(x, w, group_sizes, *, first_group=0, impl: str = "tiled", tile_rows: int | None = None):
    """x `[M, K]` (rows sorted by group), w `[G, K, N]`, group_sizes `i32[E]` (sum <= M; rows past
    the sum are 0 in the result) -> `[M, N]` in x's dtype (float32 accumulation); see the module
    docstring. `first_group`: the group of `w[0]` (an int or a traced scalar)."""
    if impl not in GROUPED_MATMUL_IMPLS:
        raise ValueError(f"grouped matmul impl must be one of {', '.join(GROUPED_MATMUL_IMPLS)}; got {impl!r}")
    if x.ndim != 2 or w.ndim != 3 or x.shape[1] != w.shape[1]:
        raise ValueError(f"grouped matmul needs x [M, K] and w [G, K, N]; got {x.shape} and {w.shape}")
    if group_sizes.ndim != 1 or group_sizes.shape[0] < w.shape[0]:
        raise ValueError(f"group_sizes must be 1-D with at least {w.shape[0]} groups; got {group_sizes.shape}")
    x, w, group_sizes = jnp.asarray(x), jnp.asarray(w), jnp.asarray(group_sizes, jnp.int32)
    if impl == "ragged_dot":
        if w.shape[0] != group_sizes.shape[0]:
            raise ValueError("the ragged_dot impl needs the weights of every group (no expert parallelism)")
        return jax.lax.ragged_dot(x, w, group_sizes, preferred_element_type=jnp.float32).astype(x.dtype)
    tile = tile_rows or default_tile_rows(x.shape[0], group_sizes.shape[0])
    return _tiled(x, w, group_sizes, jnp.asarray(first_group, jnp.int32), tile)


def tiled_rows_computed(group_sizes, tile_rows: int) -> int:
    """Rows the tiled impl multiplies for these group sizes (host-side, for FLOP counts)."""
    return int(sum(-(-int(n) // tile_rows) * tile_rows for n in group_sizes))
