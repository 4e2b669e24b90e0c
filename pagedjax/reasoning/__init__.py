"""Reasoning parsers (vLLM's `--reasoning-parser`): split an output into reasoning_content and content.

    parser = get_reasoning_parser("deepseek_r1")()          # one per generated sequence
    reasoning, content = parser.extract_reasoning(text)     # whole output
    delta = parser.feed(delta_text); ...; parser.finish()   # streaming
"""

from __future__ import annotations

from pagedjax.reasoning.think import DeepSeekR1ReasoningParser, Qwen3ReasoningParser, ThinkReasoningParser

REASONING_PARSERS: dict[str, type[ThinkReasoningParser]] = {
    cls.name: cls for cls in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}


def get_reasoning_parser(name: str) -> type[ThinkReasoningParser]:
    """The reasoning-parser class registered as `name` (ValueError listing the names otherwise)."""
    try:
        return REASONING_PARSERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"reasoning_parser must be one of {sorted(REASONING_PARSERS)}, got {name!r}") from None


__all__ = ["REASONING_PARSERS", "get_reasoning_parser", "ThinkReasoningParser", "DeepSeekR1ReasoningParser",
           "Qwen3ReasoningParser"]
