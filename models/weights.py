"""Weight maps: how an HF checkpoint's tensors become our parameters, and back.

A family's weight map is a list of `TensorMap`s, one per checkpoint tensor: its HF name, the
parameter paths it fills (dotted, e.g. `layers.0.self_attn.q_proj.kernel`) and a `Transform`
between the two layouts. Our parameters never fuse anything: q, k and v, gate and up are
separate kernels `[in, out]`, so one set of partition rules shards every family, and fused
checkpoint tensors are split at load time (views of the memory map where numpy allows).

Transforms (each knows the HF shape its outputs imply, for the loader's shape check, and its
inverse, for writing checkpoints):

  IDENTITY      same layout (embeddings, norms, biases, GPT-2's Conv1D weights, already [in, out])
  TRANSPOSE     nn.Linear weight [out, in] -> kernel [in, out]
  Split         one tensor fused along its output axis in plain concatenation (q|k|v of GPT-2,
                Phi-3, MPT, Baichuan; gate|up of Phi-3), Linear or Conv1D, weight or bias
  GroupedQKV    q/k/v interleaved per KV-head group: rows [Hkv, q_per_kv + 2, D] (Falcon,
                InternLM2); with q_per_kv = 1 it is the per-head [H, 3, D] layout of GPT-NeoX,
                BLOOM and Falcon-RW
  NormalizeRows the LM head of Baichuan 2 (NormHead): rows scaled to unit norm at load
  ExpertSlice   one expert's tensor of a mixture (Mixtral's experts.3.w1.weight): slice `index`
                of our stacked parameter `[num_experts, in, out]` (`inner` maps the slice); the
                loader stacks a parameter's slices (`StackedExperts`) and sends it as one array
  Interleaved   parts alternating along the last axis (GPT-OSS's gate_up_proj [E, in, 2 * out]:
                gate = [..., 0::2], up = [..., 1::2]), weight or bias
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


class Transform:
    """HF tensor <-> our tensors. Subclasses are frozen dataclasses (hashable, comparable)."""

    def hf_shape(self, ours: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        """The checkpoint tensor's shape, given the shapes of the parameters it fills."""
        raise NotImplementedError

    def to_ours(self, tensor: np.ndarray, ours: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """The checkpoint tensor as our parameters (views where possible)."""
        raise NotImplementedError

    def to_hf(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Our parameters as the checkpoint tensor."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _Identity(Transform):
    def hf_shape(self, ours):
        return tuple(ours[0])

    def to_ours(self, tensor, ours):
        return [tensor]

    def to_hf(self, arrays):
        return np.asarray(arrays[0])


@dataclasses.dataclass(frozen=True)
class _Transpose(Transform):
    def hf_shape(self, ours):
        return tuple(ours[0])[::-1]

    def to_ours(self, tensor, ours):
        return [tensor.T]

    def to_hf(self, arrays):
        return np.asarray(arrays[0]).T


IDENTITY = _Identity()
TRANSPOSE = _Transpose()


def _out_dim(shape: tuple[int, ...]) -> int:
    return shape[-1]  # kernel [in, out] or bias [out]


@dataclasses.dataclass(frozen=True)
class Split(Transform):
    """Outputs concatenated along the output axis: axis 0 of a Linear weight `[sum(out), in]`,
    axis 1 of a Conv1D weight `[in, sum(out)]` (`conv1d=True`), or a bias `[sum(out)]`."""

    conv1d: bool = False

    def hf_shape(self, ours):
        total = sum(_out_dim(s) for s in ours)
        if len(ours[0]) == 1:
            return (total,)
        fan_in = ours[0][0]
        return (fan_in, total) if self.conv1d else (total, fan_in)

    def to_ours(self, tensor, ours):
        bounds = np.cumsum([0] + [_out_dim(s) for s in ours])
        if tensor.ndim == 1:
            return [tensor[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        if self.conv1d:
            return [tensor[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return [tensor[a:b].T for a, b in zip(bounds[:-1], bounds[1:])]

    def to_hf(self, arrays):
        arrays = [np.asarray(a) for a in arrays]
        if arrays[0].ndim == 1:
            return np.concatenate(arrays)
        return np.concatenate(arrays, axis=1) if self.conv1d else np.concatenate([a.T for a in arrays], axis=0)


@dataclasses.dataclass(frozen=True)
class GroupedQKV(Transform):
    """A Linear weight `[Hkv * (G + 2) * D, in]` (or bias) whose rows are, per KV head, its G
    query heads, then its key, then its value -> q `[in, Hkv*G*D]`, k, v `[in, Hkv*D]`."""

    num_kv_heads: int
    q_per_kv: int
    head_dim: int

    def hf_shape(self, ours):
        rows = self.num_kv_heads * (self.q_per_kv + 2) * self.head_dim
        return (rows,) if len(ours[0]) == 1 else (rows, ours[0][0])

    def to_ours(self, tensor, ours):
        hkv, g, d = self.num_kv_heads, self.q_per_kv, self.head_dim
        grouped = tensor.reshape(hkv, g + 2, d, *tensor.shape[1:])  # [Hkv, G+2, D, (in)]
        parts = [grouped[:, :g].reshape(hkv * g * d, *tensor.shape[1:]),
                 grouped[:, g].reshape(hkv * d, *tensor.shape[1:]),
                 grouped[:, g + 1].reshape(hkv * d, *tensor.shape[1:])]
        return [p if p.ndim == 1 else p.T for p in parts]

    def to_hf(self, arrays):
        hkv, g, d = self.num_kv_heads, self.q_per_kv, self.head_dim
        q, k, v = (np.asarray(a) if a.ndim == 1 else np.asarray(a).T for a in arrays)  # rows first
        rest = q.shape[1:]
        grouped = np.concatenate([q.reshape(hkv, g, d, *rest), k.reshape(hkv, 1, d, *rest),
                                  v.reshape(hkv, 1, d, *rest)], axis=1)
        return grouped.reshape(hkv * (g + 2) * d, *rest)


@dataclasses.dataclass(frozen=True)
class NormalizeRows(Transform):
    """An LM head `[vocab, hidden]` whose rows the model normalises (Baichuan 2's NormHead)."""

    def hf_shape(self, ours):
        return tuple(ours[0])[::-1]

    def to_ours(self, tensor, ours):
        rows = np.asarray(tensor, np.float32)
        norms = np.sqrt((rows * rows).sum(axis=1, keepdims=True))
        return [(rows / np.maximum(norms, 1e-12)).T]

    def to_hf(self, arrays):
        return np.asarray(arrays[0]).T


@dataclasses.dataclass(frozen=True)
class ExpertSlice(Transform):
    """Expert `index` of a stacked parameter `[num_experts, ...]`: the checkpoint holds one
    tensor per expert, mapped to the slice by `inner` (TRANSPOSE for an nn.Linear weight)."""

    index: int
    inner: Transform = TRANSPOSE

    def hf_shape(self, ours):
        return self.inner.hf_shape([tuple(ours[0])[1:]])

    def to_ours(self, tensor, ours):
        """The slice (the loader places it at `index` of the stacked parameter)."""
        return self.inner.to_ours(tensor, [tuple(ours[0])[1:]])

    def to_hf(self, arrays):
        return self.inner.to_hf([np.asarray(arrays[0])[self.index]])


@dataclasses.dataclass(frozen=True)
class Interleaved(Transform):
    """Parts alternating along the last axis: `[..., parts * n]` -> `parts` arrays `[..., n]`."""

    parts: int = 2

    def hf_shape(self, ours):
        return tuple(ours[0])[:-1] + (sum(s[-1] for s in ours),)

    def to_ours(self, tensor, ours):
        return [tensor[..., i::self.parts] for i in range(self.parts)]

    def to_hf(self, arrays):
        arrays = [np.asarray(a) for a in arrays]
        return np.stack(arrays, axis=-1).reshape(*arrays[0].shape[:-1], -1)


class StackedExperts:
    """A stacked expert parameter `[num_experts, ...]` assembled lazily from per-expert
    checkpoint tensors: indexing reads only the experts (and the part of each) asked for, so
    a device of an expert-parallel (or tensor-parallel) mesh reads only its own slice.

    `slices[e]` = (read() -> the checkpoint tensor of expert e, its ExpertSlice transform)."""

    def __init__(self, shape: tuple[int, ...], dtype, slices):
        self.shape, self.dtype, self._slices = tuple(shape), np.dtype(dtype), slices
        if sorted(slices) != list(range(shape[0])):
            raise ValueError(f"stacked experts need slices 0..{shape[0] - 1}, got {sorted(slices)}")

    def _expert(self, e: int) -> np.ndarray:
        read, transform = self._slices[e]
        (array,) = transform.to_ours(read(), [self.shape])
        return array

    def __getitem__(self, index):
        if index is Ellipsis:
            index = ()
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (len(self.shape) - len(index))
        experts = range(*index[0].indices(self.shape[0]))
        return np.stack([np.asarray(self._expert(e)[index[1:]]) for e in experts])


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One checkpoint tensor and the parameters it fills."""

    hf: str  # the tensor's name in the checkpoint
    ours: tuple[str, ...]  # dotted parameter paths, in the order the transform produces them
    transform: Transform = IDENTITY


# --------------------------------------------------------------------------- builders

def linear(hf: str, ours: str, bias: bool) -> list[TensorMap]:
    """An nn.Linear `hf` (weight [out, in], optional bias) as our `ours.kernel` / `ours.bias`."""
    maps = [TensorMap(f"{hf}.weight", (f"{ours}.kernel",), TRANSPOSE)]
    if bias:
        maps.append(TensorMap(f"{hf}.bias", (f"{ours}.bias",)))
    return maps


def conv1d(hf: str, ours: str) -> list[TensorMap]:
    """GPT-2's Conv1D `hf` (weight already [in, out], bias) as our `ours.kernel` / `ours.bias`."""
    return [TensorMap(f"{hf}.weight", (f"{ours}.kernel",)), TensorMap(f"{hf}.bias", (f"{ours}.bias",))]


def fused(hf: str, ours: Sequence[str], bias: bool, transform: Transform) -> list[TensorMap]:
    """One fused weight (and bias) filling several of our projections."""
    maps = [TensorMap(f"{hf}.weight", tuple(f"{o}.kernel" for o in ours), transform)]
    if bias:
        maps.append(TensorMap(f"{hf}.bias", tuple(f"{o}.bias" for o in ours), transform))
    return maps


def norm(hf: str, ours: str, *, scale: bool = True, bias: bool = False) -> list[TensorMap]:
    """A norm's weight (if it has one) and bias (if it has one)."""
    maps = [TensorMap(f"{hf}.weight", (f"{ours}.weight",))] if scale else []
    if bias:
        maps.append(TensorMap(f"{hf}.bias", (f"{ours}.bias",)))
    return maps


def embedding(hf: str, ours: str) -> list[TensorMap]:
    """An nn.Embedding `[rows, dim]`."""
    return [TensorMap(f"{hf}.weight", (f"{ours}.embedding",))]


def stacked_experts(hf: str, ours: str, num_experts: int, inner: Transform = TRANSPOSE) -> list[TensorMap]:
    """Per-expert checkpoint tensors `hf.format(e)` (e.g. `...experts.{}.w1.weight`) as the
    slices of our stacked parameter `ours` `[num_experts, in, out]`."""
    return [TensorMap(hf.format(e), (ours,), ExpertSlice(e, inner)) for e in range(num_experts)]


def export_hf_tensors(weight_map: Sequence[TensorMap], params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our parameters (dotted path -> array) as the checkpoint's tensors (HF name -> array)."""
    return {m.hf: np.ascontiguousarray(m.transform.to_hf([params[p] for p in m.ours])) for m in weight_map}
