"""`POST /v1/completions`: one engine request per prompt, choices indexed `prompt * n + i`; structured
outputs and logit controls (`pagedjax.server.constraints`) apply to every prompt."""

from __future__ import annotations

import time
import uuid

from fastapi.responses import Response
from starlette.requests import Request

from pagedjax.server.async_engine import EngineRequestError
from pagedjax.server.constraints import logit_controls, request_structured_outputs
from pagedjax.server.errors import bad_request, server_error
from pagedjax.server.generation import ClientDisconnected, Generation
from pagedjax.server.logprobs import completion_logprobs
from pagedjax.server.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from pagedjax.server.sampling import (check_limits, check_unsupported, prompt_items, resolve_max_tokens,
                                      sampling_params, stop_strings, tokenize_prompts)
from pagedjax.server.state import ServerState
from pagedjax.server.streaming import DONE, StreamCursor, sse


async def create_completion(state: ServerState, body: CompletionRequest, http_request: Request) -> Response:
    """Validates, queues the prompts and answers with a JSON response or an SSE stream."""
    model = state.check_model(body.model)
    check_unsupported(body)
    check_limits(body, state.limits)
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    items = prompt_items(body.prompt, state.limits)
    constraint, source = request_structured_outputs(body)
    controls = logit_controls(body, state.vocab_size, state.limits)
    await state.check_grammar(constraint, source)
    prompts = await state.offload(tokenize_prompts, items, state.tokenizer, state.vocab_size)
    prompt_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
    requests = [(ids, sampling_params(body, logprobs=body.logprobs, prompt_logprobs=prompt_logprobs,
                                      max_tokens=resolve_max_tokens(body.max_tokens, len(ids), state.max_model_len),
                                      structured_outputs=constraint, controls=controls))
                for _, ids in prompts]
    echoes = [(text if text is not None else await state.offload(state.decode, ids)) if body.echo else ""
              for text, ids in prompts]
    response_id = f"cmpl-{uuid.uuid4().hex}"
    view = _CompletionView(state, body, model, response_id, [ids for _, ids in prompts], echoes)
    generation = Generation(state.engine, response_id, http_request)
    await state.start(generation, requests)
    if body.stream:
        return await state.stream(generation, view.events)
    try:
        finals = await state.collect(generation, len(prompts))
    finally:
        generation.close()
    return Response(view.response(finals).model_dump_json(), media_type="application/json")


class _CompletionView:
    """Builds the response (or the stream of chunks) of one completions request."""

    def __init__(self, state: ServerState, body: CompletionRequest, model: str, response_id: str,
                 prompt_ids: list[list[int]], echoes: list[str]):
        self.state, self.body, self.model, self.id = state, body, model, response_id
        self.prompt_ids, self.echoes = prompt_ids, echoes
        self.created = int(time.time())
        self.stops = stop_strings(body.stop)

    def _logprobs(self, token_ids, entries, offset: int) -> tuple[CompletionLogprobs | None, int]:
        if self.body.logprobs is None:
            return None, offset
        return completion_logprobs(token_ids, entries, self.state.tokenizer, offset)

    def _echo_logprobs(self, prompt: int, output) -> tuple[CompletionLogprobs | None, int]:
        """Logprobs of the echoed prompt tokens (the engine's prompt logprobs), and the offset after them."""
        if self.body.logprobs is None or not self.body.echo:
            return None, len(self.echoes[prompt])
        entries = output.prompt_logprobs or [None] * len(self.prompt_ids[prompt])
        return completion_logprobs(self.prompt_ids[prompt], entries, self.state.tokenizer, 0)

    def _choice(self, prompt: int, index: int, text: str, token_ids, logprobs, finish_reason, stop_reason):
        return CompletionChoice(
            index=prompt * self.body.n + index, text=text, logprobs=logprobs, finish_reason=finish_reason,
            stop_reason=stop_reason, token_ids=list(token_ids) if self.body.return_token_ids else None,
            prompt_token_ids=self.prompt_ids[prompt] if self.body.return_token_ids else None)

    def response(self, finals: list) -> CompletionResponse:
        choices, completion_tokens = [], 0
        for prompt, output in enumerate(finals):
            for completion in output.outputs:
                echo_lp, offset = self._echo_logprobs(prompt, output)
                logprobs, _ = self._logprobs(completion.token_ids, completion.logprobs or [], offset)
                if echo_lp is not None and logprobs is not None:
                    logprobs = _concat(echo_lp, logprobs)
                choices.append(self._choice(prompt, completion.index, self.echoes[prompt] + completion.text,
                                            completion.token_ids, logprobs, completion.finish_reason,
                                            completion.stop_reason))
                completion_tokens += len(completion.token_ids)
        return CompletionResponse(id=self.id, created=self.created, model=self.model, choices=choices,
                                  usage=self.state.usage(self.prompt_ids, completion_tokens))

    async def events(self, generation: Generation, first):
        """The SSE events: one chunk per choice that progressed, usage if asked, then [DONE]."""
        cursors: dict[tuple[int, int], StreamCursor] = {}
        offsets: dict[tuple[int, int], int] = {}
        completion_tokens = 0
        item = first
        try:
            while item is not None:
                prompt, output = item
                for completion in output.outputs:
                    key = (prompt, completion.index)
                    cursor = cursors.setdefault(key, StreamCursor())
                    first_chunk = key not in offsets
                    delta = cursor.advance(completion, self.stops)
                    if delta is None:
                        continue
                    completion_tokens += len(delta.token_ids)
                    text, logprobs = delta.text, None
                    if first_chunk:
                        echo_lp, offsets[key] = self._echo_logprobs(prompt, output)
                        text = self.echoes[prompt] + text
                    logprobs, offsets[key] = self._logprobs(delta.token_ids, delta.logprobs or [],
                                                            offsets[key])
                    if first_chunk and echo_lp is not None and logprobs is not None:
                        logprobs = _concat(echo_lp, logprobs)
                    chunk = CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[
                        self._choice(prompt, completion.index, text, delta.token_ids, logprobs,
                                     delta.finish_reason, delta.stop_reason)])
                    yield sse(chunk.model_dump_json(exclude={"usage"}))
                item = await generation.next()
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                usage = self.state.usage(self.prompt_ids, completion_tokens)
                yield sse(CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[],
                                             usage=usage).model_dump_json())
        except EngineRequestError as error:
            yield sse(server_error(str(error)).body())
        except ClientDisconnected:
            return
        yield DONE


def _concat(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(text_offset=a.text_offset + b.text_offset, tokens=a.tokens + b.tokens,
                              token_logprobs=a.token_logprobs + b.token_logprobs,
                              top_logprobs=a.top_logprobs + b.top_logprobs)
