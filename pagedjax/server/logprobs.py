"""Engine logprobs (`{token_id: Logprob}` per position) in OpenAI's two formats."""

from __future__ import annotations

import math
from typing import Sequence

from pagedjax.outputs import Logprob
from pagedjax.server.protocol import CompletionLogprobs, TokenLogprob, TopLogprob

_FLOOR = -9999.0  # JSON has no -inf; vLLM sends this instead


def _finite(value: float) -> float:
    return _FLOOR if math.isnan(value) or value < _FLOOR else float(value)


def token_text(tokenizer, token_id: int, logprob: Logprob | None = None) -> str:
    """A token's text as the engine decoded it (or decoded now)."""
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return tokenizer.decode([token_id]) if tokenizer is not None else f"token_id:{token_id}"


def completion_logprobs(token_ids: Sequence[int], entries: Sequence[dict | None], tokenizer,
                        text_offset: int) -> tuple[CompletionLogprobs, int]:
    """Legacy completions logprobs of `token_ids` (an entry may be None: the first prompt token);
    returns them and the text offset after the last token."""
    out = CompletionLogprobs()
    for token_id, entry in zip(token_ids, entries):
        chosen = entry.get(token_id) if entry else None
        text = token_text(tokenizer, token_id, chosen)
        out.tokens.append(text)
        out.text_offset.append(text_offset)
        text_offset += len(text)
        if entry is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(_finite(chosen.logprob) if chosen is not None else None)
        ranked = sorted(entry.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else math.inf)
        out.top_logprobs.append({token_text(tokenizer, tid, lp): _finite(lp.logprob) for tid, lp in ranked})
    return out, text_offset


def chat_logprobs(token_ids: Sequence[int], entries: Sequence[dict], tokenizer,
                  top_logprobs: int) -> list[TokenLogprob]:
    """Chat logprobs: per token, its logprob, UTF-8 bytes and the `top_logprobs` most likely tokens."""
    out = []
    for token_id, entry in zip(token_ids, entries):
        chosen = entry.get(token_id)
        text = token_text(tokenizer, token_id, chosen)
        top = sorted(((tid, lp) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= top_logprobs),
                     key=lambda kv: kv[1].rank)
        out.append(TokenLogprob(
            token=text, logprob=_finite(chosen.logprob) if chosen is not None else _FLOOR,
            bytes=list(text.encode("utf-8")),
            top_logprobs=[TopLogprob(token=(t := token_text(tokenizer, tid, lp)), logprob=_finite(lp.logprob),
                                     bytes=list(t.encode("utf-8"))) for tid, lp in top[:top_logprobs]]))
    return out
