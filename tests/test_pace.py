"""`SessionConfig.pace`: audio at real-time pace, a bounded lead ahead of a listener,
over real gRPC on loopback (and the dispatcher's memory under it, on its own).

Timing is checked by ratios and by how far ahead of real time the audio arrives (an
upper bound, which a slow machine only makes easier to keep), not by wall-clock
deadlines."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.conftest import (
    Request,
    RunningServer,
    StartServer,
    config,
    read_one,
    read_rest,
    text,
    turn_done,
)
from tests.test_dispatcher import make_dispatcher
from voxrelay.v1 import speech_pb2
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ, ToneEngine
from voxrelay_server.events import AudioOut, TurnEnded
from voxrelay_server.playback import PACE_LEAD_S, Pacer

REALTIME = speech_pb2.PACE_REALTIME
SENTENCES = speech_pb2.SEGMENTATION_SENTENCES
CHUNK_MS = 20
TOLERANCE_S = 0.1
"""How much later than its pages' siblings the first message may arrive (a busy loop)."""


def sentences(count: int) -> str:
    return "".join(f"Sentence number {n} is here. " for n in range(count))


async def received_in_time(
    server: RunningServer, requests: list[Request]
) -> tuple[list[tuple[float, speech_pb2.StreamResponse]], grpc.StatusCode]:
    """Each response with when it arrived (`time.monotonic()`), and the call's status."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream(iter(requests))
        arrived = [(time.monotonic(), response) async for response in call]
        return arrived, await call.code()


async def test_paced_audio_keeps_real_time_within_the_lead(start_server: StartServer) -> None:
    server = await start_server()  # an instant engine: unpaced, it all comes at once
    words = sentences(6)  # about 1.8 s of tone
    arrived, code = await received_in_time(
        server, [config(pace=REALTIME, chunk_ms=CHUNK_MS), text(words), turn_done()]
    )
    assert code == grpc.StatusCode.OK
    started = arrived[0][1].session_started
    assert started.pace_lead_ms == round(PACE_LEAD_S * 1000)
    audio = [(at, r.audio) for at, r in arrived if r.HasField("audio")]
    first_at = audio[0][0]
    heard_s = 0.0
    for at, chunk in audio:
        heard_s += len(chunk.data) / 2 / SAMPLE_RATE_HZ
        # Never more in hand than the lead and the message itself.
        assert heard_s - (at - first_at) <= PACE_LEAD_S + CHUNK_MS / 1000 + TOLERANCE_S
    total_s = heard_s
    places = {(chunk.text_offset, chunk.text_length) for _, chunk in audio}
    made = sum(server.tone.samples_for(words[o : o + n]) for o, n in places)
    assert sum(len(chunk.data) // 2 for _, chunk in audio) == made  # nothing dropped
    # Paced: the audio took about its own duration (less the lead) to arrive.
    ratio = total_s / (audio[-1][0] - first_at)
    assert 0.7 < ratio < 1.5, ratio
    # TURN_ENDED follows the last audio message.
    kinds = [r.WhichOneof("response") for _, r in arrived]
    assert kinds[-3:] == ["audio", "lifecycle", "lifecycle"]


async def test_as_made_is_the_default_and_unpaced(start_server: StartServer) -> None:
    """The same turn unpaced arrives many times faster than real time."""
    server = await start_server()
    words = sentences(6)
    arrived, code = await received_in_time(
        server, [config(chunk_ms=CHUNK_MS), text(words), turn_done()]
    )
    assert code == grpc.StatusCode.OK
    assert arrived[0][1].session_started.pace_lead_ms == 0
    audio = [(at, r.audio) for at, r in arrived if r.HasField("audio")]
    total_s = sum(len(chunk.data) for _, chunk in audio) / 2 / SAMPLE_RATE_HZ
    assert total_s / max(audio[-1][0] - audio[0][0], 1e-3) > 3


async def test_cancel_under_pace_drops_the_audio_the_server_holds(
    start_server: StartServer,
) -> None:
    server = await start_server()
    words = sentences(20)  # about 6 s of tone
    whole_s = server.tone.samples_for(words) / SAMPLE_RATE_HZ
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(config(pace=REALTIME, chunk_ms=CHUNK_MS, segmentation=SENTENCES))
        for sentence in words.split(". ")[:-1]:  # a sentence a segment
            await call.write(text(sentence + ". "))
        assert (await read_one(call)).HasField("session_started")
        assert (await read_one(call)).HasField("lifecycle")  # TURN_STARTED
        received_s, first_at = 0.0, None
        while received_s < 0.6:  # a real-time listener plays the first 0.6 s...
            chunk = (await read_one(call)).audio
            first_at = first_at or time.monotonic()
            received_s += len(chunk.data) / 2 / SAMPLE_RATE_HZ
        cancelled_at = time.monotonic()
        await call.write(Request(cancel=speech_pb2.Cancel()))  # ...and the user barges in
        await call.done_writing()
        rest = await read_rest(call)
        ended_at = time.monotonic()
        assert await call.code() == grpc.StatusCode.OK
    assert first_at is not None
    received_s += sum(len(r.audio.data) for r in rest if r.HasField("audio")) / 2 / SAMPLE_RATE_HZ
    # What came after the cancel is at most what was already on its way: the held-back
    # audio was dropped, and the end did not wait for it.
    assert received_s <= (cancelled_at - first_at) + PACE_LEAD_S + 2 * CHUNK_MS / 1000 + 0.2
    assert received_s < whole_s / 3
    assert ended_at - cancelled_at < 1.0  # not the 5 s the rest would have taken
    (ended,) = [
        r.lifecycle for r in rest if r.lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_ENDED
    ]
    assert ended.cancelled
    # Without played_samples: the sentences delivered whole, within the lead of what
    # was heard.
    assert words.startswith(ended.spoken_text)
    heard = [s for s in words.split(". ") if s]
    assert 0 < len(ended.spoken_text) < len(words) // 3
    assert ended.spoken_text.endswith(".") and ended.spoken_text.count(".") < len(heard)


async def test_an_unknown_pace_is_refused(tone_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(tone_server.target) as channel:
        call = tone_server.stub(channel).Stream(iter([config(pace=7), text("Hi. ")]))
        responses = await read_rest(call)
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pace 7 is unknown" in responses[0].error.message


@pytest.mark.timeout(60)
async def test_paced_delivery_keeps_the_sessions_audio_within_its_buffer() -> None:
    """Audio is made faster than it is paced out: the session's audio buffer, not the
    pace, bounds what waits, so a paced session costs no more memory than another."""
    limit = 8000  # 0.25 s of 16 kHz audio
    tone = ToneEngine(realtime_factor=0.02)  # 50x real time, in 20 ms frames
    session = make_dispatcher(
        tone, max_inflight=4, min_chars=1, limits=SessionLimits(audio_buffer_bytes=limit)
    )
    session.pacer = Pacer(lead_s=0.05)
    words = sentences(8)  # about 2.4 s of tone, 77 KB
    session.send_text(words)
    session.close()
    most = 0
    sent = 0
    ended = None
    async for event in session.events():
        most = max(most, session.buffered_audio_bytes)
        if isinstance(event, AudioOut):
            sent += len(event.data)
        elif isinstance(event, TurnEnded):
            ended = event
    await session.aclose()
    frame = SAMPLE_RATE_HZ * 2 * 20 // 1000
    assert sent > 4 * limit
    assert most <= 2 * limit + 5 * frame  # twice the buffer, a frame per segment made
    assert ended is not None and ended.spoken_text == words
