"""`POST /tokenize` and `POST /detokenize` (vLLM's endpoints): the server's tokenizer, off the event loop."""

from __future__ import annotations

from fastapi.responses import Response

from pagedjax.server.chat_template import render_chat_ids
from pagedjax.server.errors import bad_request
from pagedjax.server.sampling import check_token_ids
from pagedjax.server.state import ServerState
from pagedjax.server.tokens_protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from pagedjax.tool_parsers import validate_tools


def _need_tokenizer(state: ServerState, param: str):
    if state.tokenizer is None:
        raise bad_request("this model has no tokenizer", param=param)
    return state.tokenizer


def _tokenize(tokenizer, body: TokenizeRequest, tools: tuple[dict, ...]) -> tuple[list[int], list[str] | None]:
    """Token ids (and their strings when asked); runs on the tokenizer threads."""
    if body.prompt is not None:
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = [int(t) for t in tokenizer(body.prompt, add_special_tokens=add_special).input_ids]
    else:
        ids = render_chat_ids(tokenizer, body.messages, tools=list(tools) or None,
                              add_generation_prompt=body.add_generation_prompt,
                              chat_template_kwargs=body.chat_template_kwargs,
                              add_special_tokens=bool(body.add_special_tokens))
    strs = [str(s) for s in tokenizer.convert_ids_to_tokens(ids)] if body.return_token_strs else None
    return ids, strs


async def tokenize(state: ServerState, body: TokenizeRequest) -> Response:
    """`{count, max_model_len, tokens, token_strs}` of a prompt or of chat messages."""
    state.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of prompt and messages", param="prompt")
    tokenizer = _need_tokenizer(state, "prompt" if body.prompt is not None else "messages")
    tools = ()
    if body.tools is not None:
        if len(body.tools) > state.limits.max_tools:
            raise bad_request(f"{len(body.tools)} tools; at most {state.limits.max_tools} (--max-tools)",
                              param="tools")
        try:
            tools = validate_tools([tool.as_dict() for tool in body.tools])
        except ValueError as error:
            raise bad_request(str(error), param="tools") from None
    ids, strs = await state.offload(_tokenize, tokenizer, body, tools)
    out = TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)
    return Response(out.model_dump_json(), media_type="application/json")


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids)


async def detokenize(state: ServerState, body: DetokenizeRequest) -> Response:
    """`{prompt}`: the text of token ids (special tokens kept, as vLLM decodes them)."""
    state.check_model(body.model)
    tokenizer = _need_tokenizer(state, "tokens")
    check_token_ids(body.tokens, state.vocab_size, param="tokens")
    text = await state.offload(_decode, tokenizer, list(body.tokens))
    return Response(DetokenizeResponse(prompt=text).model_dump_json(), media_type="application/json")
