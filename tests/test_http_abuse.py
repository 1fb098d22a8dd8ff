"""What the worst legal (or nearly legal) HTTP and WebSocket requests cost the server:
each is refused with a clear status, bounded in time, and frees its session's place,
over real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import aiohttp

from tests.conftest import wait_for
from tests.test_http import HttpServer, StartHttp, start_http, tone_service
from tests.test_websocket import StartWeb, WebServer, start_web
from tests.websockets import open_socket

__all__ = ["start_http", "start_web"]  # the fixtures, used by name

SPEECH = "/v1/audio/speech"


async def test_a_speech_body_nested_too_deeply_gets_400_not_500(start_http: StartHttp) -> None:
    server = await start_http()
    async with aiohttp.ClientSession() as client:
        for body in (
            b"[" * 100_000,
            b'{"model": "m", "input": "Hi. ", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        ):
            async with client.post(f"{server.base_url}{SPEECH}", data=body) as response:
                assert response.status == 400
                error = (await response.json())["error"]
                assert error["type"] == "invalid_request_error"
                assert "too deeply" in error["message"]
    assert server.service.active_sessions == 0


async def test_a_websocket_message_nested_too_deeply_is_invalid_argument(
    start_web: StartWeb,
) -> None:
    server = await start_web()
    async with open_socket(server.stream_url) as socket:
        await socket.ws.send_str("[" * 100_000)
        closed = await socket.rest()
    assert closed.statuses == ["INVALID_ARGUMENT"]
    assert closed.close_code == 4003
    assert "too deeply" in closed.responses[0].error.message


async def _send_raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def test_a_body_sent_too_slowly_gets_408_and_frees_its_place(
    start_http: StartHttp,
) -> None:
    server = await start_http(tone_service(max_sessions=1), start_timeout_s=0.5)
    assert server.parts.http is not None
    port = server.parts.http.port
    # The headers promise 100 bytes; one comes, the rest never does.
    reader, writer = await _send_raw(
        port,
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{",
    )
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r")[0])
        body = await reader.readexactly(length)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    error = json.loads(body)["error"]
    assert error["code"] == "deadline_exceeded"
    assert "did not arrive within 0.5 s" in error["message"]
    assert server.service.active_sessions == 0
    # The one place is free for the next caller.
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            f"{server.base_url}{SPEECH}", json={"model": "m", "input": "Hi. ", "voice": ""}
        ) as response,
    ):
        assert response.status == 200
        await response.read()


def _connections(server: HttpServer | WebServer) -> int:
    """The HTTP listener's open connections."""
    assert server.parts.http is not None
    handler = server.parts.http._runner.server
    return len(handler.connections) if handler is not None else 0


def _unread_socket(port: int, request: bytes) -> socket.socket:
    """A client that sends `request` and then never reads (a small receive buffer, so
    the server's writes back up soon)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


async def test_a_speech_client_that_never_reads_loses_its_place_then_its_connection(
    start_http: StartHttp,
) -> None:
    server = await start_http(send_timeout_s=0.5)
    assert server.parts.http is not None
    # Minutes of audio, far more than the sockets' buffers hold.
    body = json.dumps({"model": "m", "input": "Words and more words. " * 2000}).encode()
    sock = _unread_socket(
        server.parts.http.port,
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    try:
        await wait_for(lambda: server.service.active_sessions == 1)
        await wait_for(lambda: server.service.active_sessions == 0)  # the send timeout
        # One more send timeout, and the connection is gone too.
        await wait_for(lambda: _connections(server) == 0)
    finally:
        sock.close()


async def test_a_websocket_client_that_never_reads_loses_its_place_then_its_connection(
    start_web: StartWeb,
) -> None:
    server = await start_web(send_timeout_s=0.5)
    port = int(server.base.rpartition(":")[2])
    upgrade = (
        b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    messages: list[dict[str, object]] = [
        {"config": {}},
        {"text": "Words and more words. " * 700},
        {"turn_done": {}},
    ]
    frames = b"".join(_masked_text_frame(json.dumps(message).encode()) for message in messages)
    sock = _unread_socket(port, upgrade + frames)
    try:
        await wait_for(lambda: server.service.active_sessions == 1)
        await wait_for(lambda: server.service.active_sessions == 0)
        await wait_for(lambda: _connections(server) == 0)
    finally:
        sock.close()


def _masked_text_frame(payload: bytes) -> bytes:
    """One client text frame (a client's frames are masked; a zero mask keeps it plain)."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + struct.pack(">H", size)
    else:
        length = bytes([0x80 | 127]) + struct.pack(">Q", size)
    return b"\x81" + length + b"\0\0\0\0" + payload


async def test_an_input_at_the_limit_escaped_as_surrogate_pairs_is_spoken_not_413(
    start_http: StartHttp,
) -> None:
    from voxrelay_server.settings import MAX_WHOLE_TEXT_CHARS

    server = await start_http()
    text = "\U0001f600" * (MAX_WHOLE_TEXT_CHARS - 1) + " "
    # Python's json.dumps escapes each emoji as a surrogate pair: 12 bytes a character.
    body = json.dumps({"model": "m", "input": text, "voice": ""}).encode()
    assert len(body) > 12 * MAX_WHOLE_TEXT_CHARS - 12
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{server.base_url}{SPEECH}", data=body) as response,
    ):
        assert response.status == 200, await response.text()
        assert await response.content.readany()
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{server.base_url}{SPEECH}", data=body + b" " * 70_000) as response,
    ):
        assert response.status == 413  # beyond the text and the room for other fields


def test_the_memory_bound_counts_the_json_body_a_speech_request_keeps() -> None:
    from voxrelay_server.memory import memory_bound

    def text_bound(*, http: bool) -> int:
        return memory_bound(
            max_sessions=10,
            piper_runs=0,
            engines=(),
            session_audio_buffer_bytes=0,
            max_buffered_text_chars=0,
            http=http,
        ).session_text

    assert text_bound(http=True) == 2 * text_bound(http=False) == 10 * 1_000_000 * 16


async def test_a_connection_without_a_whole_request_is_closed_after_the_start_timeout(
    start_http: StartHttp,
) -> None:
    server = await start_http(start_timeout_s=0.5)
    assert server.parts.http is not None
    port = server.parts.http.port
    silent = await _send_raw(port, b"")
    partial = await _send_raw(port, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    idle = await _send_raw(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        assert (await idle[0].readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await wait_for(lambda: _connections(server) == 3)
        # Not aiohttp's 75 s: each is closed by the server within about the start timeout.
        for reader, _ in (silent, partial, idle):
            await asyncio.wait_for(reader.read(), 3)
        assert _connections(server) == 0
    finally:
        for _, writer in (silent, partial, idle):
            writer.close()
