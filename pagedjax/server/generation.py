"""`Generation`: the engine requests behind one HTTP request (one per prompt).

They are added together, their outputs read from one sink in arrival order, and aborted
together when the client disconnects, when one of them fails, or when the handler is done.
A watcher task listens for the client's disconnect (ASGI `http.disconnect`) for the whole
life of the generation, so a client that leaves while its request waits, runs, or streams
frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import collections
import time

from starlette.requests import Request

from pagedjax.outputs import RequestOutput
from pagedjax.sampling_params import SamplingParams
from pagedjax.server.async_engine import AsyncEngine, EngineRequestError

_DISCONNECTED = object()


class ClientDisconnected(Exception):
    """The HTTP client went away; its requests were aborted."""


class Generation:
    """Adds prompts to the engine under ids `{base_id}-{i}` and yields their outputs.

    Args:
        engine: the running `AsyncEngine`.
        base_id: a unique id (the response id).
        http_request: the client's request, watched for disconnects (None: not watched).
    """

    def __init__(self, engine: AsyncEngine, base_id: str, http_request: Request | None = None):
        self._engine = engine
        self._base_id = base_id
        self._http_request = http_request
        self._sink: asyncio.Queue = asyncio.Queue()
        self._ready: collections.deque = collections.deque()  # taken from the sink, not yet returned
        self._index: dict[str, int] = {}  # request id -> prompt index
        self._unfinished: set[str] = set()
        self._watcher: asyncio.Task | None = None
        self._disconnected = False
        self.arrival_time = time.perf_counter()

    async def start(self, requests: list[tuple[list[int], SamplingParams]]) -> None:
        """Adds one engine request per (prompt token ids, params). Raises the engine's ValueError
        (nothing is left queued then)."""
        try:
            for i, (token_ids, params) in enumerate(requests):
                request_id = f"{self._base_id}-{i}"
                self._index[request_id] = i
                self._unfinished.add(request_id)
                await self._engine.add_request(request_id, token_ids, params, self._sink,
                                               arrival_time=self.arrival_time)
        except BaseException:
            self.close()
            raise
        if self._http_request is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_disconnect())

    async def next(self) -> tuple[int, RequestOutput] | None:
        """The next output as (prompt index, cumulative RequestOutput); None once all finished.
        Raises `EngineRequestError` if the engine failed, `ClientDisconnected` if the client left.

        A consumer that fell behind (a slow client) gets the latest output of each request,
        not every step's: outputs are cumulative, so nothing is lost, and chunks merge."""
        while True:
            if self._disconnected:
                raise ClientDisconnected()
            if not self._unfinished:
                return None
            if not self._ready:
                self._ready.append(await self._sink.get())
                while not self._sink.empty():
                    self._ready.append(self._sink.get_nowait())
                self._keep_latest_outputs()
            request_id, item = self._ready.popleft()
            if item is _DISCONNECTED or request_id not in self._unfinished:
                continue
            if isinstance(item, BaseException):
                self.close()
                raise item if isinstance(item, EngineRequestError) else EngineRequestError(str(item))
            if item.finished:
                self._unfinished.discard(request_id)
            return self._index[request_id], item

    def _keep_latest_outputs(self) -> None:
        latest = {rid: i for i, (rid, item) in enumerate(self._ready) if isinstance(item, RequestOutput)}
        self._ready = collections.deque(
            (rid, item) for i, (rid, item) in enumerate(self._ready)
            if not isinstance(item, RequestOutput) or latest[rid] == i)

    def close(self) -> None:
        """Aborts whatever has not finished and stops watching the client. Idempotent."""
        for request_id in self._unfinished:
            self._engine.abort(request_id)
        self._unfinished.clear()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()

    async def _watch_disconnect(self) -> None:
        receive = self._http_request.receive
        while (await receive())["type"] != "http.disconnect":
            pass
        if self._unfinished:
            self._disconnected = True
            self._watcher = None
            self.close()
            self._sink.put_nowait((None, _DISCONNECTED))  # wakes a waiting next()
