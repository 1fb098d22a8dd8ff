"""`session_started`: the first message of every call whose session opens, over real
gRPC (that the server's logs name the session by its id: test_observability)."""

from __future__ import annotations

import grpc

import voxrelay
from tests.conftest import RunningServer, StartServer, collect, config, read_rest, text
from voxrelay.v1 import speech_pb2
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ as TONE_RATE_HZ
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE


def kinds(responses: list[speech_pb2.StreamResponse]) -> list[str]:
    return [str(response.WhichOneof("response")) for response in responses]


async def test_synthesize_starts_with_session_started_naming_the_defaults(
    tone_server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(tone_server.target) as channel:
        request = speech_pb2.SynthesizeRequest(text="One sentence. Two sentences. ")
        responses = [r async for r in tone_server.stub(channel).Synthesize(request)]
    assert kinds(responses)[0] == "session_started"
    assert kinds(responses).count("session_started") == 1
    started = responses[0].session_started
    assert started.voice == TONE_VOICE
    assert started.encoding == speech_pb2.AUDIO_ENCODING_PCM_S16LE  # unset means this
    assert started.sample_rate_hz == TONE_RATE_HZ  # 0 means the voice's native rate
    assert started.text_budget_chars == SessionLimits().max_buffered_text_chars


async def test_sessions_get_distinct_ids(tone_server: RunningServer) -> None:
    ids = set()
    async with grpc.aio.insecure_channel(tone_server.target) as channel:
        for _ in range(5):
            responses = await collect(tone_server.stub(channel), [text("Hi. ")])
            ids.add(responses[0].session_started.session_id)
    assert len(ids) == 5


async def test_the_opus_rate_chosen_is_the_one_announced(start_server: StartServer) -> None:
    server = await start_server()
    opus = speech_pb2.AudioFormat(encoding=speech_pb2.AUDIO_ENCODING_OGG_OPUS)
    async with grpc.aio.insecure_channel(server.target) as channel:
        responses = await collect(server.stub(channel), [config(audio_format=opus), text("Hi. ")])
    started = responses[0].session_started
    assert started.encoding == speech_pb2.AUDIO_ENCODING_OGG_OPUS
    assert started.sample_rate_hz == 16000  # the lowest Opus rate at or above 16 kHz
    assert {r.audio.sample_rate_hz for r in responses if r.HasField("audio")} == {16000}


async def test_a_call_refused_before_its_session_opens_gets_no_session_started(
    tone_server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(tone_server.target) as channel:
        call = tone_server.stub(channel).Stream(iter([config(voice="nope/none"), text("Hi.")]))
        responses = await read_rest(call)
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert kinds(responses) == ["error", "lifecycle"]


async def test_a_session_failing_on_its_first_text_still_starts_with_it(
    tone_server: RunningServer,
) -> None:
    """The session opened (the config was good): its first text is refused after."""
    async with grpc.aio.insecure_channel(tone_server.target) as channel:
        call = tone_server.stub(channel).Stream(iter([config(), text("x" * 20000)]))
        responses = await read_rest(call)
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert kinds(responses) == ["session_started", "error", "lifecycle"]


async def test_the_client_yields_it_first_and_keeps_it(tone_server: RunningServer) -> None:
    async with (
        voxrelay.AsyncClient(tone_server.target) as client,
        client.session(encoding="alaw", sample_rate_hz=8000) as session,
    ):
        await session.send_text("Hello. ")
        await session.close()
        events = [event async for event in session]
    first = events[0]
    assert isinstance(first, voxrelay.SessionStarted)
    assert session.started == first
    assert (first.voice, first.encoding, first.sample_rate_hz) == (TONE_VOICE, "alaw", 8000)
    assert sum(isinstance(event, voxrelay.SessionStarted) for event in events) == 1
