"""From request fields to engine inputs: prompts as token ids, `max_tokens`, `SamplingParams`."""

from __future__ import annotations

from pagedjax.sampling_params import SamplingParams
from pagedjax.server.errors import bad_request, from_value_error
from pagedjax.server.protocol import SamplingFields


def resolve_max_tokens(requested: int | None, prompt_len: int, max_model_len: int, *, param: str = "prompt") -> int:
    """`max_tokens` bounded by the room the context leaves (vLLM's behaviour): None means all of
    it. A prompt longer than the context is a 400 naming both lengths (and `param`)."""
    if prompt_len > max_model_len:
        raise bad_request(f"the prompt ({prompt_len} tokens) is longer than max_model_len ({max_model_len}); "
                          f"shorten it", param=param, code="context_length_exceeded")
    room = max(1, max_model_len - prompt_len)
    if requested is None:
        return room
    return min(requested, room) if requested >= 1 else requested  # < 1: SamplingParams says why


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def check_unsupported(request: SamplingFields) -> None:
    """400s for OpenAI fields this server does not implement, rather than ignoring them silently."""
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
    if request.stream and request.best_of is not None and request.best_of > request.n:
        raise bad_request("best_of > n is not supported with stream=true (completions are ranked at the end)",
                          param="best_of")


def sampling_params(request: SamplingFields, *, max_tokens: int, logprobs: int | None,
                    prompt_logprobs: int | None = None, structured_outputs=None, controls: dict | None = None,
                    skip_special_tokens: bool | None = None) -> SamplingParams:
    """The engine's `SamplingParams` (vLLM's defaults where a field is absent); its ValueErrors
    become 400s naming the field.

    structured_outputs: the request's constraint (`request_structured_outputs`); controls: its
    `logit_controls`; skip_special_tokens: overrides the request's (a tool parser reading
    special-token markers needs them in the text)."""
    if skip_special_tokens is None:
        skip_special_tokens = request.skip_special_tokens
    try:
        return SamplingParams(
            n=request.n, best_of=request.best_of,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=0 if request.top_k is None else request.top_k,
            min_p=0.0 if request.min_p is None else request.min_p,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
            seed=request.seed, stop=stop_strings(request.stop), stop_token_ids=tuple(request.stop_token_ids or ()),
            include_stop_str_in_output=request.include_stop_str_in_output, ignore_eos=request.ignore_eos,
            max_tokens=max_tokens, min_tokens=request.min_tokens, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, skip_special_tokens=skip_special_tokens,
            spaces_between_special_tokens=request.spaces_between_special_tokens,
            structured_outputs=structured_outputs, **(controls or {}))
    except ValueError as error:
        raise from_value_error(error) from None


def prompt_items(prompt, limits, param: str = "prompt") -> list:
    """A completions `prompt` (text, texts, token ids, lists of token ids; or embeddings' `input`)
    as a list of prompts, each a string or a list of token ids; 400 for an empty one or too many."""
    if isinstance(prompt, str):
        items = [prompt]
    elif not prompt:
        raise bad_request("the prompt is empty", param=param)
    elif isinstance(prompt[0], int):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if len(items) > limits.max_prompts_per_request:
        raise bad_request(f"{len(items)} prompts in one request; this server takes at most "
                          f"{limits.max_prompts_per_request} (--max-prompts-per-request)", param=param)
    if any(not item for item in items):
        raise bad_request("the prompt is empty", param=param)
    return items


def check_token_ids(ids: list[int], vocab_size: int, param: str = "prompt") -> None:
    """400 unless every id is in the vocabulary (checked before anything decodes them)."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the vocabulary [0, {vocab_size})", param=param)


def tokenize_prompts(items: list, tokenizer, vocab_size: int) -> list[tuple[str | None, list[int]]]:
    """(text, token ids) per prompt; text is tokenized as the engine would (special tokens added).
    Runs on the tokenizer threads (ServerState.offload)."""
    out = []
    for item in items:
        if isinstance(item, str):
            if tokenizer is None:
                raise bad_request("this model has no tokenizer: send the prompt as token ids", param="prompt")
            out.append((item, list(tokenizer(item).input_ids)))
        else:
            check_token_ids(item, vocab_size)
            out.append((None, list(item)))
        if not out[-1][1]:
            raise bad_request("the prompt is empty (0 tokens)", param="prompt")
    return out


def check_limits(request: SamplingFields, limits) -> None:
    """400s for stop strings beyond the server's limits."""
    stops = stop_strings(request.stop)
    if len(stops) > limits.max_stop_strings:
        raise bad_request(f"{len(stops)} stop strings; at most {limits.max_stop_strings} (--max-stop-strings)",
                          param="stop")
    long = next((s for s in stops if len(s) > limits.max_stop_string_chars), None)
    if long is not None:
        raise bad_request(f"a stop string of {len(long)} characters; at most {limits.max_stop_string_chars} "
                          f"(--max-stop-string-chars)", param="stop")
