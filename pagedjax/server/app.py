"""The FastAPI application: OpenAI's endpoints over an `AsyncEngine`, errors in OpenAI's shape.

Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `POST /v1/embeddings`, `GET /v1/models[/{id}]`,
`POST /tokenize` and `POST /detokenize` (vLLM's), `GET /metrics`
(Prometheus), `GET /version`, `GET /debug/stats` (the engine's counters, read on the engine thread:
KV blocks free and in use, preemptions, prefix-cache hits, compiles; for tests and operators), all
behind the API key when one is configured, and the always open `GET /health` (503 while the engine
thread is dead or stalled). Every request first passes the `RequestGuard` (API key before the body
is read, body size limit, unencodable text).
"""

from __future__ import annotations

import contextlib
import copy

import jax
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedjax.server.async_engine import AsyncEngine, EngineRequestError
from pagedjax.server.chat import create_chat_completion
from pagedjax.server.chat_options import ChatOptions
from pagedjax.server.completions import create_completion
from pagedjax.server.embeddings import create_embeddings
from pagedjax.server.errors import APIError, server_error
from pagedjax.server.generation import ClientDisconnected
from pagedjax.server.metrics import ServerMetrics
from pagedjax.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from pagedjax.server.guard import RequestGuard
from pagedjax.server.limits import ServerLimits
from pagedjax.server.state import ServerState
from pagedjax.server.tokenization import detokenize, tokenize
from pagedjax.server.tokens_protocol import DetokenizeRequest, EmbeddingRequest, TokenizeRequest


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    """Pydantic's 422 as OpenAI's 400; `param` is the top-level field, the message has the full path."""
    first = error.errors()[0] if error.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    message = f"{'.'.join(loc)}: {first.get('msg', 'invalid value')}" if loc else first.get("msg", "invalid request")
    return APIError(400, message, param=param, code="invalid_value").response()


def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return APIError(error.status_code, str(error.detail), type=kind).response()


def _v1_routes() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def list_models(request: Request) -> Response:
        state = _state(request)
        cards = [ModelCard(id=name, root=state.model_root, max_model_len=state.max_model_len)
                 for name in state.model_names]
        return Response(ModelList(data=cards).model_dump_json(), media_type="application/json")

    @router.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str, request: Request) -> Response:
        state = _state(request)
        name = state.check_model(model_id)
        card = ModelCard(id=name, root=state.model_root, max_model_len=state.max_model_len)
        return Response(card.model_dump_json(), media_type="application/json")

    @router.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(_state(request), body, request)

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(_state(request), body, request)

    @router.post("/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        return await create_embeddings(_state(request), body)

    return router


def _token_routes() -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize")
    async def tokenize_route(body: TokenizeRequest, request: Request) -> Response:
        return await tokenize(_state(request), body)

    @router.post("/detokenize")
    async def detokenize_route(body: DetokenizeRequest, request: Request) -> Response:
        return await detokenize(_state(request), body)

    return router


def _open_routes() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> Response:
        """200 while the engine thread runs and makes progress; 503 when it died, or when it has
        had work but no step finished for `health_stall_seconds`."""
        state = _state(request)
        engine = state.engine
        healthy = engine.is_running and engine.stalled_seconds() < state.limits.health_stall_seconds
        return Response(status_code=200 if healthy else 503)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/version")
    async def version() -> dict:
        from importlib.metadata import version as package_version

        return {"version": package_version("pagedjax")}

    @router.get("/debug/stats")
    async def debug_stats(request: Request) -> dict:
        """`engine.stats()` (read on the engine thread), plus the server's requests in flight."""
        stats = await _state(request).engine.stats()
        stats["device"] = jax.devices()[0].device_kind
        return stats

    return router


def build_app(engine: AsyncEngine, *, model_names: list[str], model_root: str, api_key: str | None = None,
              metrics: ServerMetrics | None = None, on_ready=None, limits: ServerLimits | None = None,
              chat_options: ChatOptions | None = None) -> FastAPI:
    """The application around `engine`: its thread starts and stops with the app's lifespan.

    Args:
        engine: the `AsyncEngine` (built with the same `metrics`).
        model_names: names requests may use in `model` (the first is the default).
        model_root: the model's directory or hub id.
        api_key: when set, every route but /health requires `Authorization: Bearer <api_key>`.
        metrics: the Prometheus metrics (default: new ones, without engine-side counts).
        on_ready: called with no arguments once the engine thread runs (e.g. to print an address).
        limits: bounds of one request (`ServerLimits`; default ones when None).
        chat_options: tool calling and reasoning (`ChatOptions`; none when None).
    """
    metrics = metrics or ServerMetrics(model_names[0])
    metrics.attach_engine_state(lambda: engine.stats_snapshot)
    tokenizer = copy.deepcopy(engine.tokenizer)  # the event loop's own: never shared across threads

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            engine.shutdown()
            state.close()

    app = FastAPI(title="pagedjax", description="OpenAI-compatible server of the pagedjax engine",
                  lifespan=lifespan)
    state = ServerState(engine, tokenizer, model_names, model_root, api_key, metrics, limits, chat_options)
    app.state.server = state
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=state.limits.max_request_body_bytes)
    app.add_exception_handler(APIError, lambda _, error: error.response())
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(EngineRequestError, lambda _, error: server_error(str(error)).response())
    app.add_exception_handler(ClientDisconnected, lambda *_: Response(status_code=499))
    app.include_router(_v1_routes())
    app.include_router(_token_routes())
    app.include_router(_open_routes())
    return app
