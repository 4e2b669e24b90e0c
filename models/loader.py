"""Loading HF checkpoints (safetensors) into the Flax models, tensor by tensor.

`load_model(model, dtype=...)` resolves a local directory or a hub id, reads `config.json`,
builds the model abstractly (no memory) and fills every parameter from the checkpoint through
its family's weight map (models/weights.py: names, transposes, fused tensors split): every
checkpoint tensor must be used, every parameter must be found, every shape must match, and a
clear error names the offending tensor otherwise. `hf_tensors` is the inverse (our parameters
as a checkpoint of the family's layout), `hf_tensor_specs` its shapes without any weights. Each tensor is
read from a memory map, cast, and sent to its device on its own, so the model never sits
twice in host memory. Given `sharding_for` (tensor parallelism), each device receives only its
slice, read straight from the memory map: no device (and no host buffer) holds a whole
sharded tensor, and in a multi-host run each process reads only its own devices' slices.

A directory written by `pagedjax convert` (marker file `ORBAX_MARKER`) holds the parameters
as an orbax checkpoint instead: `load_params` restores it directly into the requested
shardings, in parallel, with no name mapping, transposition or cast left to do.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.config import ModelConfig
from models.registry import get_architecture
from models.safetensors_io import SafetensorsFile
from models.transformer import CausalLM, init_constant
from models.weights import ExpertSlice, StackedExperts, TensorMap, export_hf_tensors

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_TORCH_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
                      "torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}
# `pagedjax convert` output: this JSON file next to config.json, the orbax checkpoint in ORBAX_PARAMS.
ORBAX_MARKER = "pagedjax_orbax.json"
ORBAX_PARAMS = "params"


class CheckpointError(ValueError):
    """A checkpoint does not match the model its config describes."""


def resolve_dtype(dtype: str, cfg: ModelConfig):
    """`"auto"` -> the checkpoint's dtype (float32 if unknown); else one of DTYPES."""
    if dtype == "auto":
        name = _TORCH_DTYPE_NAMES.get(str(cfg.torch_dtype), "float32")
        return DTYPES[name]
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported (choose auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def resolve_model_path(model: str) -> str:
    """A local checkpoint directory, or a hub id downloaded (or found in the cache) by huggingface_hub."""
    if os.path.isdir(model):
        return model
    if os.path.exists(model):
        raise ValueError(f"model path {model!r} is a file; expected a checkpoint directory")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model",
                                                         "*.txt", "*.jinja"])
    except Exception as e:  # offline, unknown repo, gated, ...
        raise ValueError(f"{model!r} is not a local directory and could not be fetched from the "
                         f"Hugging Face hub: {e}") from e


def checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a checkpoint: sharded (with an index) or a single file."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {model_dir}"
                            " (PyTorch .bin checkpoints are not supported; convert them to safetensors)")


def hf_name(path: tuple) -> tuple[str, bool]:
    """Our parameter path -> (HF tensor name, whether the HF tensor is a transposed Linear weight)
    in Llama's checkpoint layout. Other layouts (fused tensors, other names): `weight_map`."""
    parts = [str(p) for p in path]
    leaf = parts[-1]
    prefix = "" if parts[0] == "lm_head" else "model."
    if leaf == "kernel":
        return prefix + ".".join(parts[:-1]) + ".weight", True
    if leaf == "embedding":
        return prefix + ".".join(parts[:-1]) + ".weight", False
    return prefix + ".".join(parts), False


def weight_map(cfg: ModelConfig) -> list[TensorMap]:
    """Every checkpoint tensor of `cfg`'s architecture and the parameters it fills."""
    return get_architecture(cfg.architecture).weight_map(cfg)


def abstract_model(cfg: ModelConfig, dtype) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph definition and a state of ShapeDtypeStructs (allocates nothing)."""
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def hf_tensors(cfg: ModelConfig, state: nnx.State) -> dict[str, np.ndarray]:
    """A model state as the tensors of an HF checkpoint of `cfg`'s architecture (the inverse of
    loading: fused tensors re-fused, Linear weights transposed back)."""
    params = {param_name(path): np.asarray(var.get_value()) for path, var in nnx.to_flat_state(state)}
    return export_hf_tensors(weight_map(cfg), params)


def hf_tensor_specs(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...], float | None]]:
    """(HF name, shape, init constant or None for random) of every tensor a checkpoint of `cfg`
    holds, in weight-map order (allocates nothing): what a random-weight checkpoint writer needs."""
    _, state = abstract_model(cfg, jnp.float32)
    flat = {param_name(path): (path, tuple(var.get_value().shape)) for path, var in nnx.to_flat_state(state)}
    return [(m.hf, tuple(m.transform.hf_shape([flat[p][1] for p in m.ours])), init_constant(cfg, flat[m.ours[0]][0]))
            for m in weight_map(cfg)]


def param_name(path: tuple) -> str:
    """Our parameter path as one dotted name (the keys of an orbax checkpoint)."""
    return ".".join(str(p) for p in path)


def is_orbax_checkpoint(model_dir: str) -> bool:
    """Whether `model_dir` was written by `pagedjax convert`."""
    return os.path.exists(os.path.join(model_dir, ORBAX_MARKER))


def _to_device(array: np.ndarray, dtype, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """A host tensor (e.g. a memory-mapped view) cast to `dtype` on its device or shards.

    NOTE: with a sharding, each device's slice is read, cast and sent on its own
    (`make_array_from_callback`), so no whole copy of a sharded tensor is ever made.
    """
    def host_slice(index):  # cast only when needed: the device transfer is a copy already
        part = np.asarray(array[index])
        return part if part.dtype == dtype else part.astype(dtype)

    if sharding is None:
        return jnp.asarray(host_slice(...))
    return jax.make_array_from_callback(array.shape, sharding, host_slice)


def _check_match(source: str, cfg: ModelConfig, noun: str, missing: list, unexpected: list, misshapen: list,
                 unexpected_note: str = "") -> None:
    """Raises `CheckpointError` naming every missing, unexpected and misshapen entry of `source`."""
    problems = []
    if missing:
        problems.append(f"missing {noun}: " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected {noun}{unexpected_note}: " + ", ".join(unexpected))
    if misshapen:
        problems.append(f"misshapen {noun}: " + "; ".join(misshapen))
    if problems:
        raise CheckpointError(f"{source} does not match {cfg.architecture}: " + " | ".join(problems))


def load_params(cfg: ModelConfig, model_dir: str, dtype,
                sharding_for: Callable[[tuple], jax.sharding.Sharding] | None = None) -> tuple[nnx.GraphDef, nnx.State]:
    """Fills the model's parameters from `model_dir`'s safetensors files (or its orbax checkpoint,
    see `is_orbax_checkpoint`).

    `sharding_for(path)` gives each parameter's target sharding (default: the default device).
    Raises `CheckpointError` naming the missing, unexpected or misshapen tensors.
    """
    if is_orbax_checkpoint(model_dir):
        return restore_orbax_params(cfg, model_dir, dtype, sharding_for)
    arch = get_architecture(cfg.architecture)
    graphdef, abstract_state = abstract_model(cfg, dtype)
    flat = list(nnx.to_flat_state(abstract_state))
    variables = {param_name(path): (path, var) for path, var in flat}
    maps = {m.hf: m for m in arch.weight_map(cfg)}
    unmapped = sorted(set(variables) - {p for m in maps.values() for p in m.ours})
    if unmapped:  # a bug of the family's weight map, not of the checkpoint
        raise AssertionError(f"{cfg.architecture}'s weight map fills no tensor for parameters {unmapped}")
    tied_alias = "lm_head.weight" if cfg.tie_word_embeddings else None
    loaded, unexpected, misshapen = set(), [], []
    expert_slices: dict[str, dict] = {}  # stacked parameter -> {expert: (read, transform)}
    for file in checkpoint_files(model_dir):
        st = SafetensorsFile(file)
        for stored in st.names():
            name = arch.checkpoint_name(stored)
            if arch.is_ignored(name) or name == tied_alias:
                continue  # non-parameter buffer / the tied head's duplicate of the embedding
            m = maps.get(name)
            if m is None:
                unexpected.append(f"{stored} (in {os.path.basename(file)})")
                continue
            ours = [variables[p][1].get_value() for p in m.ours]
            want = tuple(m.transform.hf_shape([o.shape for o in ours]))
            have = tuple(st.shape(stored))
            if have != want:
                misshapen.append(f"{stored}: checkpoint {have}, model expects {want}")
                continue
            if isinstance(m.transform, ExpertSlice):  # one expert of a stacked parameter: stacked below
                expert_slices.setdefault(m.ours[0], {})[m.transform.index] = (
                    lambda st=st, stored=stored: st.get(stored), m.transform)
                loaded.add(name)
                continue
            arrays = m.transform.to_ours(st.get(stored), [o.shape for o in ours])  # views of the memory map
            for p, target, array in zip(m.ours, ours, arrays):
                sharding = sharding_for(variables[p][0]) if sharding_for else None
                variables[p][1].set_value(_to_device(array, target.dtype, sharding))
            loaded.add(name)
    _check_match(f"checkpoint {model_dir}", cfg, "tensors", sorted(set(maps) - loaded),
                 unexpected, misshapen, unexpected_note=" (not used by the model)")
    for p, slices in expert_slices.items():
        target = variables[p][1].get_value()
        sharding = sharding_for(variables[p][0]) if sharding_for else None
        variables[p][1].set_value(_to_device(StackedExperts(target.shape, target.dtype, slices), target.dtype, sharding))
    return graphdef, nnx.from_flat_state(flat)


def restore_orbax_params(cfg: ModelConfig, model_dir: str, dtype,
                         sharding_for: Callable[[tuple], jax.sharding.Sharding] | None = None
                         ) -> tuple[nnx.GraphDef, nnx.State]:
    """Restores a `pagedjax convert` checkpoint into the model's parameters, each straight into
    `sharding_for(path)` (default: the default device) and cast to `dtype` if it was saved in
    another. Raises `CheckpointError` naming missing, unexpected or misshapen parameters."""
    import orbax.checkpoint as ocp

    graphdef, abstract_state = abstract_model(cfg, dtype)
    flat = list(nnx.to_flat_state(abstract_state))
    path = os.path.abspath(os.path.join(model_dir, ORBAX_PARAMS))
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {}
    for p, var in flat:
        want = var.get_value()
        sharding = sharding_for(p) if sharding_for else None
        target[param_name(p)] = jax.ShapeDtypeStruct(want.shape, want.dtype, sharding=sharding or default)
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.metadata(path)
        saved = getattr(saved, "item_metadata", saved)  # orbax >= 0.11 wraps the tree
        saved_shapes = {name: tuple(m.shape) for name, m in dict(saved).items()}
        misshapen = [f"{n}: checkpoint {saved_shapes[n]}, model expects {tuple(target[n].shape)}"
                     for n in sorted(set(target) & set(saved_shapes)) if saved_shapes[n] != tuple(target[n].shape)]
        _check_match(f"orbax checkpoint {path}", cfg, "parameters", sorted(set(target) - set(saved_shapes)),
                     sorted(set(saved_shapes) - set(target)), misshapen)
        restored = checkpointer.restore(path, target)
    for p, var in flat:
        var.set_value(restored[param_name(p)])
    return graphdef, nnx.from_flat_state(flat)


def load_model(model: str, dtype: str = "auto", **config_overrides) -> tuple[CausalLM, ModelConfig, str]:
    """(model with loaded weights, its config, the resolved checkpoint directory)."""
    model_dir = resolve_model_path(model)
    cfg = ModelConfig.from_pretrained(model_dir, **config_overrides)
    graphdef, state = load_params(cfg, model_dir, resolve_dtype(dtype, cfg))
    return nnx.merge(graphdef, state), cfg, model_dir
