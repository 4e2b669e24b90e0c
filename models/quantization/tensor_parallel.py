"""Tensor parallelism of one quantized linear layer: which arrays are split, and the layout
each device's slice has.

The float model's partition rules (models/sharding.py) say whether a layer is column-parallel
(its kernel `[in, out]` split on the output axis), row-parallel (split on the input axis) or
replicated; `ParallelLinear.of(sharding)` reads that off the kernel's NamedSharding. The
quantized arrays then follow the float kernel (vLLM's scheme):

  column  qweight, scales, zeros split on their output axis (1); g_idx, input_scale
          replicated. Per-tensor scales (one column) are replicated. out_features / tp must
          be a multiple of the scale's column group (fp8 blocks).
  row     qweight split on its input axis (0); g_idx split with it (its values still index
          the global scale rows, so act-order scales are replicated); group-wise scales and
          zeros split on axis 0 (in_features / tp a multiple of the group size); per-channel /
          per-tensor scales (one row) replicated. int4 words hold 8 input rows, so
          in_features / tp must be a multiple of 8.

Under `shard_map` each device multiplies by its slice with `local_layout` (same arrays,
local sizes); a row-parallel layer then sums the partial products over the axis.
"""

from __future__ import annotations

import dataclasses

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pallas_kernels.quant_layout import INT4_PER_WORD, QuantLayout

KINDS = ("column", "row", "replicated")


@dataclasses.dataclass(frozen=True)
class ParallelLinear:
    """Where a quantized linear layer lives on a mesh (static: part of the model's graph)."""

    mesh: Mesh
    kind: str  # one of KINDS
    axis: str  # the mesh axis a column / row layer is split over

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"parallel kind must be one of {KINDS}, got {self.kind!r}")
        if self.axis not in self.mesh.axis_names:
            raise ValueError(f"mesh has no axis {self.axis!r} (axes: {self.mesh.axis_names})")

    @classmethod
    def of(cls, kernel_sharding: NamedSharding) -> "ParallelLinear":
        """From the float kernel's sharding: P(None, ax) column, P(ax, None) row, P() replicated."""
        spec = tuple(kernel_sharding.spec) + (None, None)
        mesh = kernel_sharding.mesh
        if spec[0] is None and spec[1] is None:
            return cls(mesh, "replicated", mesh.axis_names[0])
        if spec[0] is None and isinstance(spec[1], str):
            return cls(mesh, "column", spec[1])
        if spec[1] is None and isinstance(spec[0], str):
            return cls(mesh, "row", spec[0])
        raise ValueError(f"quantized layers can be column- or row-parallel or replicated; the kernel's"
                         f" sharding {kernel_sharding.spec} is none of these")

    @property
    def size(self) -> int:
        return 1 if self.kind == "replicated" else self.mesh.shape[self.axis]

    def local_layout(self, layout: QuantLayout, name: str = "layer") -> QuantLayout:
        """The layout of one device's slice; ValueError (naming `name`) if it cannot be split."""
        tp = self.size
        if tp == 1:
            return layout
        if self.kind == "column":
            n = _split(layout.out_features, tp, f"{name}: out_features")
            group_n = n if layout.num_groups_n == 1 else layout.group_n
            if layout.num_groups_n > 1 and n % layout.group_n:
                raise ValueError(f"{name}: out_features per device ({n}) must be a multiple of the scale"
                                 f" block's {layout.group_n} output rows")
            return dataclasses.replace(layout, out_features=n, group_n=group_n)
        k = _split(layout.in_features, tp, f"{name}: in_features")
        if layout.weight_format == "int4" and k % INT4_PER_WORD:
            raise ValueError(f"{name}: in_features per device ({k}) must be a multiple of {INT4_PER_WORD}"
                             " (an int4 word holds 8 input rows)")
        if layout.activation_group is not None and k % layout.activation_group:
            raise ValueError(f"{name}: in_features per device ({k}) must be a multiple of the fp8"
                             f" activation group ({layout.activation_group})")
        if layout.num_groups_k == 1:
            return dataclasses.replace(layout, in_features=k, group_k=k)
        if layout.has_g_idx:
            # NOTE: g_idx keeps indexing the global (replicated) scale rows; group_k then only sets
            # how many rows the local layout expects: ceil(k / group_k) must equal the global count.
            group_k = layout.group_k // tp
            if layout.group_k % tp or -(-k // group_k) != layout.num_groups_k:
                raise ValueError(f"{name}: an act-order (g_idx) layer's group size ({layout.group_k}) must be"
                                 f" divisible by the tensor-parallel size ({tp}) to be split row-wise")
            return dataclasses.replace(layout, in_features=k, group_k=group_k)
        if k % layout.group_k:
            raise ValueError(f"{name}: in_features per device ({k}) must be a multiple of the group size"
                             f" ({layout.group_k})")
        return dataclasses.replace(layout, in_features=k)

    def array_specs(self, layout: QuantLayout) -> dict[str, P]:
        """The PartitionSpec of each of the layer's arrays (global layout)."""
        specs = {name: P() for name in layout.param_specs()}
        if self.size == 1:
            return specs
        ax = self.axis
        if self.kind == "column":
            specs["qweight"] = P(None, ax)
            if layout.num_groups_n > 1:
                specs["scales"] = P(None, ax)
        else:
            specs["qweight"] = P(ax, None)
            if layout.has_g_idx:
                specs["g_idx"] = P(ax)
            elif layout.num_groups_k > 1:
                specs["scales"] = P(ax, None)
        if "zeros" in specs:
            specs["zeros"] = specs["scales"]
        return specs

    def shardings(self, layout: QuantLayout) -> dict[str, NamedSharding]:
        return {name: NamedSharding(self.mesh, spec) for name, spec in self.array_specs(layout).items()}


def _split(size: int, tp: int, what: str) -> int:
    if size % tp:
        raise ValueError(f"{what} ({size}) must be divisible by the tensor-parallel size ({tp})")
    return size // tp
