"""Request and response models of `/tokenize`, `/detokenize` (vLLM's shapes) and `/v1/embeddings` (OpenAI's)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr

from pagedjax.server.protocol import ChatMessage, ChatTool, Prompt, RequestModel, UsageInfo


class TokenizeRequest(RequestModel):
    """`POST /tokenize`: a text `prompt`, or chat `messages` through the chat template (vLLM's two forms).

    add_special_tokens: the tokenizer's special tokens around the text (default: on for a
    prompt, off for messages, whose template writes its own). return_token_strs: also return
    each token as the tokenizer's string.
    """

    model: str | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool | None = True
    add_special_tokens: bool | None = None
    return_token_strs: bool | None = False
    tools: list[ChatTool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestModel):
    """`POST /detokenize`: token ids -> text."""

    model: str | None = None
    tokens: list[StrictInt]


class DetokenizeResponse(BaseModel):
    prompt: str


class EmbeddingRequest(RequestModel):
    """`POST /v1/embeddings`: a string, strings, token ids or lists of token ids.

    encoding_format: "float" (a list of numbers) or "base64" (little-endian float32 bytes).
    dimensions: must equal the model's hidden size when given (no truncation).
    add_special_tokens: vLLM's field; the tokenizer's special tokens around each text.
    """

    model: str | None = None
    input: Prompt
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = None
    user: str | None = None
    add_special_tokens: bool | None = True


class EmbeddingData(BaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[EmbeddingData]
    usage: UsageInfo
