"""Shared fixtures: real voxrelay servers on free loopback ports, real gRPC clients."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio

from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.app import create_server
from voxrelay_server.config import ServerSettings
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.piper_engine import PiperEngine, bundled_joe_voice
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.service import ObserverFactory, SpeechService
from voxrelay_server.voices import VoiceCatalog

if TYPE_CHECKING:
    from voxrelay.v1.speech_pb2_grpc import SpeechAsyncStub

Request = speech_pb2.StreamRequest
Response = speech_pb2.StreamResponse


@dataclass
class RunningServer:
    """A started server, its address and the engines behind it."""

    target: str
    server: grpc.aio.Server
    service: SpeechService
    tone: ToneEngine

    def stub(self, channel: grpc.aio.Channel) -> SpeechAsyncStub:
        return speech_pb2_grpc.SpeechStub(channel)


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture(scope="session")
def piper_engine() -> PiperEngine:
    """The real default voice, loaded once for the whole test run."""
    return PiperEngine([bundled_joe_voice()], workers=os.cpu_count() or 1)


@pytest.fixture(scope="session")
def espeak_engine() -> EspeakEngine:
    return EspeakEngine()


@pytest_asyncio.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start servers on free ports; each gets a fresh tone engine configured by keywords."""
    started: list[RunningServer] = []

    async def start(
        *,
        extra_engines: Sequence[SpeechEngine] = (),
        default_voice: str = TONE_VOICE,
        max_inflight_segments: int = 4,
        unconfigured: dict[str, str] | None = None,
        max_sessions: int = 256,
        limits: SessionLimits | None = None,
        observer_factory: ObserverFactory | None = None,
        start_timeout_s: float = 30.0,
        send_timeout_s: float = 30.0,
        **tone_settings: float,
    ) -> RunningServer:
        tone = ToneEngine(**tone_settings)  # type: ignore[arg-type]
        catalog = VoiceCatalog([tone, *extra_engines], default_voice, unconfigured)
        service = SpeechService(
            catalog,
            default_max_inflight_segments=max_inflight_segments,
            max_sessions=max_sessions,
            limits=limits,
            observer_factory=observer_factory,
        )
        settings = ServerSettings(
            listen="127.0.0.1:0", start_timeout_s=start_timeout_s, send_timeout_s=send_timeout_s
        )
        server, port = create_server(service, settings)
        await server.start()
        running = RunningServer(f"127.0.0.1:{port}", server, service, tone)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.server.stop(grace=None)


@pytest_asyncio.fixture
async def tone_server(start_server: StartServer) -> RunningServer:
    """A server whose default voice is the instant tone engine."""
    return await start_server()


@pytest_asyncio.fixture
async def channel(tone_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(tone_server.target) as open_channel:
        yield open_channel


def text(value: str) -> Request:
    return Request(text=value)


def turn_done() -> Request:
    return Request(turn_done=speech_pb2.TurnDone())


def cancel() -> Request:
    return Request(cancel=speech_pb2.Cancel())


def config(**fields: object) -> Request:
    audio_format = fields.pop("audio_format", None)
    session = speech_pb2.SessionConfig(**fields)  # type: ignore[arg-type]
    if audio_format is not None:
        session.audio_format.CopyFrom(audio_format)  # type: ignore[arg-type]
    return Request(config=session)


async def collect(stub: SpeechAsyncStub, requests: Sequence[Request]) -> list[Response]:
    """Send `requests`, half-close, and return every response until the call ends OK."""
    call = stub.Stream(iter(requests))
    return [response async for response in call]


def lifecycle_of(responses: Sequence[Response]) -> list[tuple[str, int, bool]]:
    """(event name, turn, cancelled) of every lifecycle message, in order."""
    names = {
        speech_pb2.LIFECYCLE_EVENT_TURN_STARTED: "started",
        speech_pb2.LIFECYCLE_EVENT_TURN_ENDED: "ended",
        speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED: "session_ended",
    }
    return [
        (names[r.lifecycle.event], r.lifecycle.turn, r.lifecycle.cancelled)
        for r in responses
        if r.WhichOneof("response") == "lifecycle"
    ]


def audio_of(responses: Sequence[Response]) -> list[speech_pb2.AudioChunk]:
    return [r.audio for r in responses if r.WhichOneof("response") == "audio"]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a state change that has no event of its own (yielding, not sleeping blind)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def read_one(call: grpc.aio.StreamStreamCall[Request, Response]) -> Response:
    """The next response of a read/write-style call; fails at the end of the stream."""
    response = await call.read()
    assert isinstance(response, Response), "the stream ended early"
    return response


async def read_rest(call: grpc.aio.StreamStreamCall[Request, Response]) -> list[Response]:
    """Read a read/write-style call to its end (such calls cannot be iterated).

    A non-OK status does not raise: check `await call.code()`.
    """
    responses = []
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, Response)
            responses.append(response)
    except grpc.aio.AioRpcError:
        pass
    return responses
