"""A WebSocket client for the tests: one `/v1/stream` socket, its messages as
`StreamResponse`s (audio with its binary data put back), and how it closed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.protobuf import json_format

from voxrelay.v1 import speech_pb2

Response = speech_pb2.StreamResponse


@dataclass
class Closed:
    """Everything a socket received, and how it ended."""

    responses: list[Response] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    statuses: list[str] = field(default_factory=list)
    """`error.status` of each error message (the name of its code)."""


def request(**fields: Any) -> str:
    """A client message: a StreamRequest's JSON mapping, or `end`/`authorization`."""
    return json.dumps(fields)


class Socket:
    """One `/v1/stream` WebSocket: send JSON messages, read responses in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.closed = Closed()

    async def send(self, **fields: Any) -> None:
        await self.ws.send_str(request(**fields))

    async def send_all(self, messages: Sequence[dict[str, Any]]) -> None:
        for message in messages:
            await self.ws.send_str(json.dumps(message))

    async def next(self) -> Response | None:
        """The next response (audio with its data), or None once the socket closed."""
        message = await self.ws.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            body = json.loads(message.data)
            if "error" in body:
                self.closed.statuses.append(body["error"].pop("status"))
            response = json_format.ParseDict(body, Response())
            if response.WhichOneof("response") == "audio":
                data = await self.ws.receive()
                assert data.type is aiohttp.WSMsgType.BINARY, "an audio header without its data"
                response.audio.data = data.data
            self.closed.responses.append(response)
            return response
        assert message.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ), f"unexpected {message.type}"
        self.closed.close_code = self.ws.close_code
        self.closed.close_reason = str(message.extra or "")
        return None

    async def rest(self) -> Closed:
        """Read until the server closes the socket."""
        while await self.next() is not None:
            pass
        return self.closed


@asynccontextmanager
async def open_socket(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Socket]:
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(url, headers=headers, protocols=("voxrelay.v1",)) as ws,
    ):
        yield Socket(ws)


async def exchange(
    url: str, messages: Sequence[dict[str, Any]], headers: dict[str, str] | None = None
) -> Closed:
    """Send `messages`, then read everything until the server closes the socket."""
    async with open_socket(url, headers) as socket:
        await socket.send_all(messages)
        return await socket.rest()
