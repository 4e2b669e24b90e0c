"""`POST /v1/chat/completions`: the tokenizer's chat template, then one engine request."""

from __future__ import annotations

import time
import uuid

from fastapi.responses import Response
from starlette.requests import Request

from pagedjax.sampling_params import SamplingParams
from pagedjax.server.async_engine import EngineRequestError
from pagedjax.server.errors import bad_request, server_error
from pagedjax.server.generation import ClientDisconnected, Generation
from pagedjax.server.logprobs import chat_logprobs
from pagedjax.server.protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk,
                                      ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs, ChatMessage,
                                      DeltaMessage)
from pagedjax.server.sampling import check_limits, check_unsupported, resolve_max_tokens, sampling_params, stop_strings
from pagedjax.server.state import ServerState
from pagedjax.server.streaming import DONE, StreamCursor, sse


def _message_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise bad_request(f"only text content parts are supported, got {part.type!r}",
                              param=f"messages[{index}].content")
        parts.append(part.text)
    return "\n".join(parts)


def chat_prompt_ids(tokenizer, body: ChatCompletionRequest) -> list[int]:
    """The conversation through the tokenizer's chat template (`add_generation_prompt`), as token ids."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise bad_request("this model's tokenizer has no chat template: use /v1/completions", param="messages")
    conversation = [{"role": m.role, "content": _message_text(m, i)} for i, m in enumerate(body.messages)]
    try:
        encoded = tokenizer.apply_chat_template(conversation, add_generation_prompt=body.add_generation_prompt,
                                                tokenize=True)
    except Exception as error:  # jinja errors: the template refused these messages
        raise bad_request(f"the chat template could not render these messages: {error}", param="messages") from None
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [int(t) for t in ids]


def _check_chat_fields(body: ChatCompletionRequest) -> None:
    check_unsupported(body)
    if body.tools:
        raise bad_request("tools are not supported", param="tools")
    if body.tool_choice not in (None, "none"):
        raise bad_request("tool_choice is not supported", param="tool_choice")
    if body.response_format is not None and body.response_format.type != "text":
        raise bad_request("only response_format {'type': 'text'} is supported", param="response_format")
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= SamplingParams.MAX_LOGPROBS:
        raise bad_request(f"top_logprobs must be in [0, {SamplingParams.MAX_LOGPROBS}], got {body.top_logprobs}",
                          param="top_logprobs")


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest, http_request: Request) -> Response:
    """Validates, applies the chat template, queues the prompt and answers with JSON or SSE."""
    model = state.check_model(body.model)
    _check_chat_fields(body)
    check_limits(body, state.limits)
    prompt_ids = await state.offload(chat_prompt_ids, state.tokenizer, body)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = resolve_max_tokens(requested, len(prompt_ids), state.max_model_len, param="messages")
    params = sampling_params(body, max_tokens=max_tokens,
                             logprobs=(body.top_logprobs or 0) if body.logprobs else None)
    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    view = _ChatView(state, body, model, response_id, prompt_ids)
    generation = Generation(state.engine, response_id, http_request)
    await state.start(generation, [(prompt_ids, params)])
    if body.stream:
        return await state.stream(generation, view.events)
    try:
        (final,) = await state.collect(generation, 1)
    finally:
        generation.close()
    return Response(view.response(final).model_dump_json(), media_type="application/json")


class _ChatView:
    """Builds the response (or the stream of chunks) of one chat request."""

    def __init__(self, state: ServerState, body: ChatCompletionRequest, model: str, response_id: str,
                 prompt_ids: list[int]):
        self.state, self.body, self.model, self.id, self.prompt_ids = state, body, model, response_id, prompt_ids
        self.created = int(time.time())
        self.stops = stop_strings(body.stop)

    def _logprobs(self, token_ids, entries) -> ChatLogprobs | None:
        if not self.body.logprobs:
            return None
        return ChatLogprobs(content=chat_logprobs(token_ids, entries or [], self.state.tokenizer,
                                                  self.body.top_logprobs or 0))

    def response(self, final) -> ChatCompletionResponse:
        choices = [ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                              logprobs=self._logprobs(c.token_ids, c.logprobs), finish_reason=c.finish_reason,
                              stop_reason=c.stop_reason,
                              token_ids=list(c.token_ids) if self.body.return_token_ids else None)
                   for c in final.outputs]
        return ChatCompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices,
            usage=self.state.usage([self.prompt_ids], sum(len(c.token_ids) for c in final.outputs)),
            prompt_token_ids=self.prompt_ids if self.body.return_token_ids else None)

    def _chunk(self, choice: ChatChunkChoice) -> str:
        return sse(ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                       choices=[choice]).model_dump_json(exclude={"usage"}))

    async def events(self, generation: Generation, first):
        """The SSE events: the role first, then one chunk per choice that progressed (the last one
        with its finish_reason), usage if asked, then [DONE]."""
        cursors: dict[int, StreamCursor] = {}
        completion_tokens = 0
        try:
            for index in range(self.body.n):
                yield self._chunk(ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""),
                                                  logprobs=None, finish_reason=None))
            item = first
            while item is not None:
                _, output = item
                for completion in output.outputs:
                    delta = cursors.setdefault(completion.index, StreamCursor()).advance(completion, self.stops)
                    if delta is None:
                        continue
                    completion_tokens += len(delta.token_ids)
                    yield self._chunk(ChatChunkChoice(
                        index=completion.index, delta=DeltaMessage(content=delta.text),
                        logprobs=self._logprobs(delta.token_ids, delta.logprobs), finish_reason=delta.finish_reason,
                        stop_reason=delta.stop_reason,
                        token_ids=delta.token_ids if self.body.return_token_ids else None))
                item = await generation.next()
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                usage = self.state.usage([self.prompt_ids], completion_tokens)
                yield sse(ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[],
                                              usage=usage).model_dump_json())
        except EngineRequestError as error:
            yield sse(server_error(str(error)).body())
        except ClientDisconnected:
            return
        yield DONE
