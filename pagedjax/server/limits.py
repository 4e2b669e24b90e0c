"""`ServerLimits`: the bounds of what one request may ask (server options; no web imports here,
so the command line can build its options without the serve extra)."""

from __future__ import annotations

import dataclasses

from pagedjax.config import option


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Bounds of what one request may ask, and of the server's own waits (server options)."""

    max_request_body_bytes: int = option(32 * 1024 * 1024, "the largest request body in bytes (413 beyond, "
                                                            "checked while reading, before parsing)")
    max_prompts_per_request: int = option(256, "prompts in one /v1/completions request")
    max_stop_strings: int = option(16, "stop strings per request")
    max_stop_string_chars: int = option(1024, "characters of each stop string (and of each bad word)")
    max_logit_bias_entries: int = option(1024, "logit_bias entries per request")
    max_bad_words: int = option(128, "bad_words per request")
    max_tools: int = option(128, "tools per chat request")
    max_embedding_batch_tokens: int = option(2048, "padded tokens of one embedding forward pass (a bucket of "
                                                  "power-of-two lengths times a power-of-two batch)")
    tokenizer_workers: int = option(2, "threads that tokenize, apply chat templates and decode off the event loop")
    health_stall_seconds: float = option(120.0, "/health answers 503 once the engine has had work but finished "
                                                "no step for this long")

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be > 0, got {getattr(self, field.name)!r}")
