"""`AsyncEngine`: the engine loop on a dedicated thread, beside an asyncio server.

`LLMEngine` is not thread-safe, so one thread owns it: it takes commands (add, abort, call)
from a thread-safe queue, runs `engine.step()` while there is work and sleeps on the queue
when there is none. Outputs go back to the event loop with `loop.call_soon_threadsafe`, one
call per step, into the asyncio queue ("sink") each request was added with. Items in a sink
are `(request_id, RequestOutput)` (cumulative text and tokens, as the engine streams them) or
`(request_id, EngineRequestError)`.

A request whose `add_request` raises fails alone (ValueError: the caller's input). If a
step fails, the engine recomputes its requests (each alone first); only a request that fails
alone is aborted (`EngineStepError`) and failed with `EngineRequestError`. Any other error of
`engine.step()` fails every request in flight, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable

from pagedjax.outputs import RequestOutput
from pagedjax.sampling_params import SamplingParams

logger = logging.getLogger("pagedjax.server")


class EngineRequestError(RuntimeError):
    """The engine failed while serving a request (the server answers 500 and keeps serving)."""


@dataclasses.dataclass(eq=False)
class _Add:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    accepted: asyncio.Future
    arrival_time: float


@dataclasses.dataclass(eq=False)
class _Call:
    fn: Callable[[Any], Any]
    loop: asyncio.AbstractEventLoop
    result: asyncio.Future


@dataclasses.dataclass(eq=False)
class _Tracked:
    """Engine-thread bookkeeping of one request: where its outputs go, and its timings."""

    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    arrival_time: float
    prompt_len: int
    num_tokens: int = 0  # generated tokens seen so far (all completions)
    first_token_time: float | None = None
    last_token_time: float | None = None


_STOP = object()


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the awaiting handler was cancelled (client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _put_all(items: list[tuple[asyncio.Queue, tuple]]) -> None:
    for sink, item in items:
        sink.put_nowait(item)


class AsyncEngine:
    """Owns an `LLMEngine` and its thread; asyncio code adds, aborts and reads requests.

    Args:
        engine: the engine (from now on touched only by the engine thread).
        metrics: a `ServerMetrics` to record token counts and latencies into, or None.
    """

    def __init__(self, engine, metrics=None):
        self._engine = engine
        self._metrics = metrics
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._tracked: dict[str, _Tracked] = {}  # engine thread only
        self._thread: threading.Thread | None = None
        self.max_model_len: int = engine.max_model_len
        self.vocab_size: int = engine.model_config.vocab_size
        self.hidden_size: int = engine.model_config.hidden_size
        # Heartbeat: when the engine thread last finished a step or went idle (monotonic seconds).
        self._last_progress = time.monotonic()
        self._busy = False  # True while the engine thread has requests to step
        self.tokenizer = engine.tokenizer  # NOTE: the engine thread's; other threads use a copy
        self.stats_snapshot: dict = dict(engine.stats())  # replaced (never mutated) by the engine thread
        self.fatal_error: BaseException | None = None

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Starts the engine thread (once)."""
        if self._thread is not None:
            raise RuntimeError("the engine thread is already started")
        self._thread = threading.Thread(target=self._run, name="pagedjax-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Fails the requests still in flight, stops the engine thread and waits for it."""
        if self._thread is None:
            return
        self._commands.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the engine thread did not stop within %.0f s", timeout)

    def stalled_seconds(self) -> float:
        """Seconds the engine thread has had work without finishing a step (0 while idle)."""
        return time.monotonic() - self._last_progress if self._busy else 0.0

    @property
    def is_running(self) -> bool:
        """True while the engine thread is alive and has not died of an unexpected error."""
        return self._thread is not None and self._thread.is_alive() and self.fatal_error is None

    # ----------------------------------------------------------------------- asyncio API

    async def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                          sink: asyncio.Queue, *, prompt: str | None = None,
                          arrival_time: float | None = None) -> None:
        """Queues a request on the engine; returns once the engine accepted it. Raises what
        `LLMEngine.add_request` raised (ValueError for invalid input). Outputs arrive in `sink`."""
        if not self.is_running:
            raise EngineRequestError("the engine is not running")
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()
        self._commands.put(_Add(request_id, prompt, list(prompt_token_ids), params, sink, loop, accepted,
                                arrival_time if arrival_time is not None else time.perf_counter()))
        await accepted

    def abort(self, request_id: str) -> None:
        """Aborts a request (frees its KV blocks); no-op if it already finished. Never blocks."""
        self._commands.put(("abort", request_id))

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        """Runs `fn(engine)` on the engine thread (between steps) and returns its result."""
        if not self.is_running:
            raise EngineRequestError("the engine is not running")
        loop = asyncio.get_running_loop()
        result = loop.create_future()
        self._commands.put(_Call(fn, loop, result))
        return await result

    async def stats(self) -> dict:
        """`engine.stats()` read on the engine thread, plus `num_server_requests` (in flight) and
        the model's `vocab_size`."""
        return await self.call(lambda engine: {**engine.stats(), "num_server_requests": len(self._tracked),
                                               "vocab_size": engine.model_config.vocab_size})

    # ----------------------------------------------------------------------- engine thread

    def _run(self) -> None:
        engine = self._engine
        try:
            while True:
                # Sleep on the queue when idle; otherwise take what is there and step.
                if not engine.has_unfinished_requests():
                    self._busy = False
                command = self._commands.get() if not engine.has_unfinished_requests() else self._next_command()
                self._last_progress = time.monotonic()  # (woken up: an idle wait is no stall)
                while command is not None:
                    if command is _STOP:
                        self._fail_all("the server is shutting down")
                        return
                    self._handle(command)
                    command = self._next_command()
                self._busy = engine.has_unfinished_requests()
                if self._busy:
                    self._step()
                self._last_progress = time.monotonic()
                self._publish_stats()
        except BaseException as error:  # a bug in this loop itself: fail everyone, report unhealthy
            logger.exception("the engine thread died")
            self.fatal_error = error
            self._fail_all(f"the engine thread died: {error!r}")

    def _next_command(self):
        try:
            return self._commands.get_nowait()
        except queue.Empty:
            return None

    def _handle(self, command) -> None:
        if isinstance(command, _Add):
            try:
                self._engine.add_request(command.request_id, command.prompt, command.params,
                                         prompt_token_ids=command.prompt_token_ids, stream=True)
            except BaseException as error:  # fails this request only
                if not isinstance(error, ValueError):
                    logger.exception("add_request(%s) failed", command.request_id)
                    error = EngineRequestError(f"the engine could not add the request: {error!r}")
                self._send(command.loop, _resolve, command.accepted, None, error)
                return
            self._tracked[command.request_id] = _Tracked(command.sink, command.loop, command.arrival_time,
                                                         len(command.prompt_token_ids))
            self._send(command.loop, _resolve, command.accepted, None)
        elif isinstance(command, _Call):
            try:
                value = command.fn(self._engine)
            except BaseException as error:
                self._send(command.loop, _resolve, command.result, None, error)
            else:
                self._send(command.loop, _resolve, command.result, value)
        else:  # ("abort", request_id)
            _, request_id = command
            if self._tracked.pop(request_id, None) is not None:
                self._engine.abort_request(request_id)
                if self._metrics is not None:
                    self._metrics.request_finished("abort")

    def _step(self) -> None:
        from pagedjax.engine import EngineStepError

        try:
            outputs = self._engine.step()
        except EngineStepError as error:  # a request failed a step alone: it alone fails
            logger.error("%s", error)
            self._fail(error.aborted_request_ids, f"the engine failed while serving this request: {error}")
            return
        except Exception as error:
            logger.exception("engine step failed; failing the %d requests in flight", len(self._tracked))
            self._recover_from_failed_step()
            self._fail_all(f"the engine failed while serving this request: {error!r}")
            return
        now = time.perf_counter()
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        for output in outputs:
            tracked = self._tracked.get(output.request_id)
            if tracked is None:  # aborted meanwhile
                continue
            self._observe(tracked, output, now)
            if output.finished:
                del self._tracked[output.request_id]
            deliveries.setdefault(tracked.loop, []).append((tracked.sink, (output.request_id, output)))
        for loop, items in deliveries.items():
            self._send(loop, _put_all, items)

    def _recover_from_failed_step(self) -> None:
        """After `step()` raised: make sure every request in flight is aborted. (`LLMEngine.step`
        already aborts everything and resets itself when it raises `EngineStepError`; this also
        covers any other exception.)"""
        engine = self._engine
        for request_id in list(self._tracked):
            try:
                engine.abort_request(request_id)
            except Exception:
                logger.exception("abort_request(%s) failed during recovery", request_id)

    def _fail_all(self, message: str) -> None:
        self._fail(list(self._tracked), message)

    def _fail(self, request_ids: list[str], message: str) -> None:
        """Aborts these requests and delivers `EngineRequestError(message)` to their sinks."""
        tracked = {rid: self._tracked.pop(rid) for rid in request_ids if rid in self._tracked}
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        for request_id, t in tracked.items():
            try:
                self._engine.abort_request(request_id)
            except Exception:
                logger.exception("abort_request(%s) failed", request_id)
            if self._metrics is not None:
                self._metrics.request_finished("error")
            deliveries.setdefault(t.loop, []).append((t.sink, (request_id, EngineRequestError(message))))
        for loop, items in deliveries.items():
            self._send(loop, _put_all, items)
        self._publish_stats()

    def _observe(self, tracked: _Tracked, output: RequestOutput, now: float) -> None:
        total = sum(len(c.token_ids) for c in output.outputs)
        new = total - tracked.num_tokens
        metrics = self._metrics
        if new > 0:
            if metrics is not None:
                if tracked.first_token_time is None:
                    metrics.first_token(now - tracked.arrival_time, tracked.prompt_len)
                else:
                    metrics.inter_token(now - tracked.last_token_time)
                metrics.generated(new)
            if tracked.first_token_time is None:
                tracked.first_token_time = now
            tracked.last_token_time = now
            tracked.num_tokens = total
        if output.finished and metrics is not None:
            reason = output.outputs[0].finish_reason if output.outputs else None
            metrics.request_finished(reason or "stop", e2e_seconds=now - tracked.arrival_time)

    def _publish_stats(self) -> None:
        stats = dict(self._engine.stats())
        stats["num_server_requests"] = len(self._tracked)
        self.stats_snapshot = stats

    @staticmethod
    def _send(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass
