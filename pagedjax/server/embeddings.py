"""`POST /v1/embeddings`: OpenAI's embeddings of the loaded decoder model (`pagedjax.embeddings`:
last-token pooling of the final hidden state, L2-normalised, as vLLM serves decoder models).

Texts are tokenized on the tokenizer threads; the forward passes run on the engine thread
between steps (`ServerState.embed`); `encoding_format="base64"` sends little-endian float32
bytes, as OpenAI does (the openai client asks for it by default and decodes it).
"""

from __future__ import annotations

import base64
import uuid

import numpy as np
from fastapi.responses import Response

from pagedjax.server.errors import bad_request
from pagedjax.server.sampling import check_token_ids, prompt_items
from pagedjax.server.state import ServerState
from pagedjax.server.tokens_protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse


def _token_ids(items: list, tokenizer, vocab_size: int, add_special_tokens: bool) -> list[list[int]]:
    """Each input as token ids (texts tokenized); runs on the tokenizer threads."""
    out = []
    for item in items:
        if isinstance(item, str):
            if tokenizer is None:
                raise bad_request("this model has no tokenizer: send the input as token ids", param="input")
            out.append([int(t) for t in tokenizer(item, add_special_tokens=add_special_tokens).input_ids])
        else:
            check_token_ids(item, vocab_size, param="input")
            out.append(list(item))
        if not out[-1]:
            raise bad_request(f"input {len(out) - 1} is empty (0 tokens)", param="input")
    return out


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def create_embeddings(state: ServerState, body: EmbeddingRequest) -> Response:
    """Validates, tokenizes, embeds and answers with OpenAI's list of embeddings and usage."""
    model = state.check_model(body.model)
    hidden_size = state.hidden_size
    if body.dimensions is not None and body.dimensions != hidden_size:
        raise bad_request(f"dimensions must be this model's embedding size ({hidden_size}), got {body.dimensions}; "
                          f"this server does not truncate embeddings", param="dimensions")
    items = prompt_items(body.input, state.limits, param="input")
    prompts = await state.offload(_token_ids, items, state.tokenizer, state.vocab_size, body.add_special_tokens)
    long = next((i for i, ids in enumerate(prompts) if len(ids) > state.max_model_len), None)
    if long is not None:
        raise bad_request(f"input {long} has {len(prompts[long])} tokens, more than max_model_len "
                          f"({state.max_model_len})", param="input", code="context_length_exceeded")
    vectors = await state.embed(prompts)  # f32[N, hidden]
    data = [EmbeddingData(index=i, embedding=_encode(v, body.encoding_format)) for i, v in enumerate(vectors)]
    out = EmbeddingResponse(id=f"embd-{uuid.uuid4().hex}", model=model, data=data,
                            usage=state.usage(prompts, 0))
    return Response(out.model_dump_json(), media_type="application/json")
