"""What the listener heard, over real gRPC on loopback: each segment's place in the
turn's text, `Cancel.turn`/`played_samples`, and `TURN_ENDED.spoken_text`.

The tone engine makes timing exact: a segment of n characters is n * ms_per_char of
audio, and its amplitude names its text.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np

import voxrelay
from tests.conftest import (
    Request,
    Response,
    RunningServer,
    StartServer,
    audio_of,
    collect,
    config,
    read_one,
    read_rest,
    text,
    turn_done,
)
from voxrelay.v1 import speech_pb2
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ, ToneEngine

SENTENCES = speech_pb2.SEGMENTATION_SENTENCES
OPUS = speech_pb2.AUDIO_ENCODING_OGG_OPUS
SEGMENTS = ["One alpha.", "Two beta gamma.", "Three delta."]
OPEN_TURN = ["One alpha. ", "Two beta gamma.  ", "Three delta. ", "Four"]
"""A turn still being written, a chunk a sentence: three segments released, "Four"
buffered."""


def _elapsed(started_at: float) -> float:
    """Seconds a real-time player has played since `started_at`."""
    return time.monotonic() - started_at


def cancel_at(turn: int = 0, played_samples: int = 0) -> Request:
    return Request(cancel=speech_pb2.Cancel(turn=turn, played_samples=played_samples))


def turn_ended(responses: Sequence[Response], turn: int) -> speech_pb2.Lifecycle:
    """The TURN_ENDED of `turn`."""
    for response in responses:
        lifecycle = response.lifecycle
        if (
            response.WhichOneof("response") == "lifecycle"
            and lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_ENDED
            and lifecycle.turn == turn
        ):
            return lifecycle
    raise AssertionError(f"no TURN_ENDED for turn {turn}")


def segment_ends(tone: ToneEngine, segments: Sequence[str]) -> list[int]:
    """Where each segment's audio ends in its turn, in samples."""
    ends, end = [], 0
    for segment in segments:
        end += tone.samples_for(segment)
        ends.append(end)
    return ends


async def cancel_open_turn(server: RunningServer, cancel: Request) -> speech_pb2.Lifecycle:
    """Speak OPEN_TURN's three segments (all their audio received), send `cancel`, and
    return the turn's TURN_ENDED."""
    whole = segment_ends(server.tone, SEGMENTS)[-1]
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(config(segmentation=SENTENCES, min_sentence_chars=1))
        for chunk in OPEN_TURN:
            await call.write(text(chunk))
        received: list[Response] = []
        while sum(len(a.data) // 2 for a in audio_of(received)) < whole:
            received.append(await read_one(call))
        await call.write(cancel)
        await call.done_writing()
        received += await read_rest(call)
        assert await call.code() == grpc.StatusCode.OK
    return turn_ended(received, 1)


async def test_every_chunk_carries_its_segments_place_in_the_text_as_sent(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    chunks = ["  Hello 世界", "。 Emoji 😀🇫🇷 ", "here,\n\nthen", " a \x07bell. ", "Last one"]
    turn_text = "".join(chunks)
    requests = [config(segmentation=SENTENCES, min_sentence_chars=1, chunk_ms=20)]
    requests += [*map(text, chunks), turn_done()]
    responses = await collect(tone_server.stub(channel), requests)
    audio = audio_of(responses)
    places: dict[int, tuple[int, int]] = {}
    for chunk in audio:
        places.setdefault(chunk.segment, (chunk.text_offset, chunk.text_length))
        assert (chunk.text_offset, chunk.text_length) == places[chunk.segment]
        offset, length = places[chunk.segment]
        spoken = turn_text[offset : offset + length].replace("\x07", " ")  # as cleaned
        level = int(np.abs(np.frombuffer(chunk.data, dtype="<i2")).max())
        assert level == ToneEngine.amplitude_for(spoken)  # this text made this audio
    said = [turn_text[o : o + n] for o, n in places.values()]
    assert said == ["Hello 世界。", "Emoji 😀🇫🇷 here,", "then a \x07bell.", "Last one"]
    starts = [offset for offset, _ in places.values()]
    ends = [offset + length for offset, length in places.values()]
    assert all(end <= start for end, start in zip(ends, starts[1:], strict=False))
    assert turn_ended(responses, 1).spoken_text == turn_text  # a whole turn, as sent


async def test_synthesize_places_segments_in_the_requests_text(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    whole = "\n First sentence here. Second 🎉 one!  Third."
    request = speech_pb2.SynthesizeRequest(
        config=speech_pb2.SessionConfig(segmentation=SENTENCES, min_sentence_chars=1), text=whole
    )
    responses = [r async for r in tone_server.stub(channel).Synthesize(request)]
    said = {
        a.segment: whole[a.text_offset : a.text_offset + a.text_length] for a in audio_of(responses)
    }
    # The whole text is there at once: its complete sentences make one segment.
    assert list(said.values()) == ["First sentence here. Second 🎉 one!", "Third."]
    assert turn_ended(responses, 1).spoken_text == whole


async def test_opus_chunks_carry_the_place_of_the_segment_they_name(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    chunks = ["First of the segments. ", "The second one. ", "And a third."]
    turn_text = "".join(chunks)
    audio_format = speech_pb2.AudioFormat(encoding=OPUS, sample_rate_hz=16000)
    requests = [
        config(segmentation=SENTENCES, min_sentence_chars=1, audio_format=audio_format),
        *map(text, chunks),
        turn_done(),
    ]
    responses = await collect(tone_server.stub(channel), requests)
    expected = {1: "First of the segments.", 2: "The second one.", 3: "And a third."}
    for chunk in audio_of(responses):
        placed = turn_text[chunk.text_offset : chunk.text_offset + chunk.text_length]
        assert placed == expected[chunk.segment]
    assert turn_ended(responses, 1).spoken_text == turn_text


async def test_played_samples_inside_segment_two_hears_segment_one(
    start_server: StartServer,
) -> None:
    server = await start_server()
    ends = segment_ends(server.tone, SEGMENTS)
    middle_of_two = (ends[0] + ends[1]) // 2
    ended = await cancel_open_turn(server, cancel_at(turn=1, played_samples=middle_of_two))
    assert ended.cancelled  # "Four" was never spoken
    assert ended.spoken_text == "One alpha."


async def test_played_samples_at_the_end_of_segment_two_includes_it(
    start_server: StartServer,
) -> None:
    server = await start_server()
    ends = segment_ends(server.tone, SEGMENTS)
    ended = await cancel_open_turn(server, cancel_at(turn=1, played_samples=ends[1]))
    assert ended.spoken_text == "One alpha. Two beta gamma."
    ended = await cancel_open_turn(server, cancel_at(turn=1, played_samples=ends[1] - 1))
    assert ended.spoken_text == "One alpha."


async def test_turn_zero_with_played_samples_names_the_turn_in_progress(
    start_server: StartServer,
) -> None:
    server = await start_server()
    ends = segment_ends(server.tone, SEGMENTS)
    ended = await cancel_open_turn(server, cancel_at(played_samples=ends[0] + 1))
    assert ended.spoken_text == "One alpha."


async def test_a_turn_named_with_nothing_played_heard_nothing(start_server: StartServer) -> None:
    server = await start_server()
    ended = await cancel_open_turn(server, cancel_at(turn=1, played_samples=0))
    assert ended.cancelled and ended.spoken_text == ""


async def test_cancel_without_a_position_counts_the_segments_delivered_whole(
    start_server: StartServer,
) -> None:
    server = await start_server()
    ended = await cancel_open_turn(server, cancel_at())
    assert ended.cancelled
    assert ended.spoken_text == "One alpha. Two beta gamma.  Three delta."


async def test_out_of_range_positions_are_clamped_or_ignored(start_server: StartServer) -> None:
    server = await start_server()
    everything = "One alpha. Two beta gamma.  Three delta."
    # Beyond the audio sent: clamped to it.
    ended = await cancel_open_turn(server, cancel_at(turn=1, played_samples=2**64 - 1))
    assert ended.spoken_text == everything
    # A turn that is not being spoken or queued: ignored, as an unknown position.
    for turn in (7, 2**64 - 1):
        ended = await cancel_open_turn(server, cancel_at(turn=turn, played_samples=1))
        assert ended.cancelled and ended.spoken_text == everything


async def test_cancel_before_any_audio_hears_nothing(start_server: StartServer) -> None:
    server = await start_server(first_audio_ms=5000)
    async with grpc.aio.insecure_channel(server.target) as channel:
        requests = [
            config(segmentation=SENTENCES, min_sentence_chars=1),
            text("A first sentence. A second one."),
            turn_done(),
            text("A queued turn."),
            turn_done(),
            cancel_at(turn=1, played_samples=12345),
        ]
        responses = await collect(server.stub(channel), requests)
    assert audio_of(responses) == []
    for turn in (1, 2):
        ended = turn_ended(responses, turn)
        assert ended.cancelled and ended.spoken_text == ""


async def test_an_ended_turn_named_by_a_cancel_keeps_its_text(start_server: StartServer) -> None:
    server = await start_server()
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(config(segmentation=SENTENCES, min_sentence_chars=1))
        await call.write(text(" The first turn. "))
        await call.write(turn_done())
        received: list[Response] = []
        while True:
            received.append(await read_one(call))
            if received[-1].lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_ENDED:
                break
        server.tone.first_audio_ms = 5000  # the second turn makes no audio before the cancel
        await call.write(text("A second turn."))
        await call.write(cancel_at(turn=1, played_samples=1))  # turn 1 already ended
        await call.done_writing()
        received += await read_rest(call)
    assert turn_ended(received, 1).spoken_text == " The first turn. "
    second = turn_ended(received, 2)
    assert second.cancelled and second.spoken_text == ""


async def test_a_listener_playing_in_real_time_is_told_what_it_heard(
    start_server: StartServer,
) -> None:
    """The client plays at real time from its first audio, stops at a known sample
    (in the middle of the third segment), and cancels with that position."""
    server = await start_server(ms_per_char=8, realtime_factor=1.0)
    sentences = [
        f"Sentence number {word} of the reply." for word in ["one", "two", "three", "four", "five"]
    ]
    turn_text = " ".join(sentences)
    stop_at = sum(server.tone.samples_for(s) for s in sentences[:2]) + SAMPLE_RATE_HZ // 10
    async with (
        voxrelay.AsyncClient(server.target) as client,
        client.session(
            segmentation="sentences", min_sentence_chars=1, max_inflight_segments=1
        ) as session,
    ):
        # One segment at a time at real time: the turn is still being sent at the stop.
        for sentence in sentences:
            await session.send_text(sentence + " ")
        await session.turn_done()
        heard: list[voxrelay.Audio] = []
        ended: voxrelay.TurnEnded | None = None
        started_at = 0.0
        stopped = False
        async for event in session:
            if isinstance(event, voxrelay.Audio):
                heard.append(event)
                started_at = started_at or time.monotonic()
                # Play in real time: wait until the clock has played what arrived (then
                # take the next audio), or has reached the stop.
                playable = min(event.offset_samples + event.num_samples, stop_at)
                if not stopped:
                    await asyncio.sleep(playable / SAMPLE_RATE_HZ - _elapsed(started_at))
                if not stopped and playable == stop_at:
                    await session.cancel(played_samples=stop_at, turn=event.turn)
                    await session.close()
                    stopped = True
            elif isinstance(event, voxrelay.TurnEnded):
                ended = event
    assert ended is not None and ended.cancelled
    # The segments whose audio ended at or before the stop (those whose next segment's
    # audio came before it): the first two.
    ends: dict[int, tuple[int, int]] = {}
    for audio in heard:
        ends[audio.segment] = (audio.offset_samples + audio.num_samples, audio.text_end)
    whole = [
        text_end
        for segment, (sample_end, text_end) in ends.items()
        if segment + 1 in ends and sample_end <= stop_at
    ]
    assert len(whole) == 2
    assert ended.spoken_text == turn_text[: whole[-1]] == " ".join(sentences[:2])


def readme_function(name: str) -> Callable[..., object]:
    """A function defined in one of the README's Python blocks, as written there."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for block in re.findall(r"```python(?: fragment)?\n(.*?)```", readme, re.DOTALL):
        if f"def {name}(" in block:
            namespace: dict[str, object] = {"voxrelay": voxrelay}
            exec(block, namespace)
            function = namespace[name]
            assert callable(function)
            return function
    raise AssertionError(f"the README defines no {name}()")


async def test_the_readmes_heard_cuts_an_ended_turn_like_the_server(
    start_server: StartServer,
) -> None:
    """For a turn whose TURN_ENDED came before the barge-in, the README's client-side
    cut gives what the server gives for a turn it has not ended."""
    heard = readme_function("heard")
    server = await start_server()
    turn_text = "".join(OPEN_TURN[:3])
    async with (
        voxrelay.AsyncClient(server.target) as client,
        client.session(segmentation="sentences", min_sentence_chars=1) as session,
    ):
        for chunk in OPEN_TURN[:3]:
            await session.send_text(chunk)
        await session.close()
        received = [event async for event in session if isinstance(event, voxrelay.Audio)]
    ends = segment_ends(server.tone, SEGMENTS)
    for played in (0, ends[0] - 1, ends[0], (ends[0] + ends[1]) // 2, ends[2], 10**9):
        over_the_wire = await cancel_open_turn(server, cancel_at(turn=1, played_samples=played))
        assert heard(turn_text, received, played) == over_the_wire.spoken_text
