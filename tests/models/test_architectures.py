"""The registry, weight maps, shared blocks and presets, without HF models in the loop (fast)."""

from __future__ import annotations

import json
import math
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from models.blocks.alibi import alibi_slopes
from models.blocks.rope import rope_cos_sin
from models.config import ModelConfig, RopeConfig
from models.loader import abstract_model, hf_tensor_specs, hf_tensors, load_model, param_name
from models.presets import PRESETS, preset_config
from models.registry import ARCHITECTURES, architecture_table, get_architecture, supported_architectures
from models.safetensors_io import SafetensorsFile, save_file
from tests.checkpoints import VARIANTS, hf_config_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_NEEDS_TENSORS = ("internlm2", "baichuan")  # conversions that read the reference's tensors


def _variant_config(checkpoint_factory, variant: str) -> dict:
    if variant not in _NEEDS_TENSORS:
        return hf_config_dict(variant)
    with open(os.path.join(checkpoint_factory(variant), "config.json")) as f:
        return json.load(f)


def _configs_of_every_architecture(checkpoint_factory) -> dict[str, dict]:
    """A tiny HF config per registered architecture (from the test variants; Baichuan-13B's name,
    which no HF class can check, from its 7B sibling's: ALiBi at this hidden size)."""
    configs = {}
    for variant in sorted(VARIANTS):
        config = _variant_config(checkpoint_factory, variant)
        configs.setdefault(config["architectures"][0], config)
    configs["BaichuanForCausalLM"] = {**configs["BaiChuanForCausalLM"], "architectures": ["BaichuanForCausalLM"]}
    return configs


def test_every_architecture_is_tested_and_round_trips_through_its_weight_map(checkpoint_factory, tmp_path):
    """Random parameters -> the family's checkpoint layout -> loaded back: identical, for every
    architecture (fused tensors re-fused and split again, Linear weights transposed twice)."""
    configs = _configs_of_every_architecture(checkpoint_factory)
    assert set(configs) == set(supported_architectures())
    for name, hf in configs.items():
        cfg = ModelConfig.from_hf_dict(hf)
        _, state = abstract_model(cfg, jnp.float32)
        rng = np.random.default_rng(3)
        for _, var in nnx.to_flat_state(state):  # distinct values everywhere, no compile
            var.set_value(rng.standard_normal(var.get_value().shape).astype(np.float32))
        tensors = hf_tensors(cfg, state)
        specs = hf_tensor_specs(cfg)
        assert {n: shape for n, shape, _ in specs} == {n: t.shape for n, t in tensors.items()}, name
        out = tmp_path / name
        out.mkdir()
        save_file(tensors, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(hf))
        loaded, _, _ = load_model(str(out), dtype="float32")
        want = {param_name(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}
        got = {param_name(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(loaded))}
        assert got.keys() == want.keys(), name
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")


def test_fused_checkpoint_tensors_are_split_into_separate_projections(checkpoint_factory):
    cfg = ModelConfig.from_pretrained(checkpoint_factory("falcon-new-decoder"))
    arch = get_architecture(cfg.architecture)
    qkv = next(m for m in arch.weight_map(cfg) if m.hf == "transformer.h.0.self_attention.query_key_value.weight")
    assert qkv.ours == tuple(f"layers.0.self_attn.{p}_proj.kernel" for p in "qkv")
    model, _, _ = load_model(checkpoint_factory("falcon-new-decoder"), dtype="float32")
    attn = model.layers[0].self_attn
    assert attn.q_proj.kernel[...].shape == (64, 64) and attn.k_proj.kernel[...].shape == (64, 2 * 16)


def test_unsupported_architecture_lists_every_supported_one():
    with pytest.raises(ValueError) as err:
        get_architecture("ChatGLMModel")
    message = str(err.value)
    assert "'ChatGLMModel' is not supported" in message
    for name in supported_architectures():
        assert name in message
    assert len(supported_architectures()) >= 28


def test_readme_architecture_table_equals_the_registry():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    match = re.search(r"<!-- architectures:begin -->\n(.*?)<!-- architectures:end -->", readme, re.S)
    assert match, "README.md has no generated architecture table"
    assert match.group(1) == architecture_table(), "regenerate it: python -m models.registry --table"


def test_gpt2_hub_layout_without_prefix_and_with_mask_buffers_loads(checkpoint_factory, tmp_path):
    """The original `gpt2` files name tensors without `transformer.` and carry attn.bias buffers."""
    src = checkpoint_factory("gpt2")
    st = SafetensorsFile(os.path.join(src, "model.safetensors"))
    tensors = {name.removeprefix("transformer."): np.array(st.get(name)) for name in st.names()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))
    tensors["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    (tmp_path / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    a, _, _ = load_model(src, dtype="float32")
    b, _, _ = load_model(str(tmp_path), dtype="float32")
    for (pa, va), (pb, vb) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))


def test_baichuan2_norm_head_is_normalised_at_load(tmp_path):
    hf = dict(architectures=["BaichuanForCausalLM"], vocab_size=125696, hidden_size=4096, intermediate_size=11008,
              num_hidden_layers=1, num_attention_heads=32, model_max_length=4096)
    cfg = ModelConfig.from_hf_dict(hf)
    assert cfg.lm_head_normalized and cfg.position == "rope"  # hidden 4096: Baichuan2-7B, RoPE
    assert ModelConfig.from_hf_dict({**hf, "hidden_size": 5120, "num_attention_heads": 40}).position == "alibi"
    head = next(m for m in get_architecture(cfg.architecture).weight_map(cfg) if m.hf == "lm_head.weight")
    rows = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32) * 3
    (kernel,) = head.transform.to_ours(rows, [(4, 6)])
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------- blocks against HF


@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 71])
def test_alibi_slopes_equal_hf(num_heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor as bloom_alibi
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor as falcon_alibi
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    mask = torch.ones(1, 3)
    bloom = bloom_alibi(mask, num_heads, torch.float32)[:, 0, 1].numpy()  # slope * key position 1
    np.testing.assert_allclose(alibi_slopes(num_heads, "bloom"), bloom, rtol=1e-6)
    falcon = falcon_alibi(mask, num_heads, torch.float32)[:, 0, 1].numpy() / math.sqrt(64)
    np.testing.assert_allclose(alibi_slopes(num_heads, "falcon", sm_scale=64 ** -0.5), falcon, rtol=1e-7)
    for bias_max in (8, 16):
        mpt = -build_mpt_alibi_tensor(num_heads, 2, bias_max)[:, 0, 0].numpy()  # slope * (0 - 1)
        np.testing.assert_allclose(alibi_slopes(num_heads, "mpt", bias_max=bias_max), mpt, rtol=1e-7)


def _hf_rope_config(rope_parameters: dict, head_dim: int = 32, max_pos: int = 256):
    import transformers

    return transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                                    max_position_embeddings=max_pos, rope_parameters=rope_parameters)


@pytest.mark.parametrize("params", [
    dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
    dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=32, beta_fast=16.0, mscale=0.9,
         mscale_all_dim=0.7, truncate=False),
    dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
    dict(rope_type="linear", factor=3.0),
    dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=128, partial_rotary_factor=0.5),
])
def test_static_rope_types_equal_hf(params):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from models import hf_config

    hf = _hf_rope_config({"rope_theta": 10000.0, **params})
    inv_freq, scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf, "cpu")
    rope = hf_config.rope_config(hf.to_dict(), 32, 256)
    positions = np.arange(0, 300, 7)
    cos, sin = rope_cos_sin(rope, 32, 256, jnp.asarray(positions))
    angles = positions[:, None].astype(np.float32) * inv_freq.numpy()[None]
    np.testing.assert_allclose(np.asarray(cos), np.cos(angles) * scale, atol=2e-5)
    np.testing.assert_allclose(np.asarray(sin), np.sin(angles) * scale, atol=2e-5)


def test_longrope_uses_short_factors_within_and_long_factors_beyond_the_original_length():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from models import hf_config

    params = dict(rope_type="longrope", rope_theta=10000.0, original_max_position_embeddings=64,
                  short_factor=[1.0 + 0.1 * i for i in range(16)], long_factor=[1.0 + 0.7 * i for i in range(16)])
    hf = _hf_rope_config(params)
    short, scale = ROPE_INIT_FUNCTIONS["longrope"](hf, "cpu", seq_len=64)
    long, long_scale = ROPE_INIT_FUNCTIONS["longrope"](hf, "cpu", seq_len=65)
    assert scale == long_scale and scale > 1 and not torch.equal(short, long)
    rope = hf_config.rope_config(hf.to_dict(), 32, 256)
    positions = np.array([0, 5, 63, 64, 65, 200])
    cos, _ = rope_cos_sin(rope, 32, 256, jnp.asarray(positions))
    for p, row in zip(positions, np.asarray(cos)):
        inv_freq = (long if p + 1 > 64 else short).numpy()
        np.testing.assert_allclose(row, np.cos(p * inv_freq) * scale, atol=2e-5, err_msg=f"position {p}")


# --------------------------------------------------------------------------- config validation


def _config(**overrides) -> ModelConfig:
    fields = dict(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64)
    return ModelConfig(**{**fields, **overrides})


@pytest.mark.parametrize("overrides,message", [
    (dict(norm="batch"), "norm must be one of rms, layer"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(position="sinusoidal"), "position must be one of"),
    (dict(residual="parallel", norm_placement="post"), "parallel residual blocks need norm_placement 'pre'"),
    (dict(parallel_norms=3), "parallel_norms must be 1 or 2"),
    (dict(layer_windows=(4,)), "layer_windows has 1 entries for 2 layers"),
    (dict(layer_windows=(4, 0)), "layer_windows entries must be None or >= 1"),
    (dict(rope=RopeConfig(rotary_dim=16)), r"rotary_dim \(16\) exceeds head_dim \(8\)"),
    (dict(qk_norm="somewhere"), "qk_norm must be one of"),
    (dict(attn_logit_softcap=0.0), "attn_logit_softcap must be None or > 0"),
    (dict(logits_scaling=0.0), "logits_scaling must be > 0"),
    (dict(norm_eps=0.0), "norm epsilon must be > 0"),
    (dict(embed_dim=0), "embed_dim must be None or >= 1"),
])
def test_invalid_block_choices_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_rope_config_validation():
    with pytest.raises(ValueError, match="rotary_dim must be an even number"):
        RopeConfig(rotary_dim=7)
    with pytest.raises(ValueError, match="longrope rope scaling needs short_factor and long_factor"):
        RopeConfig(rope_type="longrope", original_max_position_embeddings=8)
    with pytest.raises(ValueError, match="yarn rope scaling needs original_max_position_embeddings"):
        RopeConfig(rope_type="yarn", factor=2.0)


def test_layer_windows_and_specs(checkpoint_factory):
    gemma2 = ModelConfig.from_pretrained(checkpoint_factory("gemma2"))
    assert gemma2.layer_sliding_windows() == (8, None)  # alternating, layer 0 windowed (HF's default)
    spec = gemma2.attention_spec(0)
    assert (spec.sliding_window, spec.logit_softcap, spec.sm_scale) == (8, 2.0, 32 ** -0.5)
    gemma3 = ModelConfig.from_pretrained(checkpoint_factory("gemma3"))
    assert gemma3.layer_rope(0).theta == 10000.0 and gemma3.layer_rope(1).rope_type == "linear"
    assert ModelConfig.from_pretrained(checkpoint_factory("phi3-window-partial")).layer_sliding_windows() == (12, 12)
    assert ModelConfig.from_pretrained(checkpoint_factory("llama")).layer_sliding_windows() == (None, None)
    gpt2 = ModelConfig.from_pretrained(checkpoint_factory("gpt2-scale-by-layer"))
    assert gpt2.attention_spec(1).sm_scale == pytest.approx(gpt2.head_dim ** -0.5 / 2)


# --------------------------------------------------------------------------- presets


# Parameter counts of the released checkpoints (embeddings included), to 1%.
REAL_SIZES = {"opt-13b": 12.85e9, "gemma-2-9b": 9.24e9, "phi-3-mini": 3.82e9, "falcon-7b": 6.92e9,
              "mixtral-8x7b": 46.70e9, "qwen3-30b-a3b": 30.53e9, "gpt-oss-20b": 20.91e9, "qwen1.5-moe-a2.7b": 14.32e9}


@pytest.mark.parametrize("name", sorted(REAL_SIZES))
def test_presets_have_the_real_shapes(name):
    cfg = preset_config(name)
    assert cfg.num_params() == pytest.approx(REAL_SIZES[name], rel=0.01)


def test_presets_come_from_the_architectures():
    assert set(REAL_SIZES) | {"llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b"} == set(PRESETS)
    assert {name for arch in ARCHITECTURES.values() for name in arch.presets} == set(PRESETS)
    with pytest.raises(ValueError, match="unknown preset 'nope'; presets: falcon-7b, gemma-2-9b"):
        preset_config("nope")
