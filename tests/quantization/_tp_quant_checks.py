"""Tensor parallelism of quantized models, on 8 CPU devices.

Not collected by the normal run: test_tensor_parallel_quant.py runs this file with pytest in a
subprocess whose environment has `XLA_FLAGS=--xla_force_host_platform_device_count=8`. Alone:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/quantization/_tp_quant_checks.py

One case per distinct sharding path of the quantized arrays (models/quantization/tensor_parallel.py),
each a greedy run at tp > 1 compared token for token with the same checkpoint at tp 1.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from models.loader import param_name
from models.quantization import QuantizedWeight, quantized_linear
from models.quantization.tensor_parallel import ParallelLinear
from models.sharding import TP_AXIS, make_mesh
from pagedjax import LLM, SamplingParams
from pallas_kernels.quant_layout import QuantLayout
from tests.parallel.tp_workload import ENGINE_ARGS, prompts, run_workload
from tests.quantization.packed_checkpoints import PackedSpec, write_packed_checkpoint
from tests.quantization.quant_cases import random_case

LLMC = Path(__file__).parent / "fixtures" / "llmc"
FLOAT = "llama-8q2kv"  # 8 query heads, 2 KV heads: at tp 4 k/v are replicated
# name -> (how its float checkpoint is quantized: a PackedSpec, an llm-compressor fixture or an on-load method)
MODELS = {
    # row-parallel o/down: qweight and g_idx split on K, act-order scales / zeros whole
    "gptq-act-order": PackedSpec("gptq", 4, 16, sym=False, desc_act=True),
    # group-wise scales and zeros split on K with qweight (row), on N (column)
    "awq": PackedSpec("awq", 4, 32, sym=False),
    # 8-bit per channel: one scale row, replicated on row-parallel layers; int8 lm_head vocab-parallel
    "gptq8-channel-head": PackedSpec("gptq", 8, -1, sym=True, version=2, lm_head=True),
    # fp8 128x128-style blocks (32 here) and fp8 activations per 32 input features: the same groups on each shard
    "llmc-fp8-block": "fp8-block",
    # quantized on load, per channel
    "on-load-int8": "int8",
}
CASES = [("gptq-act-order", 4), ("awq", 2), ("gptq8-channel-head", 2), ("llmc-fp8-block", 2), ("on-load-int8", 2)]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model_dir(checkpoint_factory, tmp_path_factory):
    """name -> (checkpoint directory, extra LLM arguments), built once."""
    @functools.lru_cache(maxsize=None)
    def get(name: str):
        how = MODELS[name]
        if isinstance(how, PackedSpec):
            return write_packed_checkpoint(checkpoint_factory(FLOAT), str(tmp_path_factory.mktemp(name)), how)[0], {}
        if name.startswith("llmc-"):
            return str(LLMC / how), {"skip_tokenizer_init": True}
        return checkpoint_factory(FLOAT), {"quantization": how}
    return get


def workload(directory: str, extra: dict, tp: int):
    """(greedy completions, LLM) of the tensor-parallel workload (no fork: block copies are not
    what differs here); the llm-compressor fixtures, which carry no tokenizer, get its prompts'
    token ids folded into their 128-token vocabulary."""
    if not extra.get("skip_tokenizer_init"):
        return run_workload(directory, tp, max_tokens=MAX_TOKENS, fork=False, **extra)
    ids = [[t % 128 for t in p["prompt_token_ids"]] for p in prompts()]
    llm = LLM(directory, tensor_parallel_size=tp, dtype="float32", **{**ENGINE_ARGS, **extra})
    outs = llm.generate([{"prompt_token_ids": p} for p in ids],
                        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs], llm


@pytest.fixture(scope="module")
def run(model_dir):
    """(name, tp) -> (greedy completions, LLM), each run once."""
    @functools.lru_cache(maxsize=None)
    def get(name: str, tp: int):
        return workload(*model_dir(name), tp)
    return get


@pytest.mark.parametrize("name,tp", CASES)
def test_greedy_matches_single_device(name, tp, run):
    got, llm = run(name, tp)
    expected, single = run(name, 1)
    assert got == expected
    assert llm.stats()["tensor_parallel_size"] == tp
    assert llm.stats()["param_bytes"] == single.stats()["param_bytes"]  # the global arrays, whatever the sharding


def _specs(llm) -> dict[str, P]:
    state = llm.engine.loaded.params
    return {param_name(path): var.get_value().sharding.spec for path, var in nnx.to_flat_state(state)}


def test_quantized_arrays_follow_the_float_partition_rules(run):
    """Column-parallel: qweight / scales / zeros split on the output axis, g_idx whole;
    row-parallel: qweight and g_idx split on the input axis, act-order scales whole, group-wise
    scales split with qweight, per-channel scales whole; k/v replicated when tp exceeds the KV heads."""
    specs = _specs(run("gptq-act-order", 4)[1])
    q, o, k = "layers.0.self_attn.q_proj", "layers.0.self_attn.o_proj", "layers.0.self_attn.k_proj"
    assert [specs[f"{q}.{a}"] for a in ("qweight", "scales", "zeros", "g_idx")] == \
        [P(None, "tp"), P(None, "tp"), P(None, "tp"), P()]
    assert [specs[f"{o}.{a}"] for a in ("qweight", "scales", "zeros", "g_idx")] == [P("tp", None), P(), P(), P("tp")]
    assert specs[f"{k}.qweight"] == P()
    specs = _specs(run("awq", 2)[1])
    assert specs["layers.0.mlp.down_proj.scales"] == P("tp", None) == specs["layers.0.mlp.down_proj.zeros"]
    specs = _specs(run("gptq8-channel-head", 2)[1])
    assert (specs["layers.0.mlp.down_proj.qweight"], specs["layers.0.mlp.down_proj.scales"]) == (P("tp", None), P())
    assert specs["lm_head.qweight"] == P(None, "tp") == specs["lm_head.scales"]


LAYER_LAYOUTS = {  # K = N = 64; the kinds each is split as
    "int4-act-order": QuantLayout("int4", 64, 64, group_k=16, has_zeros=True, has_g_idx=True),
    "fp8-block-w8a8": QuantLayout("fp8", 64, 64, group_k=32, group_n=32, activation="fp8-group", activation_group=32),
}


@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("layout_name", sorted(LAYER_LAYOUTS))
def test_pallas_kernel_under_shard_map_matches_one_device(layout_name, kind):
    """The Pallas quantized matmul (interpret mode) on each device's slices, against the kernel
    on the whole weight: column slices exactly, row-parallel partial sums to float32 rounding."""
    layout = LAYER_LAYOUTS[layout_name]
    weight = QuantizedWeight(layout, random_case(layout, seed=3).arrays).to_device()
    x = jnp.asarray(np.random.default_rng(4).normal(size=(5, 64)), jnp.float32)  # [T, K]
    whole = quantized_linear(x, weight, backend="pallas_interpret")  # [T, N]
    parallel = ParallelLinear(make_mesh(2), kind, TP_AXIS)
    arrays = dict(weight.to_device(parallel.shardings(layout).__getitem__).arrays)
    split = jax.jit(lambda x, arrays: quantized_linear(x, QuantizedWeight(layout, arrays), backend="pallas_interpret",
                                                       parallel=parallel))(x, arrays)
    if kind == "column":
        np.testing.assert_array_equal(np.asarray(split), np.asarray(whole))
    else:
        np.testing.assert_allclose(np.asarray(split), np.asarray(whole), rtol=1e-5, atol=1e-5)


def test_a_layer_that_cannot_be_split_is_a_clear_error(checkpoint_factory, tmp_path_factory):
    directory = write_packed_checkpoint(checkpoint_factory(FLOAT), str(tmp_path_factory.mktemp("g32")),
                                        PackedSpec("gptq", 4, 32))[0]
    with pytest.raises(ValueError, match=r"in_features per device \(16\) must be a multiple of the group size \(32\)"):
        LLM(directory, tensor_parallel_size=8, **ENGINE_ARGS)
