"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse

_FIELD = re.compile(r"\bSamplingParams\.(\w+)")


class APIError(Exception):
    """An error returned to the client (never a traceback): status, message, OpenAI type and code."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        """The JSON body: `{"error": {...}}`."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """A 400 for invalid input."""
    return APIError(400, message, param=param, code=code)


def from_value_error(error: ValueError, *, param: str | None = None) -> APIError:
    """A 400 from the engine's or `SamplingParams`' ValueError; the field it names becomes `param`."""
    message = str(error)
    match = _FIELD.search(message)
    if param is None and match:
        param = match.group(1)
    code = "context_length_exceeded" if "max_model_len" in message else "invalid_value"
    return APIError(400, message, param=param, code=code)


def server_error(message: str) -> APIError:
    """A 500: the engine failed while serving this request; the server keeps serving others."""
    return APIError(500, message, type="server_error", code="internal_error")
