"""Checkpoint loading: strict name map, shapes, dtypes, sharded files, clear errors."""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.config import ModelConfig
from models.loader import CheckpointError, load_model
from models.safetensors_io import SafetensorsFile, save_file
from pagedjax.static_generate import forward_logits


def _copy_with_tensors(src: str, dst: str, edit) -> str:
    """Copies a single-file checkpoint, rewriting its tensors through `edit(dict) -> dict`."""
    shutil.copytree(src, dst)
    st = SafetensorsFile(os.path.join(src, "model.safetensors"))
    tensors = edit({name: np.array(st.get(name)) for name in st.names()})
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    return dst


def test_missing_tensor_is_named(llama_dir, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = _copy_with_tensors(llama_dir, tmp_path / "ck", lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(bad))


def test_extra_tensor_is_named(llama_dir, tmp_path):
    bad = _copy_with_tensors(llama_dir, tmp_path / "ck",
                             lambda t: {**t, "model.layers.0.self_attn.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*model\.layers\.0\.self_attn\.extra\.weight"):
        load_model(str(bad))


def test_misshapen_tensor_is_named(llama_dir, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    bad = _copy_with_tensors(llama_dir, tmp_path / "ck", lambda t: {**t, name: t[name][:-1]})
    with pytest.raises(CheckpointError, match=r"misshapen tensors: model\.layers\.0\.self_attn\.k_proj\.weight: "
                                              r"checkpoint \(31, 64\), model expects \(32, 64\)"):
        load_model(str(bad))


def test_unsupported_architecture_lists_supported(llama_dir, tmp_path):
    dst = shutil.copytree(llama_dir, tmp_path / "ck")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["MysteryForCausalLM"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="MysteryForCausalLM.*not supported.*GPT2LMHeadModel.*LlamaForCausalLM.*MistralForCausalLM"
                                         ".*Qwen2ForCausalLM.*Qwen3ForCausalLM"):
        load_model(str(dst))


def test_sharded_checkpoint_with_index_loads_identically(llama_dir, tmp_path):
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="60KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    single, _, _ = load_model(llama_dir)
    multi, _, _ = load_model(str(sharded))
    for (pa, a), (pb, b) in zip(nnx.to_flat_state(nnx.state(single)), nnx.to_flat_state(nnx.state(multi))):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))


@pytest.mark.parametrize("dtype,expected", [("auto", jnp.float32), ("float32", jnp.float32),
                                            ("bfloat16", jnp.bfloat16), ("float16", jnp.float16)])
def test_dtypes(llama_dir, dtype, expected):
    model, _, _ = load_model(llama_dir, dtype=dtype)
    dtypes = {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(model))}
    assert dtypes == {jnp.dtype(expected)}


def test_auto_dtype_follows_checkpoint_and_bf16_is_close(checkpoint_factory, llama_dir):
    bf16_dir = checkpoint_factory("llama", dtype="bfloat16")
    model, cfg, _ = load_model(bf16_dir)
    assert cfg.torch_dtype == "bfloat16"
    assert {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(model))} == {jnp.dtype(jnp.bfloat16)}
    ids = np.array([[1, 50, 60, 70, 80, 90]])
    ref = np.asarray(forward_logits(load_model(bf16_dir, dtype="float32")[0], ids))
    got = np.asarray(forward_logits(model, ids))
    # bf16 has an 8-bit mantissa; over 2 layers the logits move by a few percent of their scale.
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_bad_dtype_and_missing_dir(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        load_model(llama_dir, dtype="int8")
    with pytest.raises(ValueError, match="not a local directory and could not be fetched"):
        load_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((open(os.path.join(llama_dir, "config.json")).read()))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(str(tmp_path / "empty"))


def test_config_reads_legacy_rope_scaling_keys():
    legacy = dict(architectures=["LlamaForCausalLM"], vocab_size=10, hidden_size=8, intermediate_size=16,
                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0,
                  rope_scaling={"type": "linear", "factor": 4.0}, torch_dtype="bfloat16")
    cfg = ModelConfig.from_hf_dict(legacy)
    assert (cfg.rope.theta, cfg.rope.rope_type, cfg.rope.factor) == (500000.0, "linear", 4.0)
    assert cfg.torch_dtype == "bfloat16" and cfg.head_dim == 4
    yarn = ModelConfig.from_hf_dict({**legacy, "rope_scaling": {"type": "yarn", "factor": 2.0}})
    assert yarn.rope.original_max_position_embeddings == yarn.max_position_embeddings == 2048  # HF's defaults
    with pytest.raises(ValueError, match="rope_scaling type 'mystery' is not supported"):
        ModelConfig.from_hf_dict({**legacy, "rope_scaling": {"type": "mystery", "factor": 2.0}})
    with pytest.raises(ValueError, match="must be a multiple of num_key_value_heads"):
        ModelConfig.from_hf_dict({**legacy, "num_key_value_heads": 3, "num_attention_heads": 4})
