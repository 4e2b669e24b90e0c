"""`ChatOptions`: how the server reads chat outputs (vLLM's `--enable-auto-tool-choice`,
`--tool-call-parser`, `--reasoning-parser`). No web imports, so the command line can build it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChatOptions:
    """Tool calling and reasoning options of the chat endpoint.

    enable_auto_tool_choice: serve `tool_choice="auto"` (and requests with tools but no
    tool_choice), detecting calls in the output with `tool_call_parser`; without it such
    requests are a 400, as in vLLM. tool_call_parser: the output format of the model's tool
    calls (`pagedjax.tool_parsers.TOOL_PARSERS`: hermes, qwen3, llama3_json, llama4_json,
    mistral). reasoning_parser: splits `<think>` reasoning off into `reasoning_content`
    (`pagedjax.reasoning.REASONING_PARSERS`: deepseek_r1, qwen3).
    """

    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None

    def __post_init__(self):
        from pagedjax.reasoning import get_reasoning_parser
        from pagedjax.tool_parsers import get_tool_parser

        if not isinstance(self.enable_auto_tool_choice, bool):
            raise ValueError(f"enable_auto_tool_choice must be a boolean, got {self.enable_auto_tool_choice!r}")
        if self.tool_call_parser is not None:
            get_tool_parser(self.tool_call_parser)  # ValueError listing the names
        if self.reasoning_parser is not None:
            get_reasoning_parser(self.reasoning_parser)
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("enable_auto_tool_choice requires tool_call_parser (--tool-call-parser NAME)")

    @property
    def auto_tools(self) -> bool:
        """Whether `tool_choice="auto"` is served."""
        return self.enable_auto_tool_choice and self.tool_call_parser is not None
