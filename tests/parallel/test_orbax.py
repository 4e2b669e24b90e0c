"""`pagedjax convert` and restoring its orbax checkpoints (one device; the tensor-parallel restore
is in `_tp_checks.py`)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.config import ModelConfig
from models.loader import ORBAX_MARKER, CheckpointError, is_orbax_checkpoint, load_params
from pagedjax.cli import main
from pagedjax.convert import convert_checkpoint
from tests.parallel.tp_workload import run_workload


@pytest.fixture(scope="module")
def converted(llama_dir, tmp_path_factory):
    """The tiny Llama converted with the CLI (float32, as saved)."""
    out = str(tmp_path_factory.mktemp("orbax") / "llama")
    assert main(["convert", llama_dir, out]) == 0
    return out


def _flat(state) -> dict:
    return {path: var.get_value() for path, var in nnx.to_flat_state(state)}


def test_output_directory_layout(converted, llama_dir):
    assert is_orbax_checkpoint(converted) and not is_orbax_checkpoint(llama_dir)
    names = set(os.listdir(converted))
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", ORBAX_MARKER,
            "params"} <= names
    assert not any(n.endswith(".safetensors") for n in names)
    with open(os.path.join(converted, ORBAX_MARKER)) as f:
        marker = json.load(f)
    assert marker["format"] == "orbax" and marker["dtype"] == "float32" and marker["num_params"] > 0


def test_restored_parameters_are_the_loaded_ones(converted, llama_dir):
    cfg = ModelConfig.from_pretrained(llama_dir)
    for dtype in (jnp.float32, jnp.bfloat16):  # bfloat16: cast while restoring
        from_safetensors = _flat(load_params(cfg, llama_dir, dtype)[1])
        restored = _flat(load_params(cfg, converted, dtype)[1])
        assert from_safetensors.keys() == restored.keys()
        for path, value in restored.items():
            assert value.dtype == dtype and value.sharding.device_set == {jax.devices()[0]}
            np.testing.assert_array_equal(np.asarray(value), np.asarray(from_safetensors[path]), err_msg=str(path))


def test_generation_is_identical_after_convert(converted, llama_dir):
    assert run_workload(converted, 1)[0] == run_workload(llama_dir, 1)[0]


def test_convert_casts_and_dtype_auto_follows(llama_dir, tmp_path):
    out = str(tmp_path / "bf16")
    summary = convert_checkpoint(llama_dir, out, dtype="bfloat16")
    assert summary["dtype"] == "bfloat16" and summary["bytes"] == 2 * summary["num_params"]
    cfg = ModelConfig.from_pretrained(out)
    assert cfg.torch_dtype == "bfloat16"  # dtype="auto" now means the saved dtype
    restored = _flat(load_params(cfg, out, jnp.bfloat16)[1])
    expected = _flat(load_params(cfg, llama_dir, jnp.bfloat16)[1])
    for path, value in restored.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[path]), err_msg=str(path))


def test_convert_refuses_a_non_empty_output(llama_dir, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("not ours")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        convert_checkpoint(llama_dir, str(tmp_path))
    assert main(["convert", llama_dir, str(tmp_path)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_mismatched_checkpoint_names_the_parameters(converted, checkpoint_factory):
    other = ModelConfig.from_pretrained(checkpoint_factory("llama-mha"))  # 4 KV heads instead of 2
    with pytest.raises(CheckpointError, match=r"misshapen parameters: layers\.0\.self_attn\.k_proj\.kernel"):
        load_params(other, converted, jnp.float32)


@pytest.mark.parametrize("variant", ["falcon-new-decoder", "phi3-longrope"])
def test_fused_checkpoints_convert_and_restore_unfused(variant, checkpoint_factory, tmp_path):
    """Families whose checkpoints fuse q/k/v (and gate/up) restore the split parameters."""
    model_dir = checkpoint_factory(variant)
    out = str(tmp_path / variant)
    convert_checkpoint(model_dir, out)
    cfg = ModelConfig.from_pretrained(out)
    restored = _flat(load_params(cfg, out, jnp.float32)[1])
    loaded = _flat(load_params(cfg, model_dir, jnp.float32)[1])
    assert restored.keys() == loaded.keys() and ("layers", 0, "self_attn", "k_proj", "kernel") in restored
    for name in loaded:
        np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(loaded[name]), err_msg=str(name))
