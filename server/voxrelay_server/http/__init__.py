"""The HTTP listener (`--http-listen`) and what it serves, one module per job.

- `listener`: the aiohttp server, its life beside the gRPC server's, and the route
  hooks through which a module adds routes (`HttpRoutes.add`, `ROUTE_HOOKS`);
- `auth`: bearer tokens, the gRPC listener's, as `Authorization: Bearer`;
- `tls`: the gRPC listener's TLS settings as an `ssl.SSLContext`;
- `cors`: CORS, off unless `--http-cors-origins` names origins;
- `errors`: OpenAI's JSON error shape and the HTTP status of each domain error;
- `openai_speech`: the OpenAI-compatible speech API.

Like `grpc_service`, these are a thin transport: the call logic is `voxrelay_server.calls`.
"""

from voxrelay_server.http.auth import Access
from voxrelay_server.http.listener import (
    ROUTE_HOOKS,
    HttpContext,
    HttpListener,
    HttpRoutes,
    ListenerState,
    RouteHook,
)

__all__ = [
    "ROUTE_HOOKS",
    "Access",
    "HttpContext",
    "HttpListener",
    "HttpRoutes",
    "ListenerState",
    "RouteHook",
]
