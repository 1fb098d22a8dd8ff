"""What the worst legal (or nearly legal) HTTP and WebSocket requests cost the server:
each is refused with a clear status, bounded in time, and frees its session's place,
over real sockets."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.test_http import StartHttp, start_http, tone_service
from tests.test_websocket import StartWeb, start_web
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
