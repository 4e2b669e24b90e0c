"""QuantizationConfig: every supported quant_method parsed the way vLLM reads it, which
modules each scheme covers, and clear errors for what is not supported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.quantization import QuantizationConfig

FIXTURES = Path(__file__).parent / "fixtures" / "llmc"
Q, K, LM = "model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj", "lm_head"


def parse(qcfg, quantization=None):
    return QuantizationConfig.from_hf_config({"quantization_config": qcfg}, quantization)


def test_gptq_v1_and_v2_groups_channel_and_lm_head():
    cfg = parse({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": False})
    s = cfg.scheme_for(Q)
    assert (s.format, s.bits, s.strategy, s.group_size, s.symmetric, s.desc_act, s.zero_offset) == \
        ("gptq", 4, "group", 128, False, True, 1)
    assert cfg.scheme_for(LM) is None
    v2 = parse({"quant_method": "gptq", "bits": 8, "group_size": -1, "checkpoint_format": "gptq_v2",
                "lm_head": True})
    s = v2.scheme_for(LM)
    assert (s.bits, s.strategy, s.group_size, s.zero_offset, s.desc_act) == (8, "channel", None, 0, False)
    layout = s.layout(4096, 1024, "float16")
    assert (layout.weight_format, layout.group_k, layout.has_zeros) == ("int8", 4096, False)


def test_gptq_dynamic_overrides_and_skips():
    cfg = parse({"quant_method": "gptq", "bits": 4, "group_size": 128,
                 "dynamic": {r"-:.*\.3\..*k_proj": {}, r"+:.*\.3\..*q_proj": {"bits": 8, "group_size": 32}}})
    assert cfg.scheme_for(K) is None
    assert (cfg.scheme_for(Q).bits, cfg.scheme_for(Q).group_size) == (8, 32)
    assert cfg.scheme_for("model.layers.4.self_attn.q_proj").bits == 4


def test_awq_gemm():
    cfg = parse({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                 "version": "GEMM", "modules_to_not_convert": ["mlp.gate"]})
    s = cfg.scheme_for(Q)
    assert (s.format, s.group_size, s.symmetric) == ("awq", 128, False)
    assert cfg.scheme_for("model.layers.0.mlp.gate") is None and cfg.scheme_for(LM) is None


def test_compressed_tensors_groups_targets_and_ignore():
    cfg = parse({"quant_method": "compressed-tensors", "format": "pack-quantized",
                 "ignore": ["lm_head", "re:.*\\.1\\.mlp\\..*"],
                 "config_groups": {
                     "attn": {"targets": ["re:.*self_attn\\.(q|k)_proj$"], "format": "float-quantized",
                              "weights": {"num_bits": 8, "type": "float", "strategy": "block",
                                          "block_structure": [128, 128], "symmetric": True},
                              "input_activations": {"num_bits": 8, "type": "float", "strategy": "group",
                                                    "group_size": 128, "dynamic": True}},
                     "rest": {"targets": ["Linear"],
                              "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                          "group_size": 64, "symmetric": False, "actorder": "group"}}}})
    attn, mlp = cfg.scheme_for(K), cfg.scheme_for("model.layers.0.mlp.down_proj")
    assert (attn.format, attn.strategy, attn.block_structure) == ("ct-float", "block", (128, 128))
    assert attn.layout(256, 512).activation == "fp8-group"
    assert (mlp.format, mlp.bits, mlp.group_size, mlp.symmetric, mlp.desc_act) == ("ct-pack", 4, 64, False, True)
    assert cfg.scheme_for("model.layers.1.mlp.down_proj") is None and cfg.scheme_for(LM) is None


@pytest.mark.parametrize("name,expected", [
    ("w4a16-g32-sym", ("ct-pack", 4, "group", True, None)),
    ("w4a16-g16-asym", ("ct-pack", 4, "group", False, None)),
    ("w8a16-channel", ("ct-pack", 8, "channel", True, None)),
    ("fp8-dynamic", ("ct-float", 8, "channel", True, "fp8-token")),
    ("fp8-static", ("ct-float", 8, "tensor", True, "fp8-static")),
    ("fp8-block", ("ct-float", 8, "block", True, "fp8-group")),
])
def test_llm_compressor_configs(name, expected):
    cfg = QuantizationConfig.from_hf_config(json.loads((FIXTURES / name / "config.json").read_text()))
    s = cfg.scheme_for("model.layers.0.mlp.up_proj")
    layout = s.layout(64, 128)
    assert (s.format, s.bits, s.strategy, s.symmetric,
            None if layout.activation == "none" else layout.activation) == expected
    assert cfg.scheme_for(LM) is None  # llm-compressor's ignore list


def test_hf_fp8_block_and_per_tensor():
    block = parse({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
                   "modules_to_not_convert": ["mlp.gate"]})
    layout = block.scheme_for(Q).layout(4096, 2048)
    assert (layout.group_k, layout.group_n, layout.activation, layout.activation_group) == \
        (128, 128, "fp8-group", 128)
    assert block.scheme_for("model.layers.0.mlp.gate") is None and block.scheme_for(LM) is None
    static = parse({"quant_method": "fp8", "activation_scheme": "static"})
    assert static.scheme_for(Q).layout(64, 64).activation == "fp8-static"


def test_on_load_and_unquantized():
    assert QuantizationConfig.from_hf_config({}) is None
    int8 = QuantizationConfig.from_hf_config({}, "int8")
    layout = int8.scheme_for(Q).layout(64, 32)
    assert int8.on_load and (layout.weight_format, layout.group_k, layout.activation) == ("int8", 64, "none")
    fp8 = QuantizationConfig.from_hf_config({}, "fp8").scheme_for(Q).layout(64, 32)
    assert (fp8.weight_format, fp8.activation) == ("fp8", "fp8-token")
    assert QuantizationConfig.from_hf_config({}, "fp8").scheme_for(LM) is None


@pytest.mark.parametrize("qcfg,quantization,match", [
    ({"quant_method": "bitsandbytes"}, None,
     r"quant_method 'bitsandbytes' is not supported \(supported: quant_method gptq, awq, compressed-tensors, fp8"),
    # GPT-OSS's MXFP4 experts wait for the MoE blocks
    ({"quant_method": "mxfp4"}, None, r"quant_method 'mxfp4' is not supported \(supported: .* quantization='int8'"),
    (None, "gptq", "needs a checkpoint whose config.json has a quantization_config"),
    ({"quant_method": "gptq", "bits": 4}, "awq", "does not match the checkpoint's quant_method 'gptq'"),
    ({"quant_method": "gptq", "bits": 3}, None, r"gptq bits=3 is not supported \(supported: 4, 8\)"),
    ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, None, "checkpoint_format 'marlin'"),
    ({"quant_method": "gptq"}, None, "needs bits"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, None, r"awq version 'gemv' is not supported"),
    ({"quant_method": "awq", "bits": 4, "zero_point": False}, None, "zero_point=false"),
    ({"quant_method": "awq", "bits": 8}, None, "awq bits=8"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, None, "fmt 'e5m2'"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"targets": ["Linear"],
      "weights": {"num_bits": 4, "type": "float"}}}}, None, "weights float4 are not supported"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"targets": ["Linear"],
      "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
      "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}}}},
     None, "input_activations int8 are not supported"),
    ({"quant_method": "compressed-tensors", "format": "marlin-24", "config_groups": {"g": {
      "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "group_size": 128,
                                         "strategy": "group"}}}}, None, "format 'marlin-24'"),
    ({"quant_method": "compressed-tensors", "kv_cache_scheme": {"num_bits": 8}, "config_groups": {}},
     None, "kv_cache_scheme is not supported"),
    ({"quant_method": "compressed-tensors", "config_groups": {}}, None, "no config_groups"),
])
def test_unsupported_is_a_clear_error(qcfg, quantization, match):
    hf = {} if qcfg is None else {"quantization_config": qcfg}
    with pytest.raises(ValueError, match=match):
        QuantizationConfig.from_hf_config(hf, quantization)


def test_the_engine_names_what_is_supported(checkpoint_factory, tmp_path):
    """A checkpoint with an unsupported quant_method, and an unknown `quantization` option."""
    import shutil

    from pagedjax import LLM

    model_dir = tmp_path / "bnb"
    shutil.copytree(checkpoint_factory("llama"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"quant_method 'bitsandbytes' is not supported \(supported: quant_method"
                                         r" gptq, awq, compressed-tensors, fp8 in config.json, or quantization="):
        LLM(str(model_dir), num_kv_blocks=8, max_model_len=32)
    with pytest.raises(ValueError, match=r"quantization must be None or one of \('gptq', 'awq'.*got 'int4'"):
        LLM(checkpoint_factory("llama"), quantization="int4")
