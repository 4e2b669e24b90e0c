"""Tensor parallelism of the families whose attention needs the paged kernels' `AttentionSpec`
support (ALiBi slopes split by head under shard_map, soft-caps, windows): run by
`test_tensor_parallel.py` in a subprocess with 8 CPU devices, like `_tp_checks.py`.

NOTE: these pass once the kernels branch (AttentionSpec in the paged kernels and in
PagedKVCache's shard_map) and the engine's per-layer window handling are merged.
"""

from __future__ import annotations

import pytest

from tests.parallel.tp_workload import run_workload

CASES = [("bloom", 2), ("mpt", 2), ("falcon-rw-alibi", 4), ("gemma2", 2)]


@pytest.mark.parametrize("variant,tp", CASES)
def test_greedy_matches_single_device(variant, tp, checkpoint_factory):
    model = checkpoint_factory(variant)
    assert run_workload(model, tp)[0] == run_workload(model, 1)[0]
