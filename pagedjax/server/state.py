"""`ServerState`: what the handlers share (engine, tokenizer, names, limits), kept on `app.state`."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from pagedjax.outputs import RequestOutput
from pagedjax.sampling_params import SamplingParams
from pagedjax.server.async_engine import AsyncEngine, EngineRequestError
from pagedjax.server.chat_options import ChatOptions
from pagedjax.server.errors import APIError, bad_request, from_value_error, server_error
from pagedjax.server.generation import Generation
from pagedjax.server.limits import ServerLimits
from pagedjax.server.metrics import ServerMetrics
from pagedjax.server.protocol import UsageInfo


class ServerState:
    """The server's shared state and the request plumbing common to every endpoint.

    Args:
        engine: the `AsyncEngine` (its thread is started by the app's lifespan).
        tokenizer: a tokenizer for the event-loop side (a copy of the engine's; None for
            tokenizer-less models), used for prompts, chat templates and echo.
        model_names: names the server answers to (the first is the default).
        model_root: the model's path or hub id (reported by /v1/models).
        api_key: required as `Authorization: Bearer KEY` on /v1/* when set.
        metrics: the Prometheus metrics.
        limits: the bounds of one request. chat_options: tool calling and reasoning.
    """

    def __init__(self, engine: AsyncEngine, tokenizer, model_names: list[str], model_root: str,
                 api_key: str | None, metrics: ServerMetrics, limits: ServerLimits | None = None,
                 chat_options: ChatOptions | None = None):
        if not model_names:
            raise ValueError("at least one served model name is required")
        self.engine, self.tokenizer, self.model_names = engine, tokenizer, list(model_names)
        self.model_root, self.api_key, self.metrics = model_root, api_key, metrics
        self.limits = limits or ServerLimits()
        self.chat_options = chat_options or ChatOptions()
        self._grammar_compiler = None  # the engine's, fetched from the engine thread once
        self._embedder = None  # built on the engine thread at the first /v1/embeddings
        self.max_model_len = engine.max_model_len
        self.vocab_size = engine.vocab_size
        self.hidden_size = engine.hidden_size
        self._executor = ThreadPoolExecutor(self.limits.tokenizer_workers, thread_name_prefix="pagedjax-tokenizer")

    async def offload(self, fn, *args, **kwargs):
        """Runs `fn(*args, **kwargs)` (tokenization, chat templates, decoding) on the tokenizer
        threads, so the event loop keeps answering (/health, other streams) meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def check_grammar(self, params, param: str) -> None:
        """Compiles a structured-output constraint on the tokenizer threads (into the engine's
        grammar cache, so the engine thread then finds it compiled); a 400 naming `param` when
        it does not compile."""
        if params is None:
            return
        if self._grammar_compiler is None:
            try:
                self._grammar_compiler = await self.engine.call(lambda engine: engine.constraints.compiler)
            except ValueError as error:  # no tokenizer
                raise bad_request(str(error), param=param) from None
        try:
            await self.offload(self._grammar_compiler.compile, params)
        except ValueError as error:
            raise bad_request(f"{param}: {error}"[:2000], param=param) from None

    async def embed(self, prompts: list[list[int]]):
        """float32 `[N, hidden]` embeddings of token-id prompts, computed on the engine thread."""
        from pagedjax.embeddings import Embedder

        budget = self.limits.max_embedding_batch_tokens

        def run(engine):
            if self._embedder is None:  # NOTE: only the engine thread sets and reads it
                self._embedder = Embedder.for_engine(engine, budget)
            return self._embedder.embed(prompts)

        return await self.engine.call(run)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def check_model(self, name: str | None) -> str:
        """The served name a request asked for (default: the first); 404 for any other."""
        if name is None:
            return self.model_names[0]
        if name not in self.model_names:
            raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return name

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True) if self.tokenizer is not None else ""

    @staticmethod
    def usage(prompt_ids: list[list[int]], completion_tokens: int) -> UsageInfo:
        prompt_tokens = sum(len(ids) for ids in prompt_ids)
        return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens)

    async def start(self, generation: Generation, requests: list[tuple[list[int], SamplingParams]]) -> None:
        """Queues the requests; the engine's ValueError is a 400, its failure a 500."""
        try:
            await generation.start(requests)
        except ValueError as error:
            raise from_value_error(error) from None
        except EngineRequestError as error:
            raise server_error(str(error)) from None

    @staticmethod
    async def collect(generation: Generation, count: int) -> list[RequestOutput]:
        """The final outputs of all `count` prompts (a 500 if the engine failed on one)."""
        finals: list[RequestOutput | None] = [None] * count
        try:
            while (item := await generation.next()) is not None:
                prompt, output = item
                if output.finished:
                    finals[prompt] = output
        except EngineRequestError as error:
            raise server_error(str(error)) from None
        return finals

    @staticmethod
    async def stream(generation: Generation, events: Callable[[Generation, tuple[int, RequestOutput]],
                                                              AsyncIterator[str]]) -> StreamingResponse:
        """An SSE response. The first output is awaited before the response starts, so that a
        request the engine fails at once still gets a plain 500."""
        try:
            first = await generation.next()
        except EngineRequestError as error:
            generation.close()
            raise server_error(str(error)) from None
        except BaseException:
            generation.close()
            raise

        async def body():
            try:
                async for event in events(generation, first):
                    yield event
            finally:
                generation.close()

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
