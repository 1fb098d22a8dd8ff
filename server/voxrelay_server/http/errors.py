"""Errors over HTTP: OpenAI's JSON error shape, with the status each domain error maps to.

Every error the listener answers with, its own (no such route, a token refused, a body
too large) and the speech domain's (`SpeechError`), is a JSON body
`{"error": {"message", "type", "param", "code"}}` as OpenAI's API sends, so OpenAI's
client libraries raise their usual exceptions (`openai.BadRequestError`, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from voxrelay_server.errors import ErrorCode, SpeechError, TextTooLong
from voxrelay_server.settings import MAX_WHOLE_TEXT_CHARS

_LOG = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.CANCELLED: 499,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNKNOWN: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
}
"""The HTTP status of each domain error (TextTooLong, an INVALID_ARGUMENT, gets 413)."""
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
"""OpenAI's `error.type` by status; any other status is a `server_error`."""


def http_status(error: SpeechError) -> int:
    """The HTTP status a domain error is answered with."""
    if isinstance(error, TextTooLong):
        return 413
    return _STATUS.get(error.code, 500)


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The `error` object of OpenAI's shape (its `type` from `status`)."""
    return {
        "message": message,
        "type": _TYPES.get(status, "server_error"),
        "param": param,
        "code": code,
    }


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error in OpenAI's shape."""
    body = {"error": error_body(status, message, code=code, param=param)}
    return web.json_response(body, status=status, headers=headers)


def speech_error_body(error: SpeechError, *, param: str | None = None) -> dict[str, Any]:
    """The `error` object for a domain error: its code's name as `code`
    (`invalid_argument`, `resource_exhausted`, ... or `text_too_long`)."""
    code = "text_too_long" if isinstance(error, TextTooLong) else error.code.name.lower()
    return error_body(http_status(error), error.message, code=code, param=param)


def speech_error_response(error: SpeechError, *, param: str | None = None) -> web.Response:
    """The JSON error for a domain error, with its status (and `Retry-After` for a
    server that is full, loading or stopping)."""
    retry = error.code in (ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.UNAVAILABLE)
    return web.json_response(
        {"error": speech_error_body(error, param=param)},
        status=http_status(error),
        headers={"Retry-After": "1"} if retry else None,
    )


class RequestError(Exception):
    """A bad HTTP request, answered with `status` and OpenAI's error shape."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def response(self) -> web.Response:
        """The JSON error response."""
        return error_response(self.status, self.message, code=self.code, param=self.param)


MAX_BODY_BYTES = 12 * MAX_WHOLE_TEXT_CHARS + 65536
"""The largest request body: a whole text of the most characters one call takes, each
escaped in JSON as a character beyond the BMP is (`\\ud83d\\ude00`, 12 bytes, as Python's
`json.dumps` writes an emoji), and room for the other fields; larger gets 413."""

_HTTP_MESSAGES = {
    413: f"the request body is over {MAX_BODY_BYTES:,} bytes: input takes at most "
    f"{MAX_WHOLE_TEXT_CHARS:,} characters (split a longer text across several requests)"
}


def _routes_served(app: web.Application) -> str:
    """The app's routes, e.g. `POST /v1/audio/speech, GET /v1/models`, for a 404."""
    served = dict.fromkeys(
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "OPTIONS")
    )
    return ", ".join(served)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure in OpenAI's error shape: aiohttp's own (404, 405, 413),
    `RequestError`, `SpeechError`, and a fault (logged, 500)."""
    try:
        return await handler(request)
    except RequestError as error:
        return error.response()
    except SpeechError as error:
        return speech_error_response(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        message = _HTTP_MESSAGES.get(error.status) or error.text or error.reason
        if error.status == 404:
            message = f"no route {request.path} on this server: it serves " + _routes_served(
                request.app
            )
        elif error.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return error_response(error.status, message, headers=_kept_headers(error))
    except Exception:
        _LOG.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(
            500,
            "internal error in the server; it has been logged: retry, and report it if it persists",
        )


def _kept_headers(error: web.HTTPException) -> dict[str, str]:
    # 405's Allow says which methods the route takes.
    return {name: value for name, value in error.headers.items() if name in ("Allow",)}
