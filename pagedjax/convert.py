"""`pagedjax convert`: a Hugging Face checkpoint -> an orbax checkpoint directory.

The output directory holds what `LLM(model=OUT)` needs and nothing to re-derive at start-up:

    OUT/config.json              the source's, with `dtype`/`torch_dtype` set to the saved dtype
    OUT/tokenizer*, *.jinja,...  the tokenizer and generation config files, copied
    OUT/params/                  the parameters (our names, our [in, out] layout, cast) as an
                                 orbax checkpoint, restored straight into any sharding
    OUT/pagedjax_orbax.json      the marker `models.loader.is_orbax_checkpoint` looks for;
                                 written last, so an interrupted conversion is not mistaken
                                 for a complete one
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
from flax import nnx

from models.config import ModelConfig
from models.loader import (
    DTYPES, ORBAX_MARKER, ORBAX_PARAMS, load_params, param_name, resolve_dtype, resolve_model_path)

# Files copied from the source checkpoint (weights are not: they are re-saved under params/).
_COPIED_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
_NOT_COPIED = ("model.safetensors.index.json", "pytorch_model.bin.index.json", ORBAX_MARKER)


def _dtype_name(dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def convert_checkpoint(model: str, out_dir: str, dtype: str = "auto") -> dict:
    """Writes `model` (a checkpoint directory or hub id) as an orbax checkpoint under `out_dir`
    (which must not exist or be empty), parameters cast to `dtype` ("auto" keeps the checkpoint's).

    The parameters are loaded into host memory (the CPU device), never onto an accelerator.
    Returns a summary: {"out_dir", "dtype", "num_params", "bytes", "load_seconds", "save_seconds"}.
    """
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"output directory {out_dir!r} already exists and is not empty")
    import orbax.checkpoint as ocp

    model_dir = resolve_model_path(model)
    cfg = ModelConfig.from_pretrained(model_dir)
    target_dtype = resolve_dtype(dtype, cfg)
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    start = time.perf_counter()
    _, state = load_params(cfg, model_dir, target_dtype, sharding_for=lambda path: host)
    params = {param_name(path): var.get_value() for path, var in nnx.to_flat_state(state)}
    load_seconds = time.perf_counter() - start

    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    # NOTE: uncompressed: weights barely compress, and zstd costs more at restore than it saves in I/O.
    with ocp.PyTreeCheckpointer(use_compression=False) as checkpointer:
        checkpointer.save(os.path.abspath(os.path.join(out_dir, ORBAX_PARAMS)), args=ocp.args.PyTreeSave(params))
    save_seconds = time.perf_counter() - start

    for name in sorted(os.listdir(model_dir)):
        src = os.path.join(model_dir, name)
        if os.path.isfile(src) and name.endswith(_COPIED_SUFFIXES) and name not in _NOT_COPIED:
            shutil.copy2(src, os.path.join(out_dir, name))
    with open(os.path.join(model_dir, "config.json")) as f:
        hf_config = json.load(f)
    dtype_name = _dtype_name(target_dtype)
    hf_config["dtype"] = hf_config["torch_dtype"] = dtype_name  # dtype="auto" now means the saved one
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    summary = dict(out_dir=out_dir, dtype=dtype_name, num_params=int(sum(a.size for a in params.values())),
                   bytes=int(sum(a.size * a.dtype.itemsize for a in params.values())),
                   load_seconds=load_seconds, save_seconds=save_seconds)
    with open(os.path.join(out_dir, ORBAX_MARKER), "w") as f:
        json.dump(dict(format="orbax", version=1, params=ORBAX_PARAMS, dtype=dtype_name,
                       source=os.path.abspath(model_dir), num_params=summary["num_params"]), f, indent=2)
    return summary
