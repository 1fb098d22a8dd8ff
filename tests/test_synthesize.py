"""The Synthesize rpc over real gRPC on loopback: one whole text, one turn, Stream's answer."""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import (
    Response,
    RunningServer,
    StartServer,
    audio_of,
    collect,
    config,
    lifecycle_of,
    text,
    turn_done,
)
from voxrelay.v1 import speech_pb2
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.settings import (
    DEFAULT_MAX_SEGMENT_CHARS,
    MAX_TEXT_CHUNK_CHARS,
    MAX_WHOLE_TEXT_CHARS,
)
from voxrelay_server.splitter import SentenceSplitter

SynthesizeRequest = speech_pb2.SynthesizeRequest


async def synthesize(
    server: RunningServer, channel: grpc.aio.Channel, request: SynthesizeRequest
) -> list[Response]:
    """Every response of a Synthesize call that ends OK."""
    return [response async for response in server.stub(channel).Synthesize(request)]


async def failed_synthesize(
    server: RunningServer, channel: grpc.aio.Channel, request: SynthesizeRequest
) -> tuple[list[Response], grpc.aio.AioRpcError]:
    """The responses of a Synthesize call that fails, and its error."""
    received: list[Response] = []
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async for response in server.stub(channel).Synthesize(request):
            received.append(response)
    return received, failure.value


def sentences(total_chars: int) -> str:
    """Numbered sentences, about `total_chars` long, so each segment is distinct."""
    parts: list[str] = []
    length = 0
    while length < total_chars:
        part = f"Sentence number {len(parts):06d} says something. "
        parts.append(part)
        length += len(part)
    return "".join(parts)


async def test_synthesize_speaks_one_turn_in_order(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    words = "Hello there. How are you today? I hope you are well."
    responses = await synthesize(
        tone_server, channel, SynthesizeRequest(config=config().config, text=words)
    )
    assert lifecycle_of(responses) == [
        ("started", 1, False),
        ("ended", 1, False),
        ("session_ended", 0, False),
    ]
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds[:2] == ["session_started", "lifecycle"]
    assert kinds[-2:] == ["lifecycle", "lifecycle"]
    assert set(kinds[2:-2]) == {"audio"}
    samples = sum(len(chunk.data) // 2 for chunk in audio_of(responses))
    # Split as the dispatcher does (min_sentence_chars 20): "Hello there. How are you today?"
    # reaches the minimum at the second sentence end; the rest is flushed at the end.
    tone = tone_server.tone
    expected = tone.samples_for("Hello there. How are you today?") + tone.samples_for(
        "I hope you are well."
    )
    assert samples == expected


async def test_synthesize_answers_like_the_equivalent_stream_call(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    """A text longer than one Stream chunk is fed in chunks: the same bytes come out."""
    words = sentences(2 * MAX_TEXT_CHUNK_CHARS + 1000)
    session = config(chunk_ms=40, min_sentence_chars=200)
    chunks = [
        words[start : start + MAX_TEXT_CHUNK_CHARS]
        for start in range(0, len(words), MAX_TEXT_CHUNK_CHARS)
    ]
    assert len(chunks) == 3

    synthesized = await synthesize(
        tone_server, channel, SynthesizeRequest(config=session.config, text=words)
    )
    streamed = await collect(
        tone_server.stub(channel), [session, *(text(c) for c in chunks), turn_done()]
    )

    # The same messages, but for the session's id in the first.
    assert synthesized[0].session_started.session_id != streamed[0].session_started.session_id
    for started in (synthesized[0], streamed[0]):
        started.session_started.session_id = ""
    assert synthesized == streamed
    splitter = SentenceSplitter(200, DEFAULT_MAX_SEGMENT_CHARS)
    segments = [segment for chunk in chunks for segment in splitter.feed(chunk)]
    segments += [rest] if (rest := splitter.flush().strip()) else []
    assert {chunk.segment for chunk in audio_of(synthesized)} == set(range(1, len(segments) + 1))
    samples = sum(len(chunk.data) // 2 for chunk in audio_of(synthesized))
    assert samples == sum(tone_server.tone.samples_for(segment) for segment in segments)


BAD_SYNTHESIZE = {
    "empty text": (SynthesizeRequest(), grpc.StatusCode.INVALID_ARGUMENT, "must not be empty"),
    "text over the limit": (
        SynthesizeRequest(text="x" * (MAX_WHOLE_TEXT_CHARS + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"over the limit of {MAX_WHOLE_TEXT_CHARS}",
    ),
    "unknown voice": (
        SynthesizeRequest(config=speech_pb2.SessionConfig(voice="nope/x"), text="Hi."),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown voice 'nope/x'",
    ),
    "speed out of range": (
        SynthesizeRequest(config=speech_pb2.SessionConfig(speed=9), text="Hi."),
        grpc.StatusCode.INVALID_ARGUMENT,
        "0.25 to 4.0",
    ),
    "unknown encoding": (
        SynthesizeRequest(
            config=speech_pb2.SessionConfig(audio_format=speech_pb2.AudioFormat(encoding=99)),  # type: ignore[arg-type]
            text="Hi.",
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio_format.encoding 99 is unknown",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SYNTHESIZE))
async def test_bad_synthesize_requests_end_with_error_session_ended_and_status(
    case: str, tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    request, code, message = BAD_SYNTHESIZE[case]
    received, error = await failed_synthesize(tone_server, channel, request)
    assert error.code() == code
    assert message in (error.details() or "")
    assert [r.WhichOneof("response") for r in received] == ["error", "lifecycle"]
    assert received[0].error.code == code.value[0]
    assert message in received[0].error.message
    assert lifecycle_of(received[1:]) == [("session_ended", 0, False)]
    assert tone_server.service.active_sessions == 0  # its place was given back


async def test_a_text_over_the_session_text_budget_is_fed_as_room_frees(
    start_server: StartServer,
) -> None:
    budget = 1000
    server = await start_server(limits=SessionLimits(max_buffered_text_chars=budget))
    text = sentences(20 * budget)  # much more than the budget, cut into many sentences
    async with grpc.aio.insecure_channel(server.target) as channel:
        responses = await synthesize(server, channel, SynthesizeRequest(text=text))
    assert lifecycle_of(responses) == [
        ("started", 1, False),
        ("ended", 1, False),
        ("session_ended", 0, False),
    ]
    # All of it was spoken: the whole text's audio, less the spaces between segments.
    samples = sum(len(chunk.data) // 2 for chunk in audio_of(responses))
    assert 0.98 * server.tone.samples_for(text) <= samples <= server.tone.samples_for(text)
    assert len(audio_segments(responses)) > 20  # fed in pieces, not as one segment


async def test_a_run_without_sentence_ends_over_the_budget_is_spoken_in_bounded_segments(
    start_server: StartServer,
) -> None:
    limits = SessionLimits(max_buffered_text_chars=1000, max_segment_chars=100)
    server = await start_server(limits=limits)
    run_on = "word " * 300  # 1,500 characters without a sentence end, over the budget
    async with grpc.aio.insecure_channel(server.target) as channel:
        responses = await synthesize(server, channel, SynthesizeRequest(text=run_on))
    assert lifecycle_of(responses)[-1] == ("session_ended", 0, False)
    # Cut between words into segments within the limit: each 95 or 100 characters.
    segments = audio_segments(responses)
    assert len(segments) >= len(run_on) // 100
    per_segment = {
        segment: sum(len(c.data) // 2 for c in audio_of(responses) if c.segment == segment)
        for _, segment in segments
    }
    assert max(per_segment.values()) <= server.tone.samples_for("x" * 100)
    samples = sum(per_segment.values())
    assert 0.95 * server.tone.samples_for(run_on) <= samples <= server.tone.samples_for(run_on)


def audio_segments(responses: list[Response]) -> set[tuple[int, int]]:
    return {(chunk.turn, chunk.segment) for chunk in audio_of(responses)}


async def test_an_engine_failure_names_its_segment(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    request = SynthesizeRequest(
        config=speech_pb2.SessionConfig(min_sentence_chars=1),
        text="[[fail]] Bad one. Never spoken.",
    )
    received, error = await failed_synthesize(tone_server, channel, request)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "[[fail]]" in (error.details() or "")
    failure = received[-2].error
    assert (failure.turn, failure.segment) == (1, 1)
    assert {chunk.segment for chunk in audio_of(received)} <= {1}
    assert lifecycle_of(received[-1:]) == [("session_ended", 0, False)]
