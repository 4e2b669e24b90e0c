"""Server fixtures: one real uvicorn server (background thread, free 127.0.0.1 port) over the tiny
Llama checkpoint, the official `openai` clients pointed at it, and an offline `LLM` with the same
engine options as the reference for every output the server gives."""

from __future__ import annotations

import httpx
import openai
import pytest

from pagedjax.config import EngineConfig
from tests.server.helpers import (ALIAS, API_KEY, AUTH, ENGINE_OPTIONS, MODEL, REQUEST_TIMEOUT_S, TOOL_CHAT_TEMPLATE,
                                  TOOL_SERVER_OPTIONS)


@pytest.fixture(scope="session")
def engine_config(llama_dir) -> EngineConfig:
    return EngineConfig(model=llama_dir, **ENGINE_OPTIONS)


@pytest.fixture(scope="session")
def server(engine_config):
    """The running server (`.url`, `.app`); shut down (gracefully) at the end of the session."""
    from pagedjax.server.serve import ServerOptions, ServerThread, build_server_app

    app = build_server_app(engine_config, ServerOptions(api_key=API_KEY, served_model_names=(MODEL, ALIAS)))
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="session")
def tool_model_dir(llama_dir, tmp_path_factory) -> str:
    """The tiny Llama with a chat template that renders tools, tool calls and tool results."""
    import os
    import shutil

    from transformers import AutoTokenizer

    out = str(tmp_path_factory.mktemp("llama-tools"))
    for name in os.listdir(llama_dir):
        if not name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(os.path.join(llama_dir, name), out)
    tok = AutoTokenizer.from_pretrained(llama_dir)
    tok.chat_template = TOOL_CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tool_server(tool_model_dir):
    """A second server, as `pagedjax serve --enable-auto-tool-choice --tool-call-parser hermes
    --reasoning-parser qwen3` starts it, over the tools-aware checkpoint."""
    from pagedjax.server.chat_options import ChatOptions
    from pagedjax.server.serve import ServerOptions, ServerThread, build_server_app

    chat = ChatOptions(enable_auto_tool_choice=True, tool_call_parser="hermes", reasoning_parser="qwen3")
    app = build_server_app(EngineConfig(model=tool_model_dir, **TOOL_SERVER_OPTIONS),
                           ServerOptions(api_key=API_KEY, served_model_names=(MODEL,), chat=chat))
    with ServerThread(app) as running:
        yield running


@pytest.fixture
def tool_client(tool_server):
    """The official OpenAI client on the tool server."""
    with httpx.Client(trust_env=False) as transport:
        yield openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key=API_KEY, max_retries=0,
                            timeout=REQUEST_TIMEOUT_S, http_client=transport)


@pytest.fixture(scope="session")
def offline(engine_config):
    """An offline `LLM` with the server's engine options: the reference outputs."""
    from pagedjax.llm import LLM

    c = engine_config
    return LLM(c.model, block_size=c.block_size, num_kv_blocks=c.num_kv_blocks, max_model_len=c.max_model_len,
               max_num_seqs=c.max_num_seqs, max_num_batched_tokens=c.max_num_batched_tokens)


@pytest.fixture(scope="session")
def tokenizer(offline):
    return offline.get_tokenizer()


@pytest.fixture
def http(server):
    """A plain httpx client on the server with the API key (no proxies from the environment)."""
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S, trust_env=False, headers=AUTH) as client:
        yield client


@pytest.fixture
def anon(server):
    """An httpx client on the server without the API key."""
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        yield client


@pytest.fixture
def client(server):
    """The official OpenAI client (no retries, so errors surface as they are)."""
    with httpx.Client(trust_env=False) as transport:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=REQUEST_TIMEOUT_S,
                            http_client=transport)


@pytest.fixture(autouse=True)
def no_unhandled_server_errors(caplog):
    """Fails a test during which the app raised an unhandled exception (uvicorn logs those)."""
    yield
    errors = [r for r in caplog.get_records("call") if r.name.startswith("uvicorn") and r.levelno >= 40]
    assert not errors, [r.getMessage() + (r.exc_text or "") for r in errors]
