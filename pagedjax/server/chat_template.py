"""Chat messages through the tokenizer's chat template: the conversation as the template sees it, then token ids.

As in vLLM: text content parts are joined with newlines; an assistant message's `tool_calls`
reach the template with their `arguments` parsed into objects (what Hugging Face templates
expect; a missing or empty one becomes `{}`); a tool message keeps its `tool_call_id`; the
request's `tools` are passed as `tools=`; `chat_template_kwargs` become template variables.
Runs on the tokenizer threads (`ServerState.offload`).
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Sequence

from pagedjax.server.errors import bad_request
from pagedjax.server.protocol import ChatMessage


def message_text(message: ChatMessage, index: int) -> str:
    """A message's content as text (text parts joined by newlines); 400 for other part types."""
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


def _template_tool_call(call, where: str) -> dict[str, Any]:
    arguments = call.function.arguments
    if isinstance(arguments, str) and arguments.strip():
        try:
            arguments = json.loads(arguments)
        except ValueError:
            raise bad_request(f"{where}.function.arguments is not valid JSON", param="messages") from None
    elif not arguments:
        arguments = {}
    out = {"type": "function", "function": {"name": call.function.name, "arguments": arguments}}
    if call.id is not None:
        out["id"] = call.id
    return out


def conversation(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the chat template's `messages` variable."""
    out = []
    for i, message in enumerate(messages):
        item: dict[str, Any] = {"role": message.role, "content": message_text(message, i)}
        if message.name is not None:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [_template_tool_call(call, f"messages[{i}].tool_calls[{j}]")
                                  for j, call in enumerate(message.tool_calls)]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.reasoning_content is not None:
            item["reasoning_content"] = message.reasoning_content
        out.append(item)
    return out


def _template_variables(tokenizer, chat_template_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """`chat_template_kwargs`, refusing names that are `apply_chat_template`'s own arguments."""
    if not chat_template_kwargs:
        return {}
    reserved = set(inspect.signature(tokenizer.apply_chat_template).parameters) | {"messages", "tools"}
    clash = sorted(k for k in chat_template_kwargs if k in reserved or not k.isidentifier())
    if clash:
        raise bad_request(f"chat_template_kwargs may not set {', '.join(map(repr, clash[:5]))}",
                          param="chat_template_kwargs")
    return dict(chat_template_kwargs)


def render_chat_ids(tokenizer, messages: Sequence[ChatMessage], *, tools: list[dict] | None = None,
                    add_generation_prompt: bool = True, chat_template_kwargs: dict[str, Any] | None = None,
                    add_special_tokens: bool = False) -> list[int]:
    """Token ids of the conversation through the tokenizer's chat template (`add_special_tokens`:
    the tokenizer's own special tokens too, on top of what the template writes)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise bad_request("this model's tokenizer has no chat template: use /v1/completions", param="messages")
    variables = _template_variables(tokenizer, chat_template_kwargs)
    messages = conversation(messages)
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools or None,
                                             add_generation_prompt=add_generation_prompt, tokenize=False,
                                             **variables)
    except Exception as error:  # jinja errors: the template refused these messages
        raise bad_request(f"the chat template could not render these messages: {error}"[:2000],
                          param="messages") from None
    return [int(t) for t in tokenizer(text, add_special_tokens=add_special_tokens).input_ids]
