"""`pagedjax serve` as a user runs it: a subprocess on a free port, stopped by SIGTERM / SIGINT."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

START_TIMEOUT_S = 240
SERVE_OPTIONS = ["--port", "0", "--max-model-len", "256", "--num-kv-blocks", "32", "--max-num-seqs", "8",
                 "--max-num-batched-tokens", "128", "--log-level", "warning", "--no-precompile"]


class Served:
    """A `pagedjax serve` subprocess; `url` once it printed its address."""

    def __init__(self, *args: str, env: dict | None = None):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "pagedjax", "serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        self.url = self._wait_for_address()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line)

    def _wait_for_address(self) -> str:
        try:
            line = self.lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"no address printed within {START_TIMEOUT_S} s: {''.join(self.stderr)}") from None
        match = re.match(r"pagedjax: serving (.+) on (http://127\.0\.0\.1:\d+)$", line.strip())
        assert match, line
        return match.group(2)

    def stop(self, sig: int, timeout_s: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def served(llama_dir):
    servers = []

    def start(*args):
        servers.append(Served(llama_dir, *SERVE_OPTIONS, *args))
        return servers[-1]

    yield start
    for s in servers:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(30)


def test_sigterm_lets_the_request_in_flight_finish(served):
    # a generous graceful-shutdown window: on a cold compilation cache the stream compiles as it goes
    server = served("--served-model-name", "tiny", "--api-key", "secret", "--shutdown-timeout", "180")
    headers = {"Authorization": "Bearer secret"}
    # long enough (~0.5 s or more on CPU) to be still streaming when the shutdown starts
    body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 240, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=server.url, trust_env=False, timeout=120) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/v1/models").status_code == 401
        assert [m["id"] for m in http.get("/v1/models", headers=headers).json()["data"]] == ["tiny"]
        with http.stream("POST", "/v1/completions", json=body, headers=headers) as res:
            assert res.status_code == 200
            events = res.iter_lines()
            first = next(line for line in events if line.startswith("data:"))
            server.proc.send_signal(signal.SIGTERM)  # graceful: the stream goes on to the end
            sent = time.monotonic()
            rest = [line for line in events if line.startswith("data:")]
            streamed_after_signal = time.monotonic() - sent
    assert json.loads(first[5:])["choices"][0]["index"] == 0
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][5:])["usage"]["completion_tokens"] == 240
    assert server.proc.wait(60) == 0
    print(f"streamed for {streamed_after_signal:.2f} s after SIGTERM")
    stderr = "".join(server.stderr)
    assert "pagedjax: server stopped" in stderr and "Traceback" not in stderr


def test_sigint_stops_an_idle_server(served):
    server = served()
    with httpx.Client(base_url=server.url, trust_env=False, timeout=120) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]  # no --api-key: open
        res = http.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 3})
        assert res.status_code == 200 and res.json()["usage"]["completion_tokens"] >= 1
    assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in "".join(server.stderr)


def test_busy_port_fails_fast_with_a_clear_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "pagedjax", "serve", str(tmp_path / "no-model-needed"),
                              "--port", str(port)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 2
    assert f"pagedjax: error: cannot listen on 127.0.0.1:{port}" in res.stderr and "Traceback" not in res.stderr


def test_precompile_cold_and_warm_start_then_sigterm_stops_within_seconds(llama_dir, tmp_path):
    """`pagedjax serve` compiles every step shape before it reports healthy (cold: a fresh
    compilation cache; warm: the persistent cache of the first start), and SIGTERM stops it within
    a few seconds even with long streams in flight."""
    env = {"PAGEDJAX_CACHE": str(tmp_path / "cache")}
    options = ["--port", "0", "--max-model-len", "64", "--num-kv-blocks", "32", "--max-num-seqs", "8",
               "--max-num-batched-tokens", "64", "--log-level", "warning", "--shutdown-timeout", "1"]
    times = {}
    for start in ("cold", "warm"):
        began = time.monotonic()
        server = Served(llama_dir, *options, env=env)
        times[start] = time.monotonic() - began
        stderr = "".join(server.stderr)
        compiled = int(re.search(r"compiled (\d+) step shapes", stderr).group(1))
        with httpx.Client(base_url=server.url, trust_env=False, timeout=120) as http:
            assert http.get("/health").status_code == 200
            before = http.get("/debug/stats").json()["num_compiles"]
            body = {"model": llama_dir, "prompt": "The quick brown fox", "max_tokens": 56, "temperature": 0.0,
                    "ignore_eos": True, "stream": True}
            streams = [http.stream("POST", "/v1/completions", json=body) for _ in range(12)]
            responses = [s.__enter__() for s in streams]
            next(line for line in responses[0].iter_lines() if line.startswith("data:"))
            assert http.get("/debug/stats").json()["num_compiles"] == before  # nothing compiled while serving
            sent = time.monotonic()
            code = server.stop(signal.SIGTERM, timeout_s=30)
            stopped_after = time.monotonic() - sent
            for s in streams:
                try:
                    s.__exit__(None, None, None)
                except httpx.HTTPError:
                    pass
        assert code == 0 and stopped_after < 20, (code, stopped_after)  # ~4 s idle; a loaded 2-core box needs room
        print(f"{start} start: {times[start]:.1f} s to healthy ({compiled} shapes compiled); "
              f"stopped {stopped_after:.1f} s after SIGTERM")
        if start == "cold":
            assert compiled >= 3
    assert times["warm"] < times["cold"], times
