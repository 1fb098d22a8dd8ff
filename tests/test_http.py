"""The HTTP listener (`--http-listen`): a real server over real sockets, beside gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from voxrelay_server.app import RunningParts, create_server_parts
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.http import Access, HttpRoutes
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog


@dataclass
class HttpServer:
    """A started server with its HTTP listener."""

    parts: RunningParts
    service: SpeechService
    base_url: str
    """e.g. http://127.0.0.1:PORT"""
    target: str
    """The gRPC address."""


StartHttp = Callable[..., Awaitable[HttpServer]]


def tone_service(
    engines: Sequence[SpeechEngine] = (),
    *,
    default_voice: str = TONE_VOICE,
    max_sessions: int = 256,
    **tone: float,
) -> SpeechService:
    catalog = VoiceCatalog([ToneEngine(**tone), *engines], default_voice)  # type: ignore[arg-type]
    return SpeechService(catalog, default_max_inflight_segments=4, max_sessions=max_sessions)


@pytest_asyncio.fixture
async def start_http() -> AsyncIterator[StartHttp]:
    """Start servers with an HTTP listener on free ports."""
    started: list[RunningParts] = []

    async def start(
        service: SpeechService | None = None, *, loading: bool = False, **settings: Any
    ) -> HttpServer:
        """`loading`: no service yet, as while the voices load."""
        service = service or tone_service()
        settings.setdefault("engines", ("tone",))
        full = ServerSettings(listen="127.0.0.1:0", http_listen="127.0.0.1:0", **settings)
        parts = create_server_parts(full, None if loading else service)
        await parts.start()
        started.append(parts)
        assert parts.http is not None
        scheme = parts.http.scheme
        return HttpServer(
            parts, service, f"{scheme}://127.0.0.1:{parts.http.port}", f"127.0.0.1:{parts.port}"
        )

    yield start
    for parts in started:
        await parts.stop(1.0)


async def test_models_are_listed_in_openais_shape(start_http: StartHttp) -> None:
    server = await start_http()
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{server.base_url}/v1/models") as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["object"] == "list"
    assert {"tts-1", "voxrelay"} <= {model["id"] for model in body["data"]}


async def test_requests_without_an_accepted_token_get_401_in_openais_shape(
    start_http: StartHttp,
) -> None:
    server = await start_http(auth_tokens="s3cret,other")
    url = f"{server.base_url}/v1/models"
    async with aiohttp.ClientSession() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            async with client.get(url, headers=headers) as response:
                assert response.status == 401, headers
                error = (await response.json())["error"]
                assert error["type"] == "authentication_error"
                assert "Authorization: Bearer" in error["message"]
                assert "s3cret" not in error["message"]
        async with client.get(url, headers={"Authorization": "Bearer other"}) as response:
            assert response.status == 200
        # An unknown route is not revealed without a token.
        async with client.get(f"{server.base_url}/nothing") as response:
            assert response.status == 401
        async with client.get(
            f"{server.base_url}/nothing", headers={"Authorization": "Bearer s3cret"}
        ) as response:
            assert response.status == 404
            assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_a_route_hook_adds_routes_open_or_behind_the_token(
    start_http: StartHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hello(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="hello")

    def hook(routes: HttpRoutes) -> None:
        routes.add("GET", "/hello", hello, access=Access.OPEN)
        routes.add("GET", "/private", hello)

    from voxrelay_server.http import listener

    monkeypatch.setattr(listener, "ROUTE_HOOKS", (*listener.ROUTE_HOOKS, hook))
    server = await start_http(auth_tokens="s3cret")
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{server.base_url}/hello") as response:
            assert (response.status, await response.text()) == (200, "hello")
        async with client.get(f"{server.base_url}/private") as response:
            assert response.status == 401
