"""The OpenAI-compatible engine against a real local speech endpoint.

A fake `POST /audio/speech` server runs on a free loopback port in a background
thread. It records every request and streams a deterministic 24 kHz int16 ramp
back with `Transfer-Encoding: chunked`, in chunks of odd byte lengths, so sample
boundaries fall inside chunks. Tests drive the engine directly, through
`OpenAIEngine.from_env` and `build_engines`, and end to end over real gRPC.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
import pytest_asyncio

from tests.conftest import (
    StartServer,
    audio_of,
    collect,
    config,
    lifecycle_of,
    text,
    turn_done,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.app import build_engines
from voxrelay_server.config import ServerSettings, from_env
from voxrelay_server.engines.base import SynthesisOptions, VoiceInfo
from voxrelay_server.engines.openai_engine import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    OpenAIEngine,
)
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.errors import EngineError, ErrorCode, SpeechError
from voxrelay_server.voices import VoiceCatalog

pytestmark = pytest.mark.timeout(30)

API_KEY = "sk-test-key"
RAMP_SAMPLES = 4800
"""0.2 s at 24 kHz."""
PCM = ((np.arange(RAMP_SAMPLES, dtype=np.int64) * 97) % 65536 - 32768).astype("<i2").tobytes()
"""What the fake endpoint speaks: distinct, deterministic int16 LE samples."""
CHUNK_LENGTHS = (1, 2, 3, 1000, 5, 2047)
"""Leading chunk sizes of the streamed body (odd ones split samples); the rest is one chunk."""


def _chunks(data: bytes) -> list[bytes]:
    chunks, start = [], 0
    for length in CHUNK_LENGTHS:
        chunks.append(data[start : start + length])
        start += length
    chunks.append(data[start:])
    return chunks


@dataclass
class RecordedRequest:
    """One request the fake endpoint received."""

    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: dict[str, object]


@dataclass
class FakeSpeechEndpoint:
    """What the fake serves and what it was asked."""

    base_url: str = ""
    status: int = 200
    error_text: str = ""
    compress: bool = False
    """Gzip the PCM body when the client's Accept-Encoding allows it, as real servers may."""
    requests: list[RecordedRequest] = field(default_factory=list)

    def fail_with(self, status: int, error_text: str) -> None:
        self.status = status
        self.error_text = error_text


class _SpeechServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, endpoint: FakeSpeechEndpoint) -> None:
        super().__init__(("127.0.0.1", 0), _SpeechHandler)
        self.endpoint = endpoint


class _SpeechHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfer encoding needs HTTP/1.1

    def do_POST(self) -> None:
        server = self.server
        assert isinstance(server, _SpeechServer)
        endpoint = server.endpoint
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        headers = {name.lower(): value for name, value in self.headers.items()}
        endpoint.requests.append(RecordedRequest(self.path, headers, body))
        if endpoint.status != 200:
            payload = endpoint.error_text.encode()
            self.send_response(endpoint.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        body_bytes = PCM
        self.send_response(200)
        self.send_header("Content-Type", "audio/pcm")
        if endpoint.compress and "gzip" in headers.get("accept-encoding", ""):
            body_bytes = gzip.compress(PCM)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in _chunks(body_bytes):
            self.wfile.write(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[FakeSpeechEndpoint]:
    """A fake speech endpoint on a free loopback port, serving until the test ends."""
    fake = FakeSpeechEndpoint()
    server = _SpeechServer(fake)
    host, port = server.server_address[:2]
    fake.base_url = f"http://{host!s}:{port}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


@pytest_asyncio.fixture
async def engine(endpoint: FakeSpeechEndpoint) -> AsyncIterator[OpenAIEngine]:
    openai = OpenAIEngine(base_url=endpoint.base_url, api_key=API_KEY)
    yield openai
    await openai.aclose()


def voice_named(engine: OpenAIEngine, name: str) -> VoiceInfo:
    return next(voice for voice in engine.voices() if voice.name == name)


async def synthesize_chunks(
    engine: OpenAIEngine, text_in: str, options: SynthesisOptions
) -> list[bytes]:
    voice = voice_named(engine, "openai/alloy")
    return [chunk async for chunk in engine.synthesize(voice, text_in, options)]


# Direct use of the engine.


async def test_streams_exactly_the_served_pcm(
    engine: OpenAIEngine, endpoint: FakeSpeechEndpoint
) -> None:
    chunks = await synthesize_chunks(engine, "Hello there.", SynthesisOptions())

    assert b"".join(chunks) == PCM
    assert len(chunks) > 1, "the body should arrive as it streams, not in one piece"
    assert any(len(chunk) % 2 for chunk in chunks), "the fake must exercise split samples"


async def test_request_carries_path_body_and_bearer_key(
    engine: OpenAIEngine, endpoint: FakeSpeechEndpoint
) -> None:
    await synthesize_chunks(engine, "Hello there.", SynthesisOptions(1.5, "calm"))

    [request] = endpoint.requests
    assert request.path == "/v1/audio/speech"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": DEFAULT_MODEL,
        "input": "Hello there.",
        "voice": "alloy",
        "response_format": "pcm",
        "speed": 1.5,
        "instructions": "calm",
    }


async def test_empty_instructions_are_left_out(
    engine: OpenAIEngine, endpoint: FakeSpeechEndpoint
) -> None:
    await synthesize_chunks(engine, "Plain.", SynthesisOptions(speed=0.75))

    [request] = endpoint.requests
    assert "instructions" not in request.body
    assert request.body["speed"] == 0.75
    assert request.body["input"] == "Plain."


async def test_no_api_key_sends_no_authorization(endpoint: FakeSpeechEndpoint) -> None:
    keyless = OpenAIEngine(base_url=endpoint.base_url + "/", model="local-tts", voices=["joe"])
    try:
        voice = voice_named(keyless, "openai/joe")
        chunks = [chunk async for chunk in keyless.synthesize(voice, "Hi.", SynthesisOptions())]
    finally:
        await keyless.aclose()

    assert b"".join(chunks) == PCM
    [request] = endpoint.requests
    assert request.path == "/v1/audio/speech", "a trailing slash must not double up"
    assert "authorization" not in request.headers
    assert request.body["model"] == "local-tts"
    assert request.body["voice"] == "joe"


async def test_compressed_response_is_decoded(
    engine: OpenAIEngine, endpoint: FakeSpeechEndpoint
) -> None:
    endpoint.compress = True

    chunks = await synthesize_chunks(engine, "Squeeze.", SynthesisOptions())

    [request] = endpoint.requests
    assert "gzip" in request.headers.get("accept-encoding", ""), "compression not exercised"
    assert b"".join(chunks) == PCM


async def test_voices_are_named_under_the_engine_at_24_khz() -> None:
    engine = OpenAIEngine(base_url="http://127.0.0.1:9", voices=["alloy", "nova"])
    voices = engine.voices()
    await engine.aclose()

    assert [v.name for v in voices] == ["openai/alloy", "openai/nova"]
    assert [v.voice_id for v in voices] == ["alloy", "nova"]
    assert {v.engine for v in voices} == {"openai"}
    assert {v.native_sample_rate_hz for v in voices} == {24000}


# Error mapping.


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, ErrorCode.INVALID_ARGUMENT),
        (401, ErrorCode.UNAUTHENTICATED),
        (403, ErrorCode.PERMISSION_DENIED),
        (404, ErrorCode.FAILED_PRECONDITION),
        (429, ErrorCode.RESOURCE_EXHAUSTED),
        (500, ErrorCode.UNAVAILABLE),
        (503, ErrorCode.UNAVAILABLE),
    ],
)
async def test_http_status_maps_to_error_code(
    engine: OpenAIEngine, endpoint: FakeSpeechEndpoint, status: int, code: ErrorCode
) -> None:
    detail = f'{{"error": {{"message": "endpoint says no ({status})"}}}}'
    endpoint.fail_with(status, detail)

    with pytest.raises(EngineError) as caught:
        await synthesize_chunks(engine, "Hello.", SynthesisOptions())

    assert caught.value.code is code
    assert f"endpoint says no ({status})" in caught.value.message
    assert str(status) in caught.value.message
    assert len(endpoint.requests) == 1


async def test_nothing_listening_is_unavailable_and_names_the_setting() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = unused.getsockname()[1]
        dead = OpenAIEngine(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY)
        try:
            with pytest.raises(EngineError) as caught:
                await synthesize_chunks(dead, "Hello.", SynthesisOptions())
        finally:
            await dead.aclose()

    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert "VOXRELAY_OPENAI_BASE_URL" in caught.value.message
    assert f"127.0.0.1:{port}" in caught.value.message


# Configuration from the environment.


def openai_from_env(env: Mapping[str, str]) -> OpenAIEngine | None:
    """The openai engine a server started with `env` would have, or None."""
    engines, _ = build_engines(from_env(env, engines=("openai",)), env)
    if not engines:
        return None
    assert isinstance(engines[0], OpenAIEngine)
    return engines[0]


def test_from_env_without_settings_is_disabled() -> None:
    assert openai_from_env({}) is None
    assert openai_from_env({"VOXRELAY_OPENAI_VOICES": "a,b"}) is None


async def test_from_env_with_a_base_url_is_enabled() -> None:
    engine = openai_from_env({"VOXRELAY_OPENAI_BASE_URL": "http://127.0.0.1:9/v1/"})
    assert engine is not None
    try:
        assert engine.base_url == "http://127.0.0.1:9/v1"
        assert engine.model == DEFAULT_MODEL
        assert "openai/alloy" in [v.name for v in engine.voices()]
    finally:
        await engine.aclose()


async def test_from_env_with_only_a_key_uses_openai() -> None:
    engine = openai_from_env({"OPENAI_API_KEY": "sk-x"})
    assert engine is not None
    try:
        assert engine.base_url == DEFAULT_BASE_URL
    finally:
        await engine.aclose()


async def test_from_env_voices_list() -> None:
    engine = openai_from_env(
        {"VOXRELAY_OPENAI_BASE_URL": "http://127.0.0.1:9", "VOXRELAY_OPENAI_VOICES": "a, b,,"}
    )
    assert engine is not None
    try:
        assert [v.name for v in engine.voices()] == ["openai/a", "openai/b"]
    finally:
        await engine.aclose()


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"OPENAI_API_KEY": "sk-fallback"}, "sk-fallback"),
        ({"OPENAI_API_KEY": "sk-fallback", "VOXRELAY_OPENAI_API_KEY": "sk-own"}, "sk-own"),
    ],
)
async def test_from_env_key_reaches_the_endpoint(
    endpoint: FakeSpeechEndpoint, keys: Mapping[str, str], expected: str
) -> None:
    env = {
        **keys,
        "VOXRELAY_OPENAI_BASE_URL": endpoint.base_url,
        "VOXRELAY_OPENAI_MODEL": "tts-local",
    }
    engine = openai_from_env(env)
    assert engine is not None
    try:
        chunks = await synthesize_chunks(engine, "Key check.", SynthesisOptions())
    finally:
        await engine.aclose()

    assert b"".join(chunks) == PCM
    [request] = endpoint.requests
    assert request.headers["authorization"] == f"Bearer {expected}"
    assert request.body["model"] == "tts-local"


# End to end over gRPC.


def _s16le(**fields: object) -> speech_pb2.StreamRequest:
    audio_format = speech_pb2.AudioFormat(encoding=speech_pb2.AUDIO_ENCODING_PCM_S16LE)
    return config(voice="openai/alloy", audio_format=audio_format, **fields)


async def test_grpc_stream_relays_the_endpoint_audio(
    start_server: StartServer, engine: OpenAIEngine, endpoint: FakeSpeechEndpoint
) -> None:
    running = await start_server(extra_engines=[engine])
    requests = [
        _s16le(speed=1.25, instructions="warmly"),
        text("Hello from the fake endpoint."),
        turn_done(),
    ]
    async with grpc.aio.insecure_channel(running.target) as channel:
        responses = await collect(speech_pb2_grpc.SpeechStub(channel), requests)

    assert lifecycle_of(responses) == [
        ("started", 1, False),
        ("ended", 1, False),
        ("session_ended", 0, False),
    ]
    assert not [r for r in responses if r.WhichOneof("response") == "error"]
    chunks = audio_of(responses)
    assert chunks
    assert {c.sample_rate_hz for c in chunks} == {24000}
    assert {c.encoding for c in chunks} == {speech_pb2.AUDIO_ENCODING_PCM_S16LE}
    assert {(c.turn, c.segment) for c in chunks} == {(1, 1)}
    assert all(len(c.data) % 2 == 0 for c in chunks), "a chunk split a sample"
    assert b"".join(c.data for c in chunks) == PCM
    offsets = [c.offset_samples for c in chunks]
    assert offsets == [sum(len(c.data) // 2 for c in chunks[:i]) for i in range(len(chunks))]

    [request] = endpoint.requests
    assert request.body["input"] == "Hello from the fake endpoint."
    assert request.body["voice"] == "alloy"
    assert request.body["speed"] == 1.25
    assert request.body["instructions"] == "warmly"


async def test_grpc_stream_reports_endpoint_failure(
    start_server: StartServer, engine: OpenAIEngine, endpoint: FakeSpeechEndpoint
) -> None:
    endpoint.fail_with(500, "upstream exploded")
    running = await start_server(extra_engines=[engine])
    responses: list[speech_pb2.StreamResponse] = []
    async with grpc.aio.insecure_channel(running.target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        call = stub.Stream(iter([_s16le(), text("Hello."), turn_done()]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for response in call:
                responses.append(response)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "upstream exploded" in (caught.value.details() or "")
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds == ["session_started", "lifecycle", "error", "lifecycle"]
    error = responses[2].error
    assert (error.code, error.turn, error.segment) == (14, 1, 1)
    assert "upstream exploded" in error.message
    assert lifecycle_of(responses) == [("started", 1, False), ("session_ended", 0, False)]
    assert len(endpoint.requests) == 1


# Wiring through the app.


def test_build_engines_reports_unconfigured_openai() -> None:
    engines, unconfigured = build_engines(ServerSettings(engines=("openai",)), env={})

    assert engines == []
    assert set(unconfigured) == {"openai", "piper", "espeak", "tone"}
    assert "VOXRELAY_OPENAI_API_KEY" in unconfigured["openai"]
    assert "--engines openai,piper loads it" in unconfigured["piper"]

    catalog = VoiceCatalog([ToneEngine()], TONE_VOICE, unconfigured)
    with pytest.raises(SpeechError) as caught:
        catalog.resolve("openai/alloy")
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION
    assert caught.value.message == unconfigured["openai"]


async def test_build_engines_enables_openai_from_env(endpoint: FakeSpeechEndpoint) -> None:
    env = {"VOXRELAY_OPENAI_BASE_URL": endpoint.base_url, "VOXRELAY_OPENAI_VOICES": "alloy"}
    engines, unconfigured = build_engines(from_env(env, engines=("openai",)), env=env)
    try:
        assert "openai" not in unconfigured
        [engine] = engines
        assert isinstance(engine, OpenAIEngine)
        catalog = VoiceCatalog([ToneEngine(), engine], TONE_VOICE, unconfigured)
        resolved, voice = catalog.resolve("openai/alloy")
        assert resolved is engine
        chunks = [c async for c in engine.synthesize(voice, "Wired.", SynthesisOptions())]
    finally:
        for built in engines:
            await built.aclose()

    assert b"".join(chunks) == PCM


async def test_grpc_word_timestamps_with_a_voice_without_them_sends_no_words(
    start_server: StartServer, engine: OpenAIEngine
) -> None:
    """The endpoint reports no timing: the session is served as without the field."""
    running = await start_server(extra_engines=[engine])
    requests = [_s16le(word_timestamps=True), text("Hello from the fake endpoint."), turn_done()]
    async with grpc.aio.insecure_channel(running.target) as channel:
        responses = await collect(speech_pb2_grpc.SpeechStub(channel), requests)
    assert b"".join(c.data for c in audio_of(responses)) == PCM
    assert not [r for r in responses if r.WhichOneof("response") == "words"]
