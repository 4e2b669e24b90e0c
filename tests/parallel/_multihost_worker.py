"""One process of a two-process (two "hosts") tensor-parallel run on localhost.

    python tests/parallel/_multihost_worker.py PROCESS_ID NUM_PROCESSES PORT MODEL_DIR TP OUT_JSON

Each process has 2 CPU devices; after `jax.distributed.initialize`, `jax.devices()` lists all
processes' devices and the engine runs unchanged: the mesh spans both processes, collectives
go through gloo. Writes what it saw and the greedy completions to OUT_JSON.
"""

from __future__ import annotations

import json
import os
import sys


def main(process_id: int, num_processes: int, port: int, model_dir: str, tp: int, out_json: str) -> None:
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                               process_id=process_id, initialization_timeout=120)
    from tests.parallel.tp_workload import run_workload

    outputs, llm = run_workload(model_dir, tp, max_tokens=8)
    q = llm.engine.runner.params["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    with open(out_json, "w") as f:
        json.dump(dict(process_index=jax.process_index(), process_count=jax.process_count(),
                       num_devices=len(jax.devices()), num_local_devices=len(jax.local_devices()),
                       mesh_processes=sorted({d.process_index for d in llm.engine.mesh.devices.flat}),
                       q_proj_local_shards=[list(s.data.shape) for s in q.addressable_shards],
                       outputs=outputs), f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    pid, nproc, port, model, tp, out = sys.argv[1:7]
    main(int(pid), int(nproc), int(port), model, int(tp), out)
