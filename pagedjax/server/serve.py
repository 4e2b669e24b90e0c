"""Running the server: `serve` (the `pagedjax serve` command, in the foreground, SIGINT/SIGTERM
end it gracefully) and `ServerThread` (uvicorn on a background thread, for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
import sys
import threading
import time

import jax
import uvicorn
from fastapi import FastAPI

from pagedjax.config import EngineConfig
from pagedjax.default_model import DEFAULT_MODEL_NAME
from pagedjax.server.app import build_app
from pagedjax.server.async_engine import AsyncEngine
from pagedjax.server.chat_options import ChatOptions
from pagedjax.server.metrics import ServerMetrics
from pagedjax.server.limits import ServerLimits


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """HTTP-side options of the server.

    host/port: where to listen (127.0.0.1 unless told otherwise; port 0 = any free port).
    api_key: when set, every route but /health requires `Authorization: Bearer <api_key>`.
    served_model_names: names clients use in `model` (default: the model argument).
    log_level: uvicorn's log level. shutdown_timeout: seconds in-flight requests get to finish
    after SIGINT/SIGTERM before they are cancelled.
    limits: the bounds of what one request may ask (`ServerLimits`).
    limit_concurrency: connections (and requests) at once before uvicorn answers 503 (None: no limit).
    timeout_keep_alive: seconds an idle keep-alive connection stays open.
    max_header_bytes: the most bytes of a request line and headers (h11's incomplete-event limit).
    chat: tool calling and reasoning of the chat endpoint (`ChatOptions`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_names: tuple[str, ...] = ()
    log_level: str = "info"
    shutdown_timeout: float = 5.0
    limits: ServerLimits = ServerLimits()
    limit_concurrency: int | None = 1024
    timeout_keep_alive: float = 5.0
    max_header_bytes: int = 64 * 1024
    chat: ChatOptions = ChatOptions()

    def uvicorn_settings(self) -> dict:
        return dict(timeout_graceful_shutdown=self.shutdown_timeout, limit_concurrency=self.limit_concurrency,
                    timeout_keep_alive=self.timeout_keep_alive, h11_max_incomplete_event_size=self.max_header_bytes)


def build_server_app(engine_config: EngineConfig, options: ServerOptions, on_ready=None,
                     precompile: bool = False) -> FastAPI:
    """Loads the engine and returns the app serving it (its thread starts with the app).
    `precompile` compiles every plain-sampling step bucket first, so that no request waits
    for a compile later (slow on a cold compilation cache)."""
    from pagedjax.engine import LLMEngine

    names = list(options.served_model_names) or [engine_config.model or DEFAULT_MODEL_NAME]
    engine = LLMEngine(engine_config)
    if precompile:  # NOTE: before the engine thread exists, so this thread may use the engine
        start = time.perf_counter()

        def progress(done: int, total: int) -> None:
            print(f"\rpagedjax: compiling step shapes {done}/{total} ({time.perf_counter() - start:.1f} s)",
                  end="" if done < total else "\n", file=sys.stderr, flush=True)

        count = engine.runner.steps.precompile(progress=progress)
        print(f"pagedjax: compiled {count} step shapes in {time.perf_counter() - start:.1f} s "
              f"(persistent compilation cache: {jax.config.jax_compilation_cache_dir})", file=sys.stderr, flush=True)
    metrics = ServerMetrics(names[0])
    return build_app(AsyncEngine(engine, metrics), model_names=names, model_root=engine_config.model or names[0],
                     api_key=options.api_key, metrics=metrics, on_ready=on_ready, limits=options.limits,
                     chat_options=options.chat)


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (bound before the model loads, so a busy port fails fast)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGINT/SIGTERM end it with a clean exit (status 0) after the
    graceful shutdown, instead of being raised again once it is over."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(engine_config: EngineConfig, options: ServerOptions, precompile: bool = False) -> int:
    """Serves until SIGINT/SIGTERM; returns the exit status. Prints
    `pagedjax: serving <names> on http://HOST:PORT` to stdout once requests are accepted."""
    sock = bind_socket(options.host, options.port)
    names = list(options.served_model_names) or [engine_config.model or DEFAULT_MODEL_NAME]

    def ready():
        print(f"pagedjax: serving {', '.join(names)} on {_url(sock)}", flush=True)

    try:
        app = build_server_app(engine_config, options, on_ready=ready, precompile=precompile)
        config = uvicorn.Config(app, log_level=options.log_level, **options.uvicorn_settings())
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()
    print("pagedjax: server stopped", file=sys.stderr, flush=True)
    return 0


class ServerThread:
    """Runs `app` under uvicorn on a background thread (its own event loop), on 127.0.0.1 and a
    free port by default. Use as a context manager, or `start()` / `stop()`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 shutdown_timeout: float = 5.0):
        self._sock = bind_socket(host, port)
        self.url = _url(self._sock)
        self.app = app
        # NOTE: log_config=None: uvicorn's logging.config.dictConfig would close the host
        # process' existing log handlers (pytest's, an application's).
        config = uvicorn.Config(app, log_config=None, log_level=log_level,
                                timeout_graceful_shutdown=shutdown_timeout, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="pagedjax-uvicorn", daemon=True)

    def start(self, timeout: float = 120.0) -> "ServerThread":
        """Starts serving; returns once requests are accepted (RuntimeError after `timeout` s)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during start-up (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {timeout:.0f} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown (in-flight requests get `shutdown_timeout`), then joins the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
