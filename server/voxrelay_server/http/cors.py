"""CORS for the HTTP listener: off unless `--http-cors-origins` names origins.

aiohttp-cors answers the preflights and adds the `Access-Control-*` headers to the
responses of every route, those added by other modules' route hooks included.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp_cors
from aiohttp import web

EXPOSED_HEADERS = ("X-Voxrelay-Session-Id", "X-Voxrelay-Voice", "X-Voxrelay-Sample-Rate")
"""Response headers a page may read (besides the standard ones)."""


def allow_origins(app: web.Application, origins: Sequence[str]) -> None:
    """Let pages from `origins` ("*" for any) call every route of `app` now registered,
    with any method and request header (`Authorization` among them); no cookies."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,  # tokens travel in Authorization, never as cookies
        expose_headers=EXPOSED_HEADERS,
        allow_headers="*",
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        cors.add(route)
