"""The WebSocket stream (`/v1/stream`) against real servers over real sockets: the same
messages, order and rules as the gRPC `Stream` call, its errors with their statuses and
close codes, token auth, the voice list and the page."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format

from tests.conftest import Request, Response, wait_for
from tests.websockets import exchange, open_socket
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.app import RunningParts, create_server_parts
from voxrelay_server.config import ServerSettings
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.http.websocket import MAX_MESSAGE_BYTES, WebSocketStream
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog

TOKEN = "s3cret-token/with+base64="


@dataclass
class WebServer:
    """A started server with its HTTP listener, and the tone engine behind it."""

    parts: RunningParts
    service: SpeechService
    tone: ToneEngine
    base: str
    """e.g. http://127.0.0.1:PORT"""
    target: str
    """The gRPC address."""

    @property
    def stream_url(self) -> str:
        return f"{self.base}/v1/stream"


StartWeb = Callable[..., Awaitable[WebServer]]


@pytest_asyncio.fixture
async def start_web() -> AsyncIterator[StartWeb]:
    """Start servers with gRPC and the HTTP listener on free loopback ports, one service
    behind both: the tone engine (configured by the remaining keywords) and `engines`."""
    started: list[RunningParts] = []

    async def start(
        *,
        engines: Sequence[SpeechEngine] = (),
        default_voice: str = TONE_VOICE,
        max_sessions: int = 256,
        limits: SessionLimits | None = None,
        loading: bool = False,
        auth_tokens: str = "",
        http_cors_origins: tuple[str, ...] = (),
        start_timeout_s: float = 30.0,
        send_timeout_s: float = 30.0,
        keepalive_time_s: float = 60.0,
        **tone_settings: float,
    ) -> WebServer:
        tone = ToneEngine(**tone_settings)  # type: ignore[arg-type]
        catalog = VoiceCatalog([tone, *engines], default_voice)
        service = SpeechService(
            catalog, default_max_inflight_segments=4, max_sessions=max_sessions, limits=limits
        )
        settings = ServerSettings(
            listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            engines=("tone", *(engine.name for engine in engines)),
            default_voice=default_voice,
            auth_tokens=auth_tokens,
            http_cors_origins=http_cors_origins,
            start_timeout_s=start_timeout_s,
            send_timeout_s=send_timeout_s,
            keepalive_time_s=keepalive_time_s,
        )
        parts = create_server_parts(settings, None if loading else service)
        await parts.start()
        started.append(parts)
        assert parts.http is not None
        return WebServer(
            parts,
            service,
            tone,
            f"http://127.0.0.1:{parts.http.port}",
            f"127.0.0.1:{parts.port}",
        )

    yield start
    for parts in started:
        await parts.stop(0)


def kinds(responses: Sequence[Response]) -> list[str]:
    return [response.WhichOneof("response") or "" for response in responses]


def without_session_id(responses: Sequence[Response]) -> list[Response]:
    copies = []
    for response in responses:
        copy = Response()
        copy.CopyFrom(response)
        if copy.HasField("session_started"):
            copy.session_started.session_id = ""
        copies.append(copy)
    return copies


async def grpc_stream(target: str, requests: Sequence[Request]) -> list[Response]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Stream(iter(requests))
        return [response async for response in call]


def as_json(request: Request) -> dict[str, Any]:
    body: dict[str, Any] = json_format.MessageToDict(request, preserving_proto_field_name=True)
    return body


async def test_a_socket_gets_exactly_what_a_grpc_call_gets(start_web: StartWeb) -> None:
    """Same requests, same server: the same responses in the same order (audio bytes,
    word timing, places in the text, spoken_text), only the session id differs."""
    server = await start_web()
    requests = [
        Request(
            config=speech_pb2.SessionConfig(
                word_timestamps=True, chunk_ms=40, segmentation=speech_pb2.SEGMENTATION_SENTENCES
            )
        ),
        Request(text="Hello there, "),
        Request(text="how are you? I hope "),
        Request(text="you are well. "),
        Request(turn_done=speech_pb2.TurnDone()),
        Request(text="A second turn, "),
        Request(text="spoken after the first. "),
    ]
    over_grpc = await grpc_stream(server.target, requests)
    closed = await exchange(server.stream_url, [*map(as_json, requests), {"end": {}}])
    assert closed.close_code == 1000 and not closed.statuses
    assert without_session_id(closed.responses) == without_session_id(over_grpc)
    assert kinds(closed.responses)[0] == "session_started"
    assert {"words", "audio"} <= set(kinds(closed.responses))
    ended = [r.lifecycle for r in closed.responses if r.lifecycle.spoken_text]
    assert [e.spoken_text for e in ended] == [
        "Hello there, how are you? I hope you are well. ",
        "A second turn, spoken after the first. ",
    ]


async def test_audio_comes_as_a_json_header_then_its_bytes(start_web: StartWeb) -> None:
    server = await start_web()
    async with open_socket(server.stream_url) as socket:
        await socket.send(config={"audio_format": {"encoding": "AUDIO_ENCODING_PCM_F32LE"}})
        await socket.send(text="Hello there. ")
        await socket.send(end={})
        raw: list[aiohttp.WSMessage] = []
        while (message := await socket.ws.receive()).type in (
            aiohttp.WSMsgType.TEXT,
            aiohttp.WSMsgType.BINARY,
        ):
            raw.append(message)
    headers = [
        i for i, m in enumerate(raw) if m.type is aiohttp.WSMsgType.TEXT and '"audio"' in m.data
    ]
    assert headers
    for index in headers:
        header = json.loads(raw[index].data)["audio"]
        assert "data" not in header
        assert header["encoding"] == "AUDIO_ENCODING_PCM_F32LE" and header["turn"] == "1"
        data = raw[index + 1]
        assert data.type is aiohttp.WSMsgType.BINARY and len(data.data) % 4 == 0
    binary = [i for i, m in enumerate(raw) if m.type is aiohttp.WSMsgType.BINARY]
    assert binary == [i + 1 for i in headers]  # each binary message right after its header
    # Every field present, zeros included, with the proto's names.
    first = json.loads(raw[0].data)
    assert set(first["session_started"]) == {
        "session_id",
        "voice",
        "encoding",
        "sample_rate_hz",
        "pace_lead_ms",
        "text_budget_chars",
    }


async def test_words_of_a_real_voice_come_before_their_audio(
    start_web: StartWeb, espeak_engine: EspeakEngine
) -> None:
    server = await start_web(engines=[espeak_engine], default_voice="espeak/en-us")
    text = "Good morning, everyone. The quick brown fox jumps over the lazy dog. "
    closed = await exchange(
        server.stream_url,
        [{"config": {"word_timestamps": True, "chunk_ms": 100}}, {"text": text}, {"end": {}}],
    )
    assert closed.close_code == 1000
    seen_words: list[speech_pb2.Word] = []
    spoken: list[str] = []
    for response in closed.responses:
        if response.HasField("words"):
            seen_words.extend(response.words.words)
        elif response.HasField("audio"):
            audio = response.audio
            end = audio.offset_samples + len(audio.data) // 2
            # Every word starting in this chunk was announced before it.
            starting = [w for w in seen_words if audio.offset_samples <= w.start_samples < end]
            spoken.extend(w.text for w in starting)
    assert spoken == text.replace(",", "").replace(".", "").split()


async def test_cancel_with_the_played_position_reports_what_was_heard(
    start_web: StartWeb,
) -> None:
    """Played 0.35 s into a paced reply of five sentences: the turn ends cancelled, and
    its spoken_text ends at the last word whose audio ended by then, as on gRPC."""
    server = await start_web(ms_per_char=8)
    sentences = [f"Sentence number {n} of the reply. " for n in ("one", "two", "three", "four")]
    played = 16000 * 35 // 100
    async with open_socket(server.stream_url) as socket:
        await socket.send(config={"word_timestamps": True, "pace": "PACE_REALTIME"})
        for sentence in sentences:
            await socket.send(text=sentence)
        await socket.send(turn_done={})
        words: list[speech_pb2.Word] = []
        while True:
            response = await socket.next()
            assert response is not None
            if response.HasField("words"):
                words.extend(response.words.words)
            if response.HasField("audio") and response.audio.offset_samples >= played:
                break
        await socket.send(cancel={"turn": 1, "played_samples": played})
        await socket.send(end={})
        closed = await socket.rest()
    assert closed.close_code == 1000
    ended = [r.lifecycle for r in closed.responses if r.lifecycle.event == 2]
    assert len(ended) == 1 and ended[0].cancelled
    heard_end = max(w.text_offset + len(w.text) for w in words if w.end_samples <= played)
    turn_text = "".join(sentences)
    assert ended[0].spoken_text == turn_text[:heard_end]
    assert ended[0].spoken_length == heard_end
    assert 0 < heard_end < len(turn_text)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (["not json"], "not JSON"),
        (["[1, 2]"], "JSON object"),
        ([{"bogus": 1}], "no field named"),
        ([{"text": 5}], "StreamRequest"),
        ([{"text": "a", "turn_done": {}}], "StreamRequest"),
        ([{}], "empty StreamRequest"),
        ([{"text": ""}], "must not be empty"),
        ([{"text": "x" * 16385}], "over the limit"),
        ([{"config": {}}, {"config": {}}], "only as the first message"),
        ([{"config": {"voice": "nobody/none"}}], "unknown voice"),
        ([{"config": {"speed": 9}}], "speed"),
        ([{"config": {"pace": "PACE_NOPE"}}], "StreamRequest"),
        ([{"text": "Hi. "}, {"end": {}}, {"text": "more"}], "nothing may follow"),
        ([{"end": {"now": True}}], "end message"),
        ([{"text": "Hi. "}, {"authorization": "Bearer x"}], "only as the first message"),
        ([{"text": '"\\ud800"'}], None),  # a lone surrogate escaped in JSON
    ],
)
async def test_bad_input_is_invalid_argument_and_closes_with_4003(
    start_web: StartWeb, messages: list[Any], expected: str | None
) -> None:
    server = await start_web()
    async with open_socket(server.stream_url) as socket:
        for message in messages:
            if isinstance(message, str):
                await socket.ws.send_str(message)
            elif message == {"text": '"\\ud800"'}:
                await socket.ws.send_str('{"text": "\\ud800"}')
            else:
                await socket.ws.send_str(json.dumps(message))
        closed = await socket.rest()
    assert closed.statuses == ["INVALID_ARGUMENT"]
    assert (closed.close_code, closed.close_reason) == (4003, "INVALID_ARGUMENT")
    errors = [r.error for r in closed.responses if r.HasField("error")]
    assert errors[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    if expected is not None:
        assert expected in errors[0].message
    assert kinds(closed.responses)[-2:] == ["error", "lifecycle"]  # then SESSION_ENDED
    await wait_for(lambda: server.service.active_sessions == 0)


async def test_an_unknown_message_is_told_every_message_the_socket_takes(
    start_web: StartWeb,
) -> None:
    """protobuf's message lists the proto's fields (in camelCase, on a second line); the
    socket's own `end` and `authorization` are named too, on one line."""
    server = await start_web()
    async with open_socket(server.stream_url) as socket:
        await socket.ws.send_str(json.dumps({"txt": "Hello. "}))
        closed = await socket.rest()
    message = next(r.error.message for r in closed.responses if r.HasField("error"))
    assert "txt" in message and "\n" not in message
    for name in ("config", "text", "turn_done", "cancel", "end", "authorization"):
        assert re.search(rf"\b{name}\b", message), (name, message)


async def test_a_binary_message_is_invalid_argument(start_web: StartWeb) -> None:
    server = await start_web()
    async with open_socket(server.stream_url) as socket:
        await socket.send(text="Hello. ")
        await socket.ws.send_bytes(b"\x00\x01")
        closed = await socket.rest()
    assert closed.close_code == 4003
    assert "binary messages carry no requests" in closed.responses[-2].error.message


async def test_a_message_over_the_limit_is_closed_by_the_websocket_layer(
    start_web: StartWeb,
) -> None:
    server = await start_web()
    async with open_socket(server.stream_url) as socket:
        await socket.ws.send_str(json.dumps({"text": "x" * MAX_MESSAGE_BYTES}))
        closed = await socket.rest()
    assert closed.close_code == 1009
    await wait_for(lambda: server.service.active_sessions == 0)


async def test_statuses_of_the_servers_bounds(start_web: StartWeb) -> None:
    server = await start_web(max_sessions=1, start_timeout_s=0.2)
    # No first message within the start timeout.
    closed = await exchange(server.stream_url, [])
    assert (closed.close_code, closed.statuses) == (4004, ["DEADLINE_EXCEEDED"])
    assert not any(r.HasField("session_started") for r in closed.responses)
    # The one place taken: the next socket is refused at once.
    async with open_socket(server.stream_url) as holder:
        await holder.send(text="Hello. ")
        assert (await holder.next()) is not None  # session_started: the place is held
        closed = await exchange(server.stream_url, [{"text": "Hi. "}])
        assert (closed.close_code, closed.statuses) == (4008, ["RESOURCE_EXHAUSTED"])
    # Text over the session's budget.
    budget = await start_web(limits=SessionLimits(max_buffered_text_chars=100))
    closed = await exchange(budget.stream_url, [{"text": "word " * 30}])
    assert (closed.close_code, closed.statuses) == (4008, ["RESOURCE_EXHAUSTED"])


async def test_a_server_still_loading_says_unavailable(start_web: StartWeb) -> None:
    server = await start_web(loading=True)
    closed = await exchange(server.stream_url, [{"text": "Hi. "}])
    assert (closed.close_code, closed.close_reason) == (4014, "UNAVAILABLE")
    assert "still loading" in closed.responses[0].error.message


async def test_an_engine_failure_names_its_turn_and_segment(start_web: StartWeb) -> None:
    server = await start_web()
    closed = await exchange(
        server.stream_url, [{"text": "Fine first sentence here. [[fail]] then. "}, {"end": {}}]
    )
    error = next(r.error for r in closed.responses if r.HasField("error"))
    assert (error.turn, error.segment) == (1, 2)
    assert closed.close_code == 4000 + error.code
    assert closed.close_reason == closed.statuses[0]


async def test_closing_the_socket_stops_the_session(start_web: StartWeb) -> None:
    server = await start_web(ms_per_char=10, realtime_factor=1.0)
    async with open_socket(server.stream_url) as socket:
        await socket.send(text="A long reply. " * 40)
        while (response := await socket.next()) is not None and not response.HasField("audio"):
            pass
        assert server.tone.stats.active > 0
    await wait_for(lambda: server.service.active_sessions == 0)
    await asyncio.wait_for(server.tone.idle.wait(), 5)


async def test_a_handler_cancelled_as_its_session_opens_gives_the_place_back(
    start_web: StartWeb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp cancels the handler when the client goes: cancelled right after the
    session opened, before the task that speaks it took a step, the session is still
    ended and its place under --max-sessions given back."""
    server = await start_web(max_sessions=1)
    opened = WebSocketStream._open
    cancelled: list[asyncio.Task[Any]] = []

    async def open_then_cancel(self: WebSocketStream, *args: Any) -> Any:
        result = await opened(self, *args)
        if result is not None and not cancelled:
            # Delivered at the handler's next await: the one on the new speaking task.
            handler = asyncio.current_task()
            assert handler is not None
            handler.cancel()
            cancelled.append(handler)
        return result

    monkeypatch.setattr(WebSocketStream, "_open", open_then_cancel)
    closed = await exchange(server.stream_url, [{"text": "Hello. "}])
    assert cancelled and not any(r.HasField("session_started") for r in closed.responses)
    await wait_for(lambda: server.service.active_sessions == 0)
    # The one place is free again: a new socket is served.
    closed = await exchange(server.stream_url, [{"text": "Hi. "}, {"end": {}}])
    assert (closed.close_code, closed.statuses) == (1000, [])
    assert kinds(closed.responses)[0] == "session_started"


async def test_a_token_as_first_message_or_header_is_required(start_web: StartWeb) -> None:
    server = await start_web(auth_tokens=TOKEN)
    speak: list[dict[str, Any]] = [{"text": "Hello. "}, {"end": {}}]
    refused = [
        await exchange(server.stream_url, speak),
        await exchange(server.stream_url, [{"authorization": "Bearer wrong"}, *speak]),
        await exchange(server.stream_url, [{"authorization": TOKEN}, *speak]),
        await exchange(server.stream_url, speak, headers={"Authorization": "Bearer wrong"}),
    ]
    for closed in refused:
        assert (closed.close_code, closed.statuses) == (4016, ["UNAUTHENTICATED"])
        assert kinds(closed.responses) == ["error", "lifecycle"]  # no session_started
        assert TOKEN not in closed.responses[0].error.message
    assert "first message" in refused[0].responses[0].error.message
    accepted = [
        await exchange(server.stream_url, [{"authorization": f"Bearer {TOKEN}"}, *speak]),
        await exchange(server.stream_url, speak, headers={"Authorization": f"Bearer {TOKEN}"}),
    ]
    for closed in accepted:
        assert closed.close_code == 1000 and not closed.statuses
        assert kinds(closed.responses)[0] == "session_started"


async def test_an_authorization_message_is_ignored_after_the_header(
    start_web: StartWeb,
) -> None:
    """websocket.md: a client may always send the message first; with the token checked
    in the header already, it is ignored (not refused as out of place)."""
    server = await start_web(auth_tokens=TOKEN)
    closed = await exchange(
        server.stream_url,
        [{"authorization": f"Bearer {TOKEN}"}, {"text": "Hi. "}, {"end": {}}],
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert (closed.close_code, closed.statuses) == (1000, [])
    assert kinds(closed.responses)[0] == "session_started"
    # Anywhere after the first message it is still refused.
    closed = await exchange(
        server.stream_url,
        [{"text": "Hi. "}, {"authorization": f"Bearer {TOKEN}"}],
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert (closed.close_code, closed.statuses) == (4003, ["INVALID_ARGUMENT"])


async def test_an_authorization_message_is_ignored_without_tokens(start_web: StartWeb) -> None:
    server = await start_web()
    closed = await exchange(
        server.stream_url, [{"authorization": "Bearer anything"}, {"text": "Hi. "}, {"end": {}}]
    )
    assert closed.close_code == 1000


async def test_the_page_needs_no_token_and_allows_only_its_own_script(
    start_web: StartWeb,
) -> None:
    server = await start_web(auth_tokens=TOKEN)
    async with aiohttp.ClientSession() as client, client.get(f"{server.base}/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
        page = await response.text()
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'sha256-" in policy and "unsafe" not in policy
    # It speaks through the socket; the token it is given is never stored or put in a URL.
    assert "/v1/stream" in page and "/v1/audio/voices" in page
    assert "localStorage" not in page and "sessionStorage" not in page
    assert "document.cookie" not in page


async def test_a_page_of_another_site_may_not_open_a_socket(start_web: StartWeb) -> None:
    """Cross-site WebSocket hijacking: browsers send Origin, and a WebSocket is not
    subject to CORS, so the socket itself refuses other sites' pages."""
    server = await start_web()
    speak: list[dict[str, Any]] = [{"text": "Hello. "}, {"end": {}}]
    closed = await exchange(server.stream_url, speak, headers={"Origin": "https://evil.example"})
    assert (closed.close_code, closed.statuses) == (4007, ["PERMISSION_DENIED"])
    assert "https://evil.example" in closed.responses[0].error.message
    own = await exchange(server.stream_url, speak, headers={"Origin": server.base})
    assert own.close_code == 1000
    allowed = await start_web(http_cors_origins=("https://app.example",))
    closed = await exchange(allowed.stream_url, speak, headers={"Origin": "https://app.example"})
    assert closed.close_code == 1000


async def test_a_shutdown_ends_sockets_still_open_with_unavailable(start_web: StartWeb) -> None:
    """Drained with the gRPC calls: after the grace, a speaking socket and one still
    waiting for its first message end with UNAVAILABLE (4014)."""
    server = await start_web(ms_per_char=10, realtime_factor=1.0)
    async with open_socket(server.stream_url) as speaking, open_socket(server.stream_url) as idle:
        await speaking.send(text="A long reply that takes a while to speak. " * 20)
        while (response := await speaking.next()) is not None and not response.HasField("audio"):
            pass
        stopping = asyncio.create_task(server.parts.stop(0.2))
        closed = [await speaking.rest(), await idle.rest()]
        await stopping
    for socket in closed:
        assert (socket.close_code, socket.statuses) == (4014, ["UNAVAILABLE"])
        assert "shutting down" in socket.responses[-2].error.message
    assert closed[0].responses[0].HasField("session_started")
    assert not closed[1].responses[0].HasField("session_started")


async def test_a_client_that_stops_reading_loses_its_session(start_web: StartWeb) -> None:
    """--send-timeout, as on gRPC: its place is freed while it does not read; when it
    reads again, its audio so far, then DEADLINE_EXCEEDED and close 4004."""
    server = await start_web(send_timeout_s=0.3, ms_per_char=20)
    async with open_socket(server.stream_url) as socket:
        for _ in range(6):  # minutes of audio, far more than the socket's buffers hold
            await socket.send(text="word " * 2000)
            await socket.send(turn_done={})
        await wait_for(lambda: server.service.active_sessions == 0, timeout_s=30)
        closed = await socket.rest()
    assert (closed.close_code, closed.statuses) == (4004, ["DEADLINE_EXCEEDED"])
    assert "did not read" in closed.responses[-2].error.message
    assert any(response.HasField("audio") for response in closed.responses)


async def test_a_client_that_answers_no_ping_is_disconnected(start_web: StartWeb) -> None:
    """--keepalive-time: the socket is pinged, and one whose client does not answer (a
    vanished peer) is closed and its session freed, as gRPC's keepalive does."""
    server = await start_web(keepalive_time_s=0.2)
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(server.stream_url, autoping=False) as ws,
    ):
        await ws.send_str(json.dumps({"text": "Hello. "}))
        await wait_for(lambda: server.service.active_sessions == 1)
        await wait_for(lambda: server.service.active_sessions == 0)
        kinds_seen = set()
        while (message := await ws.receive()).type not in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
        ):
            kinds_seen.add(message.type)
    assert aiohttp.WSMsgType.PING in kinds_seen
