"""The OpenAI-compatible HTTP server: `pagedjax serve` (needs the `serve` extra: fastapi, uvicorn).

Modules: `async_engine` (`AsyncEngine`: the engine loop on its own thread beside asyncio),
`app` (`build_app`: the FastAPI application), `serve` (`serve`, `ServerThread`: uvicorn),
`protocol` (request/response models), `completions` and `chat` (the two generation endpoints),
`generation` (one HTTP request's engine requests, disconnects), `metrics` (Prometheus),
`cli` (the `serve` subcommand's arguments). Nothing is imported here, so `pagedjax --help`
stays fast and works without the extra.
"""
