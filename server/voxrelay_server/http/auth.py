"""Bearer tokens over HTTP: the same tokens as the gRPC listener's, as
`Authorization: Bearer <token>`.

Routes need a token unless registered as `Access.OPEN` (a static page, which asks its
user for the token and sends it itself); CORS preflights (`OPTIONS` with no route of
its own) carry no credentials, by the standard, and pass.
"""

from __future__ import annotations

import enum
import logging

from aiohttp import hdrs, web

from voxrelay_server.http.errors import Handler, error_response
from voxrelay_server.security import TokenCheck

_LOG = logging.getLogger(__name__)

HOW_TO_SEND = "send one of the server's tokens as the header 'Authorization: Bearer <token>'"
TOKENS_KEY: web.AppKey[TokenCheck | None] = web.AppKey("voxrelay_tokens")
"""The server's accepted tokens; None when it has none (no route needs one)."""


class Access(enum.Enum):
    """Who may use a route."""

    TOKEN = "token"
    """Callers with an accepted bearer token (anyone when the server has no tokens)."""
    OPEN = "open"
    """Anyone: for what holds no speech or voices, such as a static page."""


ACCESS_KEY: web.AppKey[dict[web.AbstractRoute, Access]] = web.AppKey("voxrelay_access")
"""The app's access of each route, by the route's handler (a route added otherwise
needs a token)."""


def refusal(tokens: TokenCheck | None, request: web.Request) -> str | None:
    """Why `request` is not authorized, or None when it is (or no token is needed)."""
    if tokens is None:
        return None
    return tokens.refusal(request.headers.getall(hdrs.AUTHORIZATION, []), HOW_TO_SEND)


def route_access(request: web.Request) -> Access:
    """The access of the route `request` matched."""
    route = request.match_info.route
    known = request.app[ACCESS_KEY].get(route)
    if known is not None:
        return known
    if request.method == hdrs.METH_OPTIONS and request.match_info.http_exception is None:
        return Access.OPEN  # a CORS preflight
    return Access.TOKEN


@web.middleware
async def bearer_tokens(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a request for a route that needs a token, without an accepted one, with 401
    (before anything else: an unknown route is not revealed as such)."""
    if route_access(request) is Access.TOKEN:
        reason = refusal(request.app[TOKENS_KEY], request)
        if reason is not None:
            _LOG.info(
                "refused %s %s from %s: %s",
                request.method,
                request.path,
                request.remote,
                reason.partition(":")[0],
            )
            return error_response(
                401, reason, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
            )
    return await handler(request)
