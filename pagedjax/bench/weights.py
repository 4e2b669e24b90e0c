"""One checkpoint directory that every benchmarked system loads: the same weights everywhere.

A checkpoint directory (or hub id) is used as it is. A preset (`models/presets.py`) is written
once as a Hugging Face checkpoint — `config.json` from the transformers config class of its
architecture and safetensors shards of N(0, 0.02) weights (norms at identity), drawn with numpy
from the seed, tensor by tensor, on host threads — so our engine (`load_params`), the jax-static
baseline and transformers' `from_pretrained` read identical bytes, and no process holds two
copies of an 8B model on the GPU. The same (preset, dtype, seed) always gives the same bytes,
so the parts of a split run may each rebuild it; `--weights-dir` keeps it between them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np

from models.config import ModelConfig
from models.presets import PRESETS

WEIGHTS_STD = 0.02  # as the presets' on-device weights and HF's initializer_range
MARKER = "pagedjax_bench_weights.json"  # written last: its presence means the directory is complete
_FORMAT = 2  # 2: written through the weight map (fused layouts, identity norms)
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_SHARD_BYTES = 4 << 30


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What the benchmark runs: a checkpoint directory all systems load, and how it came about."""

    name: str  # what the user asked for: a preset name, a directory, a hub id, or "default"
    kind: str  # "preset" | "checkpoint" | "default"
    model_dir: str
    dtype: str  # float32 | bfloat16 | float16 (resolved; every system runs this dtype)
    config: ModelConfig
    has_tokenizer: bool

    def describe(self) -> dict:
        cfg = self.config
        return dict(name=self.name, kind=self.kind, model_dir=self.model_dir, dtype=self.dtype,
                    architecture=cfg.architecture, num_params=cfg.num_params(), num_layers=cfg.num_layers,
                    hidden_size=cfg.hidden_size, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                    head_dim=cfg.head_dim, vocab_size=cfg.vocab_size,
                    weights=(dict(distribution="normal", std=WEIGHTS_STD, norms="identity")
                             if self.kind == "preset" else "checkpoint"))


def resolve_dtype_name(dtype: str, cfg: ModelConfig) -> str:
    """`auto` -> the checkpoint's dtype name (float32 if unknown); else the name itself, validated."""
    from models.loader import resolve_dtype

    return np.dtype(resolve_dtype(dtype, cfg)).name


def prepare_model(model: str | None, dtype: str = "auto", *, weights_dir: str | None = None, seed: int = 0,
                  scratch_dir: str | None = None) -> ModelSource:
    """The benchmark's model as a checkpoint directory (see the module docstring).

    `model`: None (the built-in tiny model), a checkpoint directory, a hub id or a preset name.
    A preset is written to `weights_dir` (reused when it holds the same preset, dtype and seed),
    else to a fresh directory under `scratch_dir` that the caller deletes.
    """
    from models.loader import resolve_model_path

    if model is None:
        from pagedjax.default_model import default_model_dir

        name, kind, model_dir = "default", "default", default_model_dir()
    elif model in PRESETS and not os.path.isdir(model):
        cfg = ModelConfig.from_hf_dict(PRESETS[model])
        dtype_name = resolve_dtype_name(dtype, cfg)
        target = weights_dir or tempfile.mkdtemp(prefix=f"{model}-", dir=scratch_dir)
        write_preset_checkpoint(model, target, dtype_name, seed=seed)
        name, kind, model_dir = model, "preset", target
    else:
        name, kind, model_dir = model, "checkpoint", resolve_model_path(model)
    cfg = ModelConfig.from_pretrained(model_dir)
    has_tokenizer = any(os.path.exists(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer.model",
                                                                              "tokenizer_config.json"))
    return ModelSource(name, kind, model_dir, resolve_dtype_name(dtype, cfg), cfg, has_tokenizer)


def _hf_config(preset: str, dtype_name: str):
    import transformers

    hf = dict(PRESETS[preset])
    cls = getattr(transformers, hf["architectures"][0]).config_class
    config = cls(**{k: v for k, v in hf.items() if k != "dtype"})
    config.architectures = list(hf["architectures"])
    config.dtype = dtype_name
    return config


def write_preset_checkpoint(preset: str, out_dir: str, dtype_name: str, *, seed: int = 0,
                            num_threads: int | None = None) -> str:
    """Writes preset `preset` as an HF checkpoint in `out_dir` (no-op when already there, same recipe)."""
    recipe = dict(format=_FORMAT, preset=preset, dtype=dtype_name, seed=seed, std=WEIGHTS_STD)
    marker = os.path.join(out_dir, MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            found = json.load(f)
        if found != recipe:
            raise ValueError(f"{out_dir} holds other benchmark weights ({found}); wanted {recipe}: "
                             f"use another --weights-dir or delete it")
        return out_dir
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        shutil.rmtree(out_dir)  # an interrupted earlier write (no marker)
    os.makedirs(out_dir, exist_ok=True)
    from models.loader import hf_tensor_specs
    from models.safetensors_io import save_file

    cfg = ModelConfig.from_hf_dict(PRESETS[preset])
    _hf_config(preset, dtype_name).save_pretrained(out_dir)
    # (index, HF name, HF shape, init constant or None): the family's weight map decides names,
    # fused layouts and the identity of its norms (ones, or zeros for Gemma's (1 + w) norms)
    specs = [(i, name, shape, constant) for i, (name, shape, constant) in enumerate(hf_tensor_specs(cfg))]
    np_dtype = _NP_DTYPES[dtype_name]

    def make(spec):
        i, name, shape, constant = spec
        if constant is not None:
            return name, np.full(shape, constant, np_dtype)
        values = np.random.default_rng([seed, i]).standard_normal(shape, dtype=np.float32)
        values *= WEIGHTS_STD
        return name, values.astype(np_dtype)

    shards, current, size = [], [], 0
    for spec in specs:  # group tensors into shards of at most _SHARD_BYTES
        nbytes = int(np.prod(spec[2])) * np.dtype(np_dtype).itemsize
        if current and size + nbytes > _SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += nbytes
    shards.append(current)
    files = (["model.safetensors"] if len(shards) == 1
             else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    weight_map = {}
    with ThreadPoolExecutor(num_threads or min(16, os.cpu_count() or 1)) as pool:
        for file, shard in zip(files, shards):
            tensors = dict(pool.map(make, shard))
            save_file(tensors, os.path.join(out_dir, file), metadata={"format": "pt"})
            weight_map.update({name: file for name in tensors})
            del tensors
    if len(files) > 1:
        total = sum(int(np.prod(s[2])) for s in specs) * np.dtype(np_dtype).itemsize
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(dict(metadata=dict(total_size=total), weight_map=weight_map), f, indent=2)
    with open(marker, "w") as f:
        json.dump(recipe, f)
    return out_dir
