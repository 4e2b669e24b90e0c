"""`POST /v1/chat/completions`: the tokenizer's chat template, then one engine request.

Structured outputs and logit controls as in completions; tools, tool_choice and reasoning
through `pagedjax.server.tools` (the output of each choice is read by its own
`ChatOutputParser`, whole or streamed).
"""

from __future__ import annotations

import time
import uuid

from fastapi.responses import Response
from starlette.requests import Request

from pagedjax.sampling_params import SamplingParams
from pagedjax.server.async_engine import EngineRequestError
from pagedjax.server.chat_template import render_chat_ids
from pagedjax.server.constraints import logit_controls, request_structured_outputs
from pagedjax.server.errors import bad_request, server_error
from pagedjax.server.generation import ClientDisconnected, Generation
from pagedjax.server.logprobs import chat_logprobs
from pagedjax.server.protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk,
                                      ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs, DeltaMessage)
from pagedjax.server.sampling import check_limits, check_unsupported, resolve_max_tokens, sampling_params, stop_strings
from pagedjax.server.state import ServerState
from pagedjax.server.streaming import DONE, StreamCursor, sse
from pagedjax.tool_parsers import merge_deltas
from pagedjax.server.tools import (ToolPlan, finish_reason, needs_special_tokens, output_parser_factory, plan_tools,
                                   response_tool_calls, stream_delta)


def chat_prompt_ids(tokenizer, body: ChatCompletionRequest, tools: tuple[dict, ...] = ()) -> list[int]:
    """The conversation through the tokenizer's chat template (`add_generation_prompt`, the
    request's tools and `chat_template_kwargs`), as token ids."""
    return render_chat_ids(tokenizer, body.messages, tools=list(tools) or None,
                           add_generation_prompt=body.add_generation_prompt,
                           chat_template_kwargs=body.chat_template_kwargs)


def _check_chat_fields(body: ChatCompletionRequest) -> None:
    check_unsupported(body)
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
    plan = plan_tools(body, state.chat_options, state.limits)
    constraint, source = request_structured_outputs(body, plan.schema)
    controls = logit_controls(body, state.vocab_size, state.limits)
    await state.check_grammar(constraint, source)
    prompt_ids = await state.offload(chat_prompt_ids, state.tokenizer, body, plan.tools)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = resolve_max_tokens(requested, len(prompt_ids), state.max_model_len, param="messages")
    params = sampling_params(body, max_tokens=max_tokens, logprobs=(body.top_logprobs or 0) if body.logprobs else None,
                             structured_outputs=constraint, controls=controls,
                             skip_special_tokens=False if needs_special_tokens(plan, state.chat_options) else None)
    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    view = _ChatView(state, body, model, response_id, prompt_ids, plan, constrained=constraint is not None)
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
                 prompt_ids: list[int], plan: ToolPlan, constrained: bool):
        self.state, self.body, self.model, self.id, self.prompt_ids = state, body, model, response_id, prompt_ids
        self.plan = plan
        self.new_parser = output_parser_factory(plan, state.chat_options, constrained)
        self.created = int(time.time())
        self.stops = stop_strings(body.stop)

    def _logprobs(self, token_ids, entries) -> ChatLogprobs | None:
        if not self.body.logprobs:
            return None
        return ChatLogprobs(content=chat_logprobs(token_ids, entries or [], self.state.tokenizer,
                                                  self.body.top_logprobs or 0))

    def _message(self, text: str) -> tuple[AssistantMessage, bool]:
        """The message of a whole output, and whether it called tools."""
        if self.new_parser is None:
            return AssistantMessage(content=text), False
        parsed = self.new_parser().parse(text)
        calls = response_tool_calls(self.plan, parsed)
        return AssistantMessage(content=parsed.content, reasoning_content=parsed.reasoning_content,
                                reasoning=parsed.reasoning_content, tool_calls=calls), calls is not None

    def response(self, final) -> ChatCompletionResponse:
        choices = []
        for c in final.outputs:
            message, called = self._message(c.text)
            choices.append(ChatChoice(index=c.index, message=message, logprobs=self._logprobs(c.token_ids, c.logprobs),
                                      finish_reason=finish_reason(self.plan, called, c.finish_reason),
                                      stop_reason=c.stop_reason,
                                      token_ids=list(c.token_ids) if self.body.return_token_ids else None))
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
        parsers: dict[int, object] = {}
        called: set[int] = set()
        completion_tokens = 0
        try:
            for index in range(self.body.n):
                yield self._chunk(ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""),
                                                  logprobs=None, finish_reason=None))
            item = first
            while item is not None:
                _, output = item
                for completion in output.outputs:
                    i = completion.index
                    delta = cursors.setdefault(i, StreamCursor()).advance(completion, self.stops)
                    if delta is None:
                        continue
                    completion_tokens += len(delta.token_ids)
                    message = self._delta(parsers, i, delta.text, final=delta.finish_reason is not None)
                    if message.tool_calls:
                        called.add(i)
                    logprobs = self._logprobs(delta.token_ids, delta.logprobs)
                    if (message == DeltaMessage() and delta.finish_reason is None and logprobs is None
                            and not self.body.return_token_ids):
                        continue  # a parser holds the text back (a marker may be starting)
                    yield self._chunk(ChatChunkChoice(
                        index=i, delta=message, logprobs=logprobs,
                        finish_reason=finish_reason(self.plan, i in called, delta.finish_reason),
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

    def _delta(self, parsers: dict, index: int, text: str, final: bool) -> DeltaMessage:
        """The `delta` for new text of choice `index` (read by its parser when it has one)."""
        if self.new_parser is None:
            return DeltaMessage(content=text)
        parser = parsers.setdefault(index, self.new_parser())
        parsed = parser.feed(text) if text else None
        if final:
            parsed = merge_deltas([parsed, parser.finish()])
        return stream_delta(self.plan, parsed)
