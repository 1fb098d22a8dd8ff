"""The page at `/`: pick a voice, type text, hear it as it streams, barge in.

One static file (`index.html`, its script and style inline, no build step) that speaks
through the WebSocket stream. It holds no secret and needs no token to load (like a
login form); the token its user types stays in the page's memory and goes to the
server only in the voice list's `Authorization` header and the socket's first message.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final

from aiohttp import web

from voxrelay_server.http.auth import Access

if TYPE_CHECKING:
    from voxrelay_server.http.listener import HttpRoutes

PAGE_PATH: Final = "/"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class Page:
    """The page's bytes and the headers it is served with."""

    body: bytes
    headers: dict[str, str]


def load_page() -> Page:
    """The page, with a Content-Security-Policy that allows exactly its inline script and
    style (by their SHA-256 hashes), connections to this origin only, and nothing else:
    no other script can run in it, and it can send the token nowhere else."""
    html = resources.files(__package__).joinpath("index.html").read_text("utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, content in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(content.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {' '.join(hashes['script'])}",
            f"style-src {' '.join(hashes['style'])}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(
        html.encode(),
        {
            "Content-Security-Policy": policy,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def add_routes(routes: HttpRoutes) -> None:
    """Serve the page at `/`, open to all."""
    page = load_page()

    async def index(_request: web.Request) -> web.Response:
        return web.Response(
            body=page.body, content_type="text/html", charset="utf-8", headers=page.headers
        )

    routes.add("GET", PAGE_PATH, index, access=Access.OPEN)
