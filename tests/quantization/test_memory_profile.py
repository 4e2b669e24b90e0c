"""The memory profile hands the bytes a quantized checkpoint saves to the KV pool.

CPU devices report no memory, so the runner's `device_memory_stats` is replaced by a device
that reports a fixed `bytes_limit` and, as a GPU allocator does, the bytes of every live array
in `bytes_in_use`. The same tiny Llama, as a GPTQ int4 checkpoint and as the float checkpoint of
its dequantized weights, then gets its KV pool from one budget (`gpu_memory_utilization` of that
limit), each model built after the other is gone.

The engine runs the Pallas backend (interpret mode here), as on a GPU: the quantized matmul
dequantizes tile by tile, so the step's temporaries stay as they were. (On the jnp path XLA:CPU
keeps every layer's dequantized weight among the step's temporaries, as it keeps any per-layer
weight cast, which takes back what this model saves; CPU devices are not profiled, so that
path never sizes a pool.)
"""

from __future__ import annotations

import gc

import jax
import pytest

import pagedjax.runner
from pagedjax import LLM
from tests.quantization.packed_checkpoints import PackedSpec, write_packed_checkpoint

BACKEND = "pallas_interpret"
UTILIZATION = 0.5
ROOM = 6 << 20  # bytes of the budget above what is live before a model is built
ENGINE_ARGS = dict(attention_backend=BACKEND, dtype="float32", max_model_len=256, max_num_seqs=64, max_num_batched_tokens=64, block_size=16,
                   gpu_memory_utilization=UTILIZATION)


def live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def profiled(model_dir: str, limit: int) -> dict:
    llm = LLM(model_dir, **ENGINE_ARGS)
    runner = llm.engine.runner
    result = dict(runner.profile, num_blocks=llm.engine.num_kv_blocks, param_bytes=llm.stats()["param_bytes"],
                  max_useful=runner.max_blocks_per_seq * runner.max_num_seqs)
    del llm, runner
    gc.collect()
    return result


@pytest.fixture
def reported_memory(monkeypatch):
    """Makes every device report `limit` bytes (set after the baseline is known) and its live bytes."""
    gc.collect()
    limit = int((live_bytes() + ROOM) / UTILIZATION)
    monkeypatch.setattr(pagedjax.runner, "device_memory_stats",
                        lambda devices: [dict(bytes_limit=limit, bytes_in_use=live_bytes()) for _ in devices])
    return limit


def test_a_quantized_checkpoint_gets_more_kv_blocks_from_the_same_budget(checkpoint_factory, tmp_path,
                                                                        reported_memory):
    quant_dir, float_dir = write_packed_checkpoint(checkpoint_factory("llama"), str(tmp_path), PackedSpec("gptq", 4, 32))
    limit = reported_memory
    f, q = profiled(float_dir, limit), profiled(quant_dir, limit)
    saved = f["param_bytes"] - q["param_bytes"]
    assert saved > 0.4 * f["param_bytes"]  # the linear layers (about half of this tiny model) at ~1/7 of float32
    # what is in use when the pool is sized differs by exactly the parameters' bytes
    assert f["bytes_in_use"] - q["bytes_in_use"] == saved
    per_block = f["bytes_per_block"]
    assert q["bytes_per_block"] == per_block and f["bytes_limit"] == q["bytes_limit"] == limit
    for p in (f, q):  # the budget, less what is in use and the step's temporaries, in blocks
        assert p["num_blocks"] == (limit * UTILIZATION - p["bytes_in_use"] - p["step_temp_bytes"]) // per_block
        assert 0 < p["num_blocks"] < p["max_useful"]  # the budget decides, not the cap
    gained = q["num_blocks"] - f["num_blocks"]
    temp_delta = q["step_temp_bytes"] - f["step_temp_bytes"]
    assert abs(temp_delta) < per_block
    assert abs(gained * per_block - (saved - temp_delta)) < per_block
    assert gained >= saved // per_block - 1 >= 20
