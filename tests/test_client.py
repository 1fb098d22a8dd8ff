"""The Python client library against a real server: sessions, helpers and errors."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

import voxrelay
from tests.conftest import RunningServer, StartServer
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ, ToneEngine


async def test_a_session_streams_ordered_events(tone_server: RunningServer) -> None:
    async with (
        voxrelay.AsyncClient(tone_server.target) as client,
        client.session(min_sentence_chars=1) as session,
    ):
        await session.send_text("First sentence. ")
        await session.send_text("Second one.")
        await session.turn_done()
        await session.send_text("Next turn.")
        await session.close()
        events = [event async for event in session]
    kinds = [type(e).__name__ for e in events if not isinstance(e, voxrelay.Audio)]
    assert kinds == [
        "SessionStarted",
        "TurnStarted",
        "TurnEnded",
        "TurnStarted",
        "TurnEnded",
        "SessionEnded",
    ]
    audio = [e for e in events if isinstance(e, voxrelay.Audio)]
    assert [(a.turn, a.segment) for a in audio] == sorted((a.turn, a.segment) for a in audio)
    assert {a.samples.dtype for a in audio} == {np.dtype("<i2")}
    first = np.concatenate([a.samples for a in audio if a.turn == 1 and a.segment == 1])
    assert set(np.abs(first).tolist()) == {ToneEngine.amplitude_for("First sentence.")}


async def test_float32_sessions_yield_float_arrays(tone_server: RunningServer) -> None:
    async with voxrelay.AsyncClient(tone_server.target) as client:
        audio = await client.synthesize(
            "Floats please.", voxrelay.SessionOptions(dtype="float32", sample_rate_hz=24000)
        )
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.sample_rate_hz == 24000
    expected = tone_server.tone.samples_for("Floats please.") * 24000 / SAMPLE_RATE_HZ
    assert abs(len(audio.samples) - expected) <= 2
    assert float(np.max(np.abs(audio.samples))) <= 1.0


async def test_cancel_from_the_client(start_server: StartServer) -> None:
    server = await start_server(ms_per_char=40, realtime_factor=1.0)
    async with (
        voxrelay.AsyncClient(server.target) as client,
        client.session() as session,
    ):
        await session.send_text("Speak for a good long while, please.")
        await session.turn_done()
        ended = None
        async for event in session:
            if isinstance(event, voxrelay.Audio) and ended is None:
                ended = False
                await session.cancel()
                await session.close()
            if isinstance(event, voxrelay.TurnEnded):
                ended = event.cancelled
    assert ended is True


async def test_engine_errors_raise_with_status_and_place(tone_server: RunningServer) -> None:
    async with voxrelay.AsyncClient(tone_server.target) as client:
        with pytest.raises(voxrelay.VoxrelayError) as failure:
            await client.synthesize("[[fail]] This segment breaks.")
    assert failure.value.code is grpc.StatusCode.INTERNAL
    assert (failure.value.turn, failure.value.segment) == (1, 1)
    assert "[[fail]]" in failure.value.message


async def test_bad_configuration_raises_invalid_argument(tone_server: RunningServer) -> None:
    async with voxrelay.AsyncClient(tone_server.target) as client:
        with pytest.raises(voxrelay.VoxrelayError) as failure:
            await client.synthesize("Hello.", voxrelay.SessionOptions(speed=9.0))
    assert failure.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "speed 9.0 is out of range" in failure.value.message


async def test_sync_helpers(tone_server: RunningServer) -> None:
    def run() -> tuple[voxrelay.SynthesizedAudio, list[voxrelay.VoiceInfo]]:
        with voxrelay.Client(tone_server.target) as client:
            return client.synthesize("Blocking call."), client.voices()

    audio, voices = await asyncio.to_thread(run)
    assert audio.sample_rate_hz == SAMPLE_RATE_HZ
    assert len(audio.samples) == tone_server.tone.samples_for("Blocking call.")
    assert audio.duration_s == pytest.approx(len(audio.samples) / SAMPLE_RATE_HZ)
    assert [(v.name, v.is_default) for v in voices] == [("tone/square", True)]

    one_shot = await asyncio.to_thread(
        voxrelay.synthesize, "Blocking call.", target=tone_server.target
    )
    np.testing.assert_array_equal(one_shot.samples, audio.samples)


async def test_an_unreachable_server_says_how_to_fix_it() -> None:
    async with voxrelay.AsyncClient("127.0.0.1:9") as client:
        with pytest.raises(voxrelay.VoxrelayError) as failure:
            await client.voices()
    assert failure.value.code is grpc.StatusCode.UNAVAILABLE
    assert "voxrelay serve" in failure.value.message


async def test_the_readme_pattern_with_a_bad_voice_always_raises_invalid_argument(
    tone_server: RunningServer,
) -> None:
    async def readme_pattern(client: voxrelay.AsyncClient) -> grpc.StatusCode:
        try:
            async with client.session(voice="nope/x") as session:
                for chunk in ["Hello there, ", "how are you? ", "I hope you are well."]:
                    await session.send_text(chunk)
                await session.turn_done()
                await session.close()
                async for _ in session:
                    pass
        except voxrelay.VoxrelayError as error:
            assert "unknown voice 'nope/x'" in error.message, error
            return error.code
        raise AssertionError("a bad voice did not fail the session")

    async with voxrelay.AsyncClient(tone_server.target) as client:
        codes = [await readme_pattern(client) for _ in range(200)]
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}


async def test_the_blocking_client_with_a_bad_voice_always_raises_invalid_argument(
    tone_server: RunningServer,
) -> None:
    def two_hundred_runs() -> set[grpc.StatusCode]:
        options = voxrelay.SessionOptions(voice="nope/x")
        codes = set()
        with voxrelay.Client(tone_server.target) as client:
            for _ in range(200):
                with pytest.raises(voxrelay.VoxrelayError) as failure:
                    client.synthesize("Hello there, how are you?", options)
                assert "unknown voice 'nope/x'" in failure.value.message
                codes.add(failure.value.code)
        return codes

    assert await asyncio.to_thread(two_hundred_runs) == {grpc.StatusCode.INVALID_ARGUMENT}


async def test_a_write_after_the_server_ended_the_call_raises_the_servers_error(
    tone_server: RunningServer,
) -> None:
    # The client keeps writing well after the server gave up on the call: the write
    # fails in gRPC, and the error raised is the server's, not gRPC's local INTERNAL.
    async with (
        voxrelay.AsyncClient(tone_server.target) as client,
        client.session(voice="nope/x") as session,
    ):
        with pytest.raises(voxrelay.VoxrelayError) as failure:
            for _ in range(100):
                await session.send_text("More text. ")
                await asyncio.sleep(0.05)  # an LLM's pace, past the server's drain
    assert failure.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown voice 'nope/x'" in failure.value.message


async def test_the_blocking_session_barges_in_and_learns_what_was_heard(
    tone_server: RunningServer,
) -> None:
    """`Client.session()`: the async session's surface, blocking, with `cancel`'s
    position; paced, so the cancel finds the turn still being spoken."""
    sentences = [f"Sentence number {n} is here. " for n in range(12)]
    tone = tone_server.tone

    def run() -> tuple[list[voxrelay.Event], voxrelay.SessionStarted | None]:
        events: list[voxrelay.Event] = []
        with (
            voxrelay.Client(tone_server.target) as client,
            client.session(pace="realtime", segmentation="sentences") as session,
        ):
            for sentence in sentences:
                session.send_text(sentence)
            session.turn_done()
            for event in session:
                events.append(event)
                if isinstance(event, voxrelay.Audio) and event.segment == 3:
                    # The listener played the first two sentences and a bit of the third.
                    played = tone.samples_for(sentences[0].strip()) + tone.samples_for(
                        sentences[1].strip()
                    )
                    session.cancel(played_samples=played + 10, turn=event.turn)
                    session.close()
                    break
            events.extend(session)
            return events, session.started

    events, started = await asyncio.to_thread(run)
    assert isinstance(events[0], voxrelay.SessionStarted) and started == events[0]
    assert started.pace_lead_ms == 200
    (ended,) = [e for e in events if isinstance(e, voxrelay.TurnEnded)]
    assert ended.cancelled
    assert ended.spoken_text == "".join(sentences[:2]).strip()
    assert ended.heard("".join(sentences)) == ended.spoken_text
    assert isinstance(events[-1], voxrelay.SessionEnded)


LONG_TEXT = "".join(f"This is sentence {n} of a long text read aloud. " for n in range(1, 420))


async def test_synthesize_speaks_a_text_longer_than_a_stream_chunk(
    tone_server: RunningServer,
) -> None:
    # 20,000 characters: over the 16384 of one Stream text chunk, so only the
    # Synthesize rpc takes it whole. Async, blocking and module-level alike.
    assert 20_000 <= len(LONG_TEXT) < 20_100
    expected = tone_server.tone.samples_for(LONG_TEXT)

    async with voxrelay.AsyncClient(tone_server.target) as client:
        async_audio = await client.synthesize(LONG_TEXT)

    def blocking() -> tuple[voxrelay.SynthesizedAudio, voxrelay.SynthesizedAudio]:
        with voxrelay.Client(tone_server.target) as client:
            audio = client.synthesize(LONG_TEXT)
        return audio, voxrelay.synthesize(LONG_TEXT, target=tone_server.target)

    client_audio, module_audio = await asyncio.to_thread(blocking)

    # Each segment's audio follows its text; only the spaces between segments go unspoken.
    assert expected * 0.98 < len(async_audio.samples) <= expected
    np.testing.assert_array_equal(client_audio.samples, async_audio.samples)
    np.testing.assert_array_equal(module_audio.samples, async_audio.samples)
    turns = {(chunk.turn) for chunk in async_audio.chunks}
    assert turns == {1}


# 40,000 characters in one send_text: over twice the 16384 the server takes in one
# StreamRequest.text. Characters outside the BMP (one code point, two UTF-16 units,
# four UTF-8 bytes) stand on both sides of each cut, which must not split them.
_LONG = list(
    "".join(f"Sentence {n} is read aloud, d\u00e9j\u00e0 vu. " for n in range(1, 1200))[:39_999]
    + " "
)
for _at in (16383, 16384, 32767, 32768):
    _LONG[_at] = "\U0001f600"
VERY_LONG_TEXT = "".join(_LONG)


def _spoken(events: list[voxrelay.Event]) -> tuple[str, ...]:
    """Each turn's `spoken_text` (an error would have raised while iterating)."""
    return tuple(e.spoken_text for e in events if isinstance(e, voxrelay.TurnEnded))


async def test_one_send_text_longer_than_a_stream_chunk_is_spoken_whole(
    tone_server: RunningServer,
) -> None:
    assert len(VERY_LONG_TEXT) == 40_000
    async with (
        voxrelay.AsyncClient(tone_server.target) as client,
        client.session() as session,
    ):
        await session.send_text(VERY_LONG_TEXT)
        await session.turn_done()
        await session.close()
        events = [event async for event in session]
    assert _spoken(events) == (VERY_LONG_TEXT,)
    assert isinstance(events[-1], voxrelay.SessionEnded)

    def blocking() -> list[voxrelay.Event]:
        with voxrelay.Client(tone_server.target) as client, client.session() as session:
            session.send_text(VERY_LONG_TEXT)
            session.turn_done()
            session.close()
            return list(session)

    assert _spoken(await asyncio.to_thread(blocking)) == (VERY_LONG_TEXT,)


async def test_synthesize_events_stream_the_synthesize_call_in_order(
    tone_server: RunningServer,
) -> None:
    text = "Hello there, how are you? I hope you are well. "
    options = voxrelay.SessionOptions(word_timestamps=True)
    async with voxrelay.AsyncClient(tone_server.target) as client:
        events = [event async for event in client.synthesize_events(text, options)]
        whole = await client.synthesize(text, options)
        with pytest.raises(voxrelay.VoxrelayError) as failure:
            async for _ in client.synthesize_events("[[fail]] This segment breaks."):
                pass

    kinds = [type(event).__name__ for event in events]
    assert kinds[:2] == ["SessionStarted", "TurnStarted"]
    assert kinds[-2:] == ["TurnEnded", "SessionEnded"]
    assert set(kinds[2:-2]) == {"Audio", "Words"}
    audio = [event for event in events if isinstance(event, voxrelay.Audio)]
    np.testing.assert_array_equal(np.concatenate([a.samples for a in audio]), whole.samples)
    words = [w for event in events if isinstance(event, voxrelay.Words) for w in event.words]
    assert words == whole.words
    assert failure.value.code is grpc.StatusCode.INTERNAL and "[[fail]]" in failure.value.message


async def test_synthesize_over_the_rpcs_limit_raises_invalid_argument(
    tone_server: RunningServer,
) -> None:
    async with voxrelay.AsyncClient(tone_server.target) as client:
        with pytest.raises(voxrelay.VoxrelayError) as failure:
            await client.synthesize("a" * 1_000_001)
    assert failure.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "1000000" in failure.value.message
