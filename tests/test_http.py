"""The HTTP listener (`--http-listen`): a real server over real sockets, beside gRPC."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.processes import free_port, running_serve, start_serve, user_env
from voxrelay_server.app import RunningParts, build_service, create_server_parts
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.errors import SpeechError
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
    on_idle: Callable[[], None] | None = None,
    **tone: float,
) -> SpeechService:
    """A service with the tone engine (configured by `tone`) and `engines`."""
    catalog = VoiceCatalog([ToneEngine(**tone), *engines], default_voice)  # type: ignore[arg-type]
    return SpeechService(
        catalog, default_max_inflight_segments=4, max_sessions=max_sessions, on_idle=on_idle
    )


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
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Bearer s3cr\u20act"},  # not Latin-1: it was a 500
        ):
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
            error = (await response.json())["error"]
            assert error["type"] == "invalid_request_error"
            assert "POST /v1/audio/speech, GET /v1/models" in error["message"]


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


def test_serve_runs_the_http_listener_from_its_variable_with_shared_metrics_and_logs(
    tmp_path: Path,
) -> None:
    http_port, metrics_port = free_port(), free_port()
    env = user_env(
        VOXRELAY_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        VOXRELAY_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    log = tmp_path / "serve.log"
    with running_serve(["--engines", "tone", "--max-sessions", "1"], log, env) as serve:
        body = json.dumps({"model": "tts-1", "input": "Hello there. ", "voice": "alloy"})
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/audio/speech",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            wav = response.read()
            session_id = response.headers["X-Voxrelay-Session-Id"]
        assert wav.startswith(b"RIFF") and len(wav) > 44
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            metrics = response.read().decode()
        assert 'voxrelay_sessions_total{code="OK"} 1.0' in metrics
        assert "voxrelay_active_sessions 0.0" in metrics
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(timeout=30) == 0
    logged = log.read_text()
    assert f"HTTP on http://127.0.0.1:{http_port}" in logged
    assert "session summary" in logged and session_id in logged
    assert '"POST /v1/audio/speech HTTP/1.1" 200' in logged


async def test_a_client_that_goes_away_ends_its_session_and_frees_its_place(
    start_http: StartHttp,
) -> None:
    idle = asyncio.Event()
    # `on_idle`: told when the last place is given back.
    server = await start_http(tone_service(realtime_factor=1.0, on_idle=idle.set))
    body = {"model": "tts-1", "input": "A long reply. " * 20, "voice": "alloy"}
    async with aiohttp.ClientSession() as client:
        response = await client.post(f"{server.base_url}/v1/audio/speech", json=body)
        assert response.status == 200
        await response.content.readany()
        assert server.service.active_sessions == 1
        response.close()  # the connection goes, mid-stream
    await asyncio.wait_for(idle.wait(), 10)
    assert server.service.active_sessions == 0


async def test_refused_speech_requests_are_counted_with_their_status_code(
    start_http: StartHttp,
) -> None:
    from prometheus_client import CollectorRegistry

    from voxrelay_server.observability import Observability

    registry = CollectorRegistry()
    observability = Observability(ServerSettings(engines=("tone",)), registry=registry)
    service = SpeechService(
        VoiceCatalog([ToneEngine()], TONE_VOICE),
        default_max_inflight_segments=4,
        observer_factory=observability.observer_factory,
        on_rejected=observability.session_rejected,
    )
    observability.watch(service)
    server = await start_http(service)
    url = f"{server.base_url}/v1/audio/speech"
    async with aiohttp.ClientSession() as client:
        for body in (b"not json", b'{"model": "tts-1", "input": "Hi. ", "voice": "x/y"}'):
            async with client.post(url, data=body) as response:
                assert response.status == 400
        async with client.post(url, json={"model": "m", "input": "Hi. "}) as response:
            assert response.status == 200
            await response.read()

    def sessions(code: str) -> float:
        return registry.get_sample_value("voxrelay_sessions_total", {"code": code}) or 0.0

    assert (sessions("INVALID_ARGUMENT"), sessions("OK")) == (2.0, 1.0)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"http_listen": "8080"}, "is not host:port"),
        ({"http_listen": "127.0.0.1:http"}, "is not host:port"),
        ({"http_cors_origins": ("https://a.example",)}, "set --http-listen"),
        ({"http_listen": "127.0.0.1:0", "http_cors_origins": ("a.example",)}, "not an origin"),
        ({"http_listen": "127.0.0.1:0", "http_voice_map": ("alloy",)}, "is not NAME=VOICE"),
    ],
)
def test_http_settings_that_cannot_work_are_refused_with_what_to_fix(
    settings: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        ServerSettings(engines=("tone",), **settings)


def test_a_voice_map_to_a_voice_the_server_does_not_offer_refuses_to_start() -> None:
    """Else every request for that OpenAI name would get a 400 blaming its caller."""
    settings = ServerSettings(
        engines=("tone",),
        default_voice=TONE_VOICE,
        http_listen="127.0.0.1:0",
        http_voice_map=("alloy=tone/square", "echo=tone/sqare"),
    )
    with pytest.raises(
        SpeechError, match=r"--http-voice-map .* maps echo to tone/sqare: .*tone/square"
    ):
        build_service(settings)
    fine = dataclasses.replace(settings, http_voice_map=("alloy=tone/square",))
    assert build_service(fine).catalog.default_voice == TONE_VOICE


def test_serve_says_which_http_address_is_in_use_and_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        process = start_serve(
            ["--engines", "tone", "--listen", f"127.0.0.1:{free_port()}", "--http-listen", address],
            tmp_path / "serve.log",
            user_env(),
        )
        assert process.wait(timeout=60) == 2
    logged = (tmp_path / "serve.log").read_text()
    assert f"cannot listen for HTTP on {address}" in logged and "address already in use" in logged
    assert "Traceback" not in logged


def test_serve_says_which_metrics_address_is_in_use_and_exits_2(tmp_path: Path) -> None:
    """As for the HTTP listener: a message naming the address, no traceback, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        listen = f"127.0.0.1:{free_port()}"
        process = start_serve(
            ["--engines", "tone", "--listen", listen, "--metrics-listen", address],
            tmp_path / "serve.log",
            user_env(),
        )
        assert process.wait(timeout=60) == 2
    logged = (tmp_path / "serve.log").read_text()
    assert f"cannot listen for metrics on {address}" in logged and "in use" in logged, logged
    assert "Traceback" not in logged


async def test_a_client_that_stops_reading_cannot_hold_the_shutdown_past_its_bound(
    start_http: StartHttp,
) -> None:
    from voxrelay_server.app import ABORT_GRACE_S, WATCHERS_GRACE_S
    from voxrelay_server.http.listener import CLOSE_GRACE_S

    assert CLOSE_GRACE_S <= WATCHERS_GRACE_S  # HTTP closes within the watchers' bound
    server = await start_http()
    # About 200 s of audio, far more than the sockets' buffers hold.
    body = {"model": "tts-1", "input": "Words and more words. " * 900, "voice": "alloy"}
    async with aiohttp.ClientSession() as client:
        response = await client.post(f"{server.base_url}/v1/audio/speech", json=body)
        assert response.status == 200
        await response.content.readany()  # then reads no more
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.parts.stop(0.5)
        took = loop.time() - started
        response.close()
    assert took < 0.5 + ABORT_GRACE_S + WATCHERS_GRACE_S + 0.5, took
    assert server.service.active_sessions == 0
