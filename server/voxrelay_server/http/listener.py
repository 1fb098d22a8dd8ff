"""The HTTP listener: an aiohttp server on the gRPC server's event loop.

It serves what route hooks add (`ROUTE_HOOKS`: the OpenAI-compatible speech API;
another module adds its routes with a hook of its own) on the same `CallRunner` as
the gRPC service, so its sessions count under `--max-sessions`, share the engines, the
metrics and the logs, and drain with the gRPC calls at shutdown. TLS and tokens follow
the gRPC listener's settings.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from voxrelay_server import security
from voxrelay_server.calls import CallRunner
from voxrelay_server.config import ServerSettings
from voxrelay_server.http import cors, openai_speech, page, websocket
from voxrelay_server.http.auth import ACCESS_KEY, TOKENS_KEY, Access, bearer_tokens, refusal
from voxrelay_server.http.errors import MAX_BODY_BYTES, Handler, error_response, json_errors
from voxrelay_server.http.tls import ssl_context
from voxrelay_server.security import TokenCheck
from voxrelay_server.serving import SHUTTING_DOWN_MESSAGE, ListenError

_LOG = logging.getLogger("voxrelay.http")
ACCESS_LOG_FORMAT = '%a "%r" %s %b bytes %Tf s'
"""One line per request (the client, request line, status, bytes, seconds); headers,
and so tokens, are never logged."""
IDLE_CONNECTION_S = 75.0
"""How long a connection without a request under way stays open when --start-timeout is
0 (off): aiohttp's own keep-alive timeout."""
CLOSE_GRACE_S = 2.0
"""At the end of a shutdown, after the calls: how long connections get to close (within
the health watchers' bound, `app.WATCHERS_GRACE_S`, beside which it runs, so HTTP adds
nothing to the shutdown's bound)."""


@dataclass(frozen=True)
class HttpContext:
    """What route modules share: the server's settings, the calls runner (sessions,
    limits and shutdown shared with gRPC) and the token check."""

    settings: ServerSettings
    runner: CallRunner
    tokens: TokenCheck | None
    """The accepted tokens; None when the server has none."""

    def refusal(self, request: web.Request) -> str | None:
        """Why `request` carries no accepted `Authorization: Bearer` token, or None when
        it does or no token is needed (for a route registered `Access.OPEN` that checks
        a token itself)."""
        return refusal(self.tokens, request)


class HttpRoutes:
    """Where a route hook adds its routes, each with who may use it."""

    def __init__(self, app: web.Application, context: HttpContext) -> None:
        self.app = app
        self.context = context

    def add(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        access: Access = Access.TOKEN,
    ) -> web.AbstractRoute:
        """Serve `method` on `path` with `handler`; `access` says who may."""
        route = self.app.router.add_route(method, path, handler)
        self.app[ACCESS_KEY][route] = access
        return route


RouteHook = Callable[[HttpRoutes], None]
"""Adds a module's routes to the listener."""
ROUTE_HOOKS: tuple[RouteHook, ...] = (
    openai_speech.add_routes,
    websocket.add_routes,
    page.add_routes,
)
"""The routes every HTTP listener serves, module by module."""


class ListenerState(enum.Enum):
    """Where the listener is in its life; it only moves down this list."""

    CREATED = "created"
    SERVING = "serving"
    """Listening; requests are served (503 while the voices load, from the service)."""
    DRAINING = "draining"
    """Shutting down: no new connections, new requests get 503, responses in flight
    finish within the shutdown grace."""
    CLOSED = "closed"


@web.middleware
async def _refuse_while_draining(request: web.Request, handler: Handler) -> web.StreamResponse:
    listener: HttpListener = request.app[_LISTENER_KEY]
    if listener.state is not ListenerState.SERVING:
        return error_response(
            503,
            SHUTTING_DOWN_MESSAGE,
            code="unavailable",
            headers={"Connection": "close", "Retry-After": "1"},
        )
    return await handler(request)


class HttpListener:
    """The HTTP listener of `settings.http_listen`, serving the routes of `hooks`
    (by default `ROUTE_HOOKS`, as it is when the listener is made)."""

    def __init__(
        self,
        settings: ServerSettings,
        runner: CallRunner,
        *,
        hooks: Sequence[RouteHook] | None = None,
    ) -> None:
        tokens = security.load_tokens(settings)
        self.context = HttpContext(settings, runner, TokenCheck(tokens) if tokens else None)
        self.state = ListenerState.CREATED
        self._ssl = ssl_context(settings)
        app = web.Application(
            middlewares=[json_errors, _refuse_while_draining, bearer_tokens],
            client_max_size=MAX_BODY_BYTES,
        )
        app[_LISTENER_KEY] = self
        app[ACCESS_KEY] = {}
        app[TOKENS_KEY] = self.context.tokens
        routes = HttpRoutes(app, self.context)
        for hook in ROUTE_HOOKS if hooks is None else hooks:
            hook(routes)
        cors.allow_origins(app, settings.http_cors_origins)  # after every route is added
        self.app = app
        self._runner = web.AppRunner(
            app,
            handle_signals=False,  # serve() handles them, for both listeners
            access_log=logging.getLogger("voxrelay.http.access"),
            access_log_format=ACCESS_LOG_FORMAT,
            shutdown_timeout=CLOSE_GRACE_S,
            # A connection with no request under way (none sent yet, one not finished
            # sending its headers, or idle between requests) is closed after this long:
            # --start-timeout, as for a call's first message, rather than aiohttp's 75 s.
            keepalive_timeout=settings.start_timeout_s or IDLE_CONNECTION_S,
            # A client that goes away stops its handler, and so its session and synthesis,
            # at once, even while nothing is being written (before the first audio).
            handler_cancellation=True,
        )
        self._site: web.TCPSite | None = None
        self.port = 0
        """The bound port, once started."""

    @property
    def scheme(self) -> str:
        """`https` with TLS, else `http`."""
        return "https" if self._ssl is not None else "http"

    async def start(self) -> int:
        """Listen on `settings.http_listen` (port 0 picks a free one); returns the port.

        Raises `ListenError` when the address is in use or not valid here.
        """
        host, _, port = self.context.settings.http_listen.rpartition(":")
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=self._ssl)
        try:
            await self._site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise ListenError(
                f"cannot listen for HTTP on {self.context.settings.http_listen}: "
                f"{error.strerror or error}"
            ) from error
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else int(port)
        self.state = ListenerState.SERVING
        if (
            self.context.tokens is not None
            and self._ssl is None
            and not security.is_loopback(host.strip("[]"))
        ):
            _LOG.warning(
                "bearer tokens reach HTTP %s in clear text: set --tls-cert and --tls-key "
                "to encrypt them",
                self.context.settings.http_listen,
            )
        _LOG.info("HTTP on %s://%s:%d", self.scheme, host, self.port)
        return self.port

    async def drain(self) -> None:
        """Stop taking requests: close the listening socket and idle connections; a new
        request on a connection still open gets 503. Responses in flight go on."""
        if self.state is not ListenerState.SERVING:
            return
        self.state = ListenerState.DRAINING
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server
        if server is not None:
            server.pre_shutdown()  # idle keep-alive connections close now

    async def close(self) -> None:
        """Close every connection, after the calls in flight have ended or been aborted.

        A connection still open now has a response its client is not taking (its handler
        is stuck writing): it is aborted, so its handler ends at once rather than after
        aiohttp's own two waits of `CLOSE_GRACE_S`.
        """
        started = self.state in (ListenerState.SERVING, ListenerState.DRAINING)
        self.state = ListenerState.CLOSED
        if not started:
            return
        server = self._runner.server
        for connection in server.connections if server is not None else ():
            if connection.transport is not None:
                connection.transport.abort()  # close() would wait to flush what is unread
        await self._runner.cleanup()


_LISTENER_KEY: web.AppKey[HttpListener] = web.AppKey("voxrelay_listener")
