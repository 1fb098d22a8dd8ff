"""What the worst legal (or nearly legal) HTTP and WebSocket requests cost the server:
each is refused with a clear status, bounded in time, and frees its session's place,
over real sockets."""

from __future__ import annotations

import aiohttp

from tests.test_http import StartHttp, start_http
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
