"""`RequestGuard`: what every HTTP request passes before the application sees it.

An ASGI middleware, in this order:
1. the API key (when configured): checked on the headers, before a byte of the body is read;
   every route except the open ones (`/health`) needs it;
2. the body size: a declared Content-Length over the limit is refused at once, and the body is
   counted while it is read, so an oversized body is never buffered whole nor parsed (413);
3. text that cannot be encoded (lone UTF-16 surrogates such as `"\\ud800"` in a JSON string):
   a 400 naming the field, instead of a tokenizer crash later.
The body read here is replayed to the application; later `receive` calls (the client's
disconnect) pass through.
"""

from __future__ import annotations

import json
import re
import secrets

from starlette.responses import JSONResponse

from pagedjax.server.errors import APIError

# A JSON \u escape of a UTF-16 surrogate (a valid pair is fine; only lone ones are refused).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def unencodable_field(value, path: str = "") -> str | None:
    """The path (`messages[0].content`) of the first string in a parsed JSON value that is not
    valid Unicode text (a lone surrogate), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unencodable_field(key, path) or unencodable_field(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = unencodable_field(item, f"{path}[{i}]")
            if found:
                return found
    return None


class RequestGuard:
    """ASGI middleware: API key, body size limit (413) and unencodable text (400)."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, open_paths: tuple[str, ...] = ("/health",)):
        self.app, self.api_key, self.max_body_bytes, self.open_paths = app, api_key, max_body_bytes, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key is not None and scope["path"] not in self.open_paths and not self._authorized(scope):
            return await self._refuse(scope, receive, send, APIError(
                401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key"))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(scope, receive, send, self._too_large())
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await self._refuse(scope, receive, send, self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _SURROGATE_ESCAPE.search(body):
            try:
                field = unencodable_field(json.loads(body))
            except ValueError:
                field = None  # not JSON: the application answers that
            if field is not None:
                return await self._refuse(scope, receive, send, APIError(
                    400, f"{field}: the text is not valid Unicode (a lone surrogate)", param=field.split(".")[0]
                    .split("[")[0], code="invalid_value"))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _authorized(self, scope) -> bool:
        scheme, _, token = (_header(scope, b"authorization") or b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode("latin-1"),
                                                                     self.api_key.encode())

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than the server's limit ({self.max_body_bytes} bytes; "
                             f"see --max-request-body-bytes)", code="request_too_large")

    @staticmethod
    async def _refuse(scope, receive, send, error: APIError) -> None:
        response = JSONResponse(error.body(), status_code=error.status, headers={"Connection": "close"})
        await response(scope, receive, send)
