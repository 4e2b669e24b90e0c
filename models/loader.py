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

Quantized checkpoints (`cfg.quantization`: config.json's `quantization_config`, or the
on-load int8 / fp8 option) go through the same strict name map: each quantized layer's tensors
(qweight / scales / ... by its format) replace its float weight, are converted on the host one
layer at a time (fused layers split into our projections) and stay quantized on the device in
a `QuantizedLinear` (models/quantization/).

A directory written by `pagedjax convert` (marker file `ORBAX_MARKER`) holds the parameters
as an orbax checkpoint instead: `load_params` restores it directly into the requested
shardings, in parallel, with no name mapping, transposition or cast left to do.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.config import ModelConfig
from models.quantization.loading import (
    QuantizedModule, install_quantized_linears, load_quantized_module, part_parallel, plan_quantized_modules)
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


def abstract_model(cfg: ModelConfig, dtype, quantized: Mapping[str, QuantizedModule] | None = None, *,
                   linear_backend: str = "auto", sharding_for: Callable[[tuple], jax.sharding.Sharding] | None = None
                   ) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph definition and a state of ShapeDtypeStructs (allocates nothing).

    `quantized` (`plan_quantized_modules`): projections that are `QuantizedLinear`s instead,
    their matmul on `linear_backend`, placed on `sharding_for`'s mesh when given.
    """
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    if quantized:
        install_quantized_linears(abstract, quantized, bias_dtype=dtype, backend=linear_backend,
                                  sharding_for=sharding_for)
    return nnx.split(abstract)


def quantization_plan(cfg: ModelConfig, dtype, checkpoint_dtypes: Mapping[str, np.dtype] | None = None,
                      default_scale_dtype: str = "bfloat16", float_state: nnx.State | None = None
                      ) -> dict[str, QuantizedModule]:
    """The quantized layers of `cfg`'s model (`cfg.quantization`; {} when it has none), with
    the scale dtypes of the checkpoint whose tensors' dtypes are `checkpoint_dtypes`.
    `float_state`: the float model's abstract state, if built already (`abstract_model`)."""
    if cfg.quantization is None:
        return {}
    state = abstract_model(cfg, dtype)[1] if float_state is None else float_state
    shapes = {param_name(path): tuple(var.get_value().shape) for path, var in nnx.to_flat_state(state)}
    return plan_quantized_modules(cfg.quantization, weight_map(cfg), shapes, checkpoint_dtypes,
                                  default_scale_dtype)


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
                sharding_for: Callable[[tuple], jax.sharding.Sharding] | None = None, *,
                linear_backend: str = "auto") -> tuple[nnx.GraphDef, nnx.State]:
    """Fills the model's parameters from `model_dir`'s safetensors files (or its orbax checkpoint,
    see `is_orbax_checkpoint`).

    `sharding_for(path)` gives each parameter's target sharding (default: the default device).
    Quantized layers (`cfg.quantization`) are converted one checkpoint layer at a time on the
    host and stay quantized on the device, their matmul on `linear_backend`.
    Raises `CheckpointError` naming the missing, unexpected or misshapen tensors.
    """
    if is_orbax_checkpoint(model_dir):
        if cfg.quantization is not None:
            raise CheckpointError(f"{model_dir} is an orbax checkpoint (`pagedjax convert`); quantized models"
                                  " load from their safetensors checkpoint only")
        return restore_orbax_params(cfg, model_dir, dtype, sharding_for)
    arch = get_architecture(cfg.architecture)
    stored = {}  # canonical tensor name -> (file, its name in the file)
    for file in checkpoint_files(model_dir):
        st = SafetensorsFile(file)
        stored.update((arch.checkpoint_name(name), (st, name)) for name in st.names())
    try:
        plan = quantization_plan(cfg, dtype, {name: st.dtype(n) for name, (st, n) in stored.items()})
    except ValueError as e:
        raise CheckpointError(f"checkpoint {model_dir}: {e}") from e
    graphdef, abstract_state = abstract_model(cfg, dtype, plan, linear_backend=linear_backend,
                                              sharding_for=sharding_for)
    flat = list(nnx.to_flat_state(abstract_state))
    variables = {param_name(path): (path, var) for path, var in flat}
    maps = {m.hf: m for m in arch.weight_map(cfg)}
    quantized_by_map = {module.tensor_map.hf: module for module in plan.values()}
    filled = {p for m in maps.values() if m.hf not in quantized_by_map for p in m.ours}
    filled |= {f"{part}.{name}" for module in plan.values()
               for part, layout in zip(module.parts, module.layouts) for name in layout.param_specs()}
    unmapped = sorted(set(variables) - filled)
    if unmapped:  # a bug of the family's weight map, not of the checkpoint
        raise AssertionError(f"{cfg.architecture}'s weight map fills no tensor for parameters {unmapped}")
    missing, misshapen, consumed = [], [], set()
    for module in plan.values():
        names = _load_quantized(module, stored, variables, sharding_for, missing, misshapen)
        consumed |= names
    tied_alias = "lm_head.weight" if cfg.tie_word_embeddings else None
    loaded, unexpected = set(), []
    expert_slices: dict[str, dict] = {}  # stacked parameter -> {expert: (read, transform)}
    for name, (st, stored_name) in stored.items():
        if name in consumed or arch.is_ignored(name) or name == tied_alias:
            continue  # a quantized layer's / non-parameter buffer / the tied head's duplicate of the embedding
        m = maps.get(name)
        if m is None or m.hf in quantized_by_map:
            if not _is_zero_bias_of_quantized(name, plan, st.get(stored_name)):
                unexpected.append(f"{stored_name} (in {os.path.basename(st.path)})")
            continue
        ours = [variables[p][1].get_value() for p in m.ours]
        want = tuple(m.transform.hf_shape([o.shape for o in ours]))
        have = tuple(st.shape(stored_name))
        if have != want:
            misshapen.append(f"{stored_name}: checkpoint {have}, model expects {want}")
            continue
        if isinstance(m.transform, ExpertSlice):  # one expert of a stacked parameter: stacked below
            expert_slices.setdefault(m.ours[0], {})[m.transform.index] = (
                lambda st=st, stored_name=stored_name: st.get(stored_name), m.transform)
            loaded.add(name)
            continue
        arrays = m.transform.to_ours(st.get(stored_name), [o.shape for o in ours])  # views of the memory map
        for p, target, array in zip(m.ours, ours, arrays):
            sharding = sharding_for(variables[p][0]) if sharding_for else None
            variables[p][1].set_value(_to_device(array, target.dtype, sharding))
        loaded.add(name)
    missing += sorted(set(maps) - loaded - set(quantized_by_map))
    _check_match(f"checkpoint {model_dir}", cfg, "tensors", missing,
                 unexpected, misshapen, unexpected_note=" (not used by the model)")
    for p, slices in expert_slices.items():
        target = variables[p][1].get_value()
        sharding = sharding_for(variables[p][0]) if sharding_for else None
        variables[p][1].set_value(_to_device(StackedExperts(target.shape, target.dtype, slices), target.dtype, sharding))
    return graphdef, nnx.from_flat_state(flat)


def _load_quantized(module: QuantizedModule, stored: dict, variables: dict, sharding_for,
                    missing: list, misshapen: list) -> set[str]:
    """Converts one quantized checkpoint layer and fills its parts' arrays; returns the tensor
    names it used (problems go to `missing` / `misshapen`)."""
    required, optional = module.tensor_names()
    absent = [name for name in required.values() if name not in stored]
    if absent:
        missing.extend(absent)
        return set()
    names = {**required, **{role: name for role, name in optional.items() if name in stored}}
    tensors = {role: stored[name][0].get(stored[name][1]) for role, name in names.items()}
    try:
        weights = load_quantized_module(module, tensors)
    except ValueError as e:
        misshapen.append(str(e))
        return set(names.values())
    for part, weight in zip(module.parts, weights):
        parallel = part_parallel(part, sharding_for)
        shardings = parallel.shardings(weight.layout) if parallel else {}
        for name, array in weight.arrays.items():
            variables[f"{part}.{name}"][1].set_value(jax.device_put(array, shardings.get(name)))
    return set(names.values())


def _is_zero_bias_of_quantized(name: str, plan: Mapping[str, QuantizedModule], tensor) -> bool:
    """GPTQ / AWQ tools may save an all-zero `bias` for layers that have none (vLLM skips them)."""
    prefix, _, leaf = name.rpartition(".")
    return leaf == "bias" and prefix in plan and not np.any(np.asarray(tensor, np.float32))


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
