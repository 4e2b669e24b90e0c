"""Multi-host tensor parallelism on one machine: two processes with 2 CPU devices each join one
`jax.distributed` run on localhost and serve a 4-way tensor-parallel model together."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.parallel.test_tensor_parallel import REPO, subprocess_env
from tests.parallel.tp_workload import run_workload

WORKER = os.path.join("tests", "parallel", "_multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_serve_one_tensor_parallel_model(checkpoint_factory, tmp_path):
    model = checkpoint_factory("llama-8q2kv")
    port = _free_port()
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), "2", str(port), model, "4", str(outs[i])],
                              cwd=REPO, env=subprocess_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    shown = "\n".join(f"--- process {i} (rc {p.returncode}) ---\n{log[-8000:]}" for i, (p, log) in
                      enumerate(zip(procs, logs)))
    assert all(p.returncode == 0 for p in procs), shown
    results = [json.loads(o.read_text()) for o in outs]
    expected = run_workload(model, 1, max_tokens=8)[0]
    for i, r in enumerate(results):
        assert r["process_index"] == i and r["process_count"] == 2, shown
        assert r["num_devices"] == 4 and r["num_local_devices"] == 2, shown
        assert r["mesh_processes"] == [0, 1]  # the mesh spans both processes
        assert r["q_proj_local_shards"] == [[64, 32], [64, 32]]  # 2 of the 4 shards of [64, 128] here
        assert r["outputs"] == expected, shown
