"""The Stream rpc over real gRPC on loopback: order, lifecycle, barge-in, errors, formats."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import numpy as np
import pytest

from tests.conftest import (
    Request,
    Response,
    RunningServer,
    StartServer,
    audio_of,
    cancel,
    collect,
    config,
    lifecycle_of,
    read_one,
    read_rest,
    text,
    turn_done,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ, ToneEngine

S16 = speech_pb2.AUDIO_ENCODING_PCM_S16LE
F32 = speech_pb2.AUDIO_ENCODING_PCM_F32LE


async def test_multi_turn_lifecycle_and_order(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    turns = [
        ["[[latency_ms=60]]One alpha. ", "[[latency_ms=0]]One beta. "],
        ["[[latency_ms=40]]Two alpha. ", "[[latency_ms=20]]Two beta. ", "Two gamma."],
        ["Three alpha, never finished with a mark"],
    ]
    requests: list[Request] = [config(min_sentence_chars=1)]
    for chunks in turns:
        requests += [text(chunk) for chunk in chunks]
        requests.append(turn_done())
    requests.append(turn_done())  # no text since the last turn: nothing happens
    responses = await collect(tone_server.stub(channel), requests)

    assert lifecycle_of(responses) == [
        ("started", 1, False),
        ("ended", 1, False),
        ("started", 2, False),
        ("ended", 2, False),
        ("started", 3, False),
        ("ended", 3, False),
        ("session_ended", 0, False),
    ]
    current_turn = 0
    for response in responses:
        kind = response.WhichOneof("response")
        if (
            kind == "lifecycle"
            and response.lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_STARTED
        ):
            current_turn = response.lifecycle.turn
        if kind == "audio":
            assert response.audio.turn == current_turn  # audio only between its turn's marks
    for turn, chunks in enumerate(turns, start=1):
        chunk_list = [a for a in audio_of(responses) if a.turn == turn]
        assert [a.segment for a in chunk_list] == sorted(a.segment for a in chunk_list)
        expected = [ToneEngine.amplitude_for(c.strip()) for c in chunks]
        seen: list[int] = []
        offset = 0
        for chunk in chunk_list:
            assert chunk.offset_samples == offset
            assert chunk.sample_rate_hz == SAMPLE_RATE_HZ and chunk.encoding == S16
            offset += len(chunk.data) // 2
            amplitude = int(np.abs(np.frombuffer(chunk.data, dtype="<i2")).max())
            if not seen or seen[-1] != amplitude:
                seen.append(amplitude)
        assert seen == expected


async def test_text_is_read_while_the_previous_turn_speaks(start_server: StartServer) -> None:
    server = await start_server(ms_per_char=20, realtime_factor=1.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(config())
        await call.write(text("The first turn speaks for about a second."))
        await call.write(turn_done())
        while (await read_one(call)).WhichOneof("response") != "audio":
            pass
        # Turn 1 is speaking; the next turn's text is accepted and synthesized at once.
        await call.write(text("Second turn."))
        await call.write(turn_done())
        await call.done_writing()
        ended_turn_1_with_turn_2_started = None
        for response in await read_rest(call):
            lifecycle = response.lifecycle
            if response.WhichOneof("response") == "lifecycle" and lifecycle.turn == 1:
                ended_turn_1_with_turn_2_started = server.tone.stats.started == 2
        assert ended_turn_1_with_turn_2_started is True
        assert await call.code() == grpc.StatusCode.OK


async def test_half_close_speaks_buffered_text(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    responses = await collect(tone_server.stub(channel), [text("no full stop at the end")])
    samples = sum(len(a.data) // 2 for a in audio_of(responses))
    assert samples == tone_server.tone.samples_for("no full stop at the end")
    assert lifecycle_of(responses)[-2:] == [("ended", 1, False), ("session_ended", 0, False)]


async def test_a_stream_without_requests_ends_cleanly(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    responses = await collect(tone_server.stub(channel), [])
    assert lifecycle_of(responses) == [("session_ended", 0, False)]


async def test_cancel_in_the_middle_of_a_turn(start_server: StartServer) -> None:
    server = await start_server(ms_per_char=30, realtime_factor=1.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(text("A long first turn that will be interrupted. "))
        await call.write(text("More of it."))
        await call.write(turn_done())
        await call.write(text("A queued turn."))
        await call.write(turn_done())
        while (await read_one(call)).WhichOneof("response") != "audio":
            pass
        cancelled_at = time.perf_counter()
        await call.write(cancel())
        after: list[speech_pb2.StreamResponse] = []
        while True:
            response = await read_one(call)
            after.append(response)
            if response.lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_ENDED:
                break
        assert time.perf_counter() - cancelled_at < 1.0
        await asyncio.wait_for(server.tone.idle.wait(), timeout=1.0)
        await call.write(text("After the barge-in."))
        await call.done_writing()
        after += await read_rest(call)
    assert lifecycle_of(after) == [
        ("ended", 1, True),
        ("started", 2, False),
        ("ended", 2, True),
        ("started", 3, False),
        ("ended", 3, False),
        ("session_ended", 0, False),
    ]
    assert {a.turn for a in audio_of(after)} <= {1, 3}
    assert any(a.turn == 3 for a in audio_of(after))
    assert server.tone.stats.cancelled >= 1


async def test_client_disconnect_stops_synthesis(start_server: StartServer) -> None:
    server = await start_server(ms_per_char=50, realtime_factor=1.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        for index in range(4):
            await call.write(text(f"Sentence {index} goes on and on for quite a while. "))
        while (await read_one(call)).WhichOneof("response") != "audio":
            pass
        assert server.tone.stats.active >= 1
        call.cancel()
        await asyncio.wait_for(server.tone.idle.wait(), timeout=2.0)
    assert server.tone.stats.cancelled >= 1
    assert server.tone.stats.finished == 0


async def test_engine_failure_reports_turn_and_segment_then_ends_with_its_status(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    call = tone_server.stub(channel).Stream(
        iter(
            [
                config(min_sentence_chars=1),
                text("Good one. "),
                text("[[fail]] Bad one. "),
                turn_done(),
            ]
        )
    )
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async for response in call:
            received.append(response)
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert "[[fail]]" in (failure.value.details() or "")
    error = received[-2].error
    assert received[-2].WhichOneof("response") == "error"
    assert (error.code, error.turn, error.segment) == (grpc.StatusCode.INTERNAL.value[0], 1, 2)
    assert lifecycle_of(received[-1:]) == [("session_ended", 0, False)]


BAD_INPUTS = {
    "second config": ([config(), config()], "only as the first message"),
    "config after text": ([text("hi"), config()], "only as the first message"),
    "unknown voice": ([config(voice="nope/nothing")], "unknown voice 'nope/nothing'"),
    "unknown voice of a known engine": ([config(voice="tone/nothing")], "tone/square"),
    "speed too high": ([config(speed=4.5)], "speed 4.5 is out of range"),
    "speed too low": ([config(speed=0.1)], "0.25 to 4.0"),
    "speed not a number": ([config(speed=math.nan)], "speed nan is out of range"),
    "sample rate too low": (
        [config(audio_format=speech_pb2.AudioFormat(sample_rate_hz=4000))],
        "8000 to 96000",
    ),
    "sample rate too high": (
        [config(audio_format=speech_pb2.AudioFormat(sample_rate_hz=200000))],
        "8000 to 96000",
    ),
    "unknown encoding": (
        # An enum value a newer client could send; proto3 enums are open.
        [
            config(
                audio_format=speech_pb2.AudioFormat(encoding=speech_pb2.AudioEncoding.ValueType(9))
            )
        ],
        "encoding 9 is unknown",
    ),
    "chunk_ms too long": ([config(chunk_ms=60000)], "chunk_ms 60000 is out of range"),
    "unknown segmentation": (
        [config(segmentation=speech_pb2.Segmentation.ValueType(9))],
        "segmentation 9 is unknown",
    ),
    "first_clause_min_words too many": (
        [config(first_clause_min_words=51)],
        "first_clause_min_words 51 is out of range: use 0 to 50",
    ),
    "stall_ms too long": ([config(stall_ms=10001)], "stall_ms 10001 is out of range"),
    "min_sentence_chars too big": ([config(min_sentence_chars=10**6)], "min_sentence_chars"),
    "max_inflight_segments too big": ([config(max_inflight_segments=65)], "use 0 to 64"),
    "empty request": ([Request()], "empty StreamRequest"),
    "empty text": ([text("")], "must not be empty"),
    "text over the limit": ([text("x" * 16385)], "over the limit of 16384"),
}


def call_blocking(target: str, requests: list[Request]) -> tuple[list[Response], grpc.RpcError]:
    """Run a Stream call with the blocking client; return what came and the final error.

    The blocking client is used because grpcio's asyncio client can report INTERNAL
    instead of the server's status when it is still writing as the server ends the call.
    """
    with grpc.insecure_channel(target) as blocking_channel:
        stub = speech_pb2_grpc.SpeechStub(blocking_channel)
        received: list[Response] = []
        try:
            for response in stub.Stream(iter(requests)):
                received.append(response)
        except grpc.RpcError as error:
            return received, error
    raise AssertionError(f"the call ended OK after {received}")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_bad_input_ends_the_call_with_invalid_argument(
    case: str, tone_server: RunningServer
) -> None:
    requests, message = BAD_INPUTS[case]
    trailing = [text("More text. "), turn_done()]
    received, error = await asyncio.to_thread(
        call_blocking, tone_server.target, [*requests, *trailing]
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
    assert received[-2].WhichOneof("response") == "error"
    assert received[-2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert message in received[-2].error.message
    assert lifecycle_of(received[-1:]) == [("session_ended", 0, False)]


async def test_a_bad_session_does_not_disturb_another(start_server: StartServer) -> None:
    server = await start_server(ms_per_char=10, realtime_factor=0.5)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = server.stub(channel)
        good = asyncio.ensure_future(
            collect(stub, [text("A healthy session keeps talking. "), text("To the end.")])
        )
        for requests, _ in BAD_INPUTS.values():
            _, error = await asyncio.to_thread(call_blocking, server.target, requests)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        responses = await good
    assert lifecycle_of(responses)[-1] == ("session_ended", 0, False)
    samples = sum(len(a.data) // 2 for a in audio_of(responses))
    expected = server.tone.samples_for("A healthy session keeps talking.")
    assert samples == expected + server.tone.samples_for("To the end.")


async def test_unconfigured_engine_is_a_failed_precondition(start_server: StartServer) -> None:
    server = await start_server(unconfigured={"openai": "set VOXRELAY_OPENAI_API_KEY"})
    async with grpc.aio.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await collect(server.stub(channel), [config(voice="openai/alloy")])
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "VOXRELAY_OPENAI_API_KEY" in (failure.value.details() or "")


async def test_float32_audio_is_scaled_int16(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    sentence = "Float please."
    responses = await collect(
        tone_server.stub(channel),
        [config(audio_format=speech_pb2.AudioFormat(encoding=F32)), text(sentence)],
    )
    chunks = audio_of(responses)
    assert chunks and all(c.encoding == F32 for c in chunks)
    samples = np.concatenate([np.frombuffer(c.data, dtype="<f4") for c in chunks])
    assert samples.ndim == 1 and len(samples) == tone_server.tone.samples_for(sentence)
    expected = ToneEngine.amplitude_for(sentence) / 32767.0
    np.testing.assert_allclose(np.unique(np.abs(samples)), [expected], rtol=1e-6)


async def test_chunk_ms_sets_the_message_duration(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    sentence = "A sentence long enough for several audio messages."
    responses = await collect(tone_server.stub(channel), [config(chunk_ms=100), text(sentence)])
    sizes = [len(c.data) // 2 for c in audio_of(responses)]
    per_message = SAMPLE_RATE_HZ // 10
    assert sizes[:-1] == [per_message] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= per_message
    assert sum(sizes) == tone_server.tone.samples_for(sentence)


async def test_resampled_audio_has_the_requested_rate_and_length(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    sentence = "Resample this sentence to forty-eight kilohertz."
    responses = await collect(
        tone_server.stub(channel),
        [config(audio_format=speech_pb2.AudioFormat(sample_rate_hz=48000)), text(sentence)],
    )
    chunks = audio_of(responses)
    assert {c.sample_rate_hz for c in chunks} == {48000}
    produced = sum(len(c.data) // 2 for c in chunks)
    assert abs(produced - tone_server.tone.samples_for(sentence) * 3) <= 3


async def test_idle_sessions_cost_no_cpu(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    stub = tone_server.stub(channel)
    calls = [stub.Stream() for _ in range(50)]
    for call in calls:
        await call.write(config())
        await call.write(text("Waiting for the rest of this sentence"))
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.sleep(1.0)  # measuring an idle period, not waiting for anything
    cpu = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    for call in calls:
        call.cancel()
    assert cpu / wall < 0.1, f"50 idle sessions used {cpu / wall:.1%} of a core"


async def test_a_turns_first_segment_ends_at_a_clause_unless_sentences_are_asked_for(
    tone_server: RunningServer,
) -> None:
    # Ends with a space: its last sentence is complete on arrival, so nothing is left
    # for the dry rule to take before `turn_done` comes (this engine's audio is short).
    reply = "Sure thing, I moved your appointment to Friday at ten, and I sent a reminder. "
    sentences = speech_pb2.SEGMENTATION_SENTENCES
    async with grpc.aio.insecure_channel(tone_server.target) as channel:
        stub = tone_server.stub(channel)
        default = await collect(stub, [config(), text(reply), turn_done()])
        whole = await collect(stub, [config(segmentation=sentences), text(reply), turn_done()])
        fewer = await collect(stub, [config(first_clause_min_words=11), text(reply), turn_done()])
    assert {chunk.segment for chunk in audio_of(default)} == {1, 2}  # "...at ten," first
    assert {chunk.segment for chunk in audio_of(whole)} == {1}
    assert {chunk.segment for chunk in audio_of(fewer)} == {1}  # ten words before "ten,"
