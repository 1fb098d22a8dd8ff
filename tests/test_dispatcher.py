"""The ordered concurrent dispatcher on its own, driven by the tone engine (no gRPC)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import numpy as np
import pytest

from tests.conftest import wait_for
from voxrelay_server.dispatcher import SessionDispatcher, SessionLimits, SessionState, SlotFactory
from voxrelay_server.engines.base import SynthesisOptions
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ, ToneEngine
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError
from voxrelay_server.events import (
    AudioOut,
    SessionEnded,
    SessionEvent,
    SessionFailed,
    TurnEnded,
    TurnStarted,
)
from voxrelay_server.observer import SessionObserver
from voxrelay_server.playback import PlaybackClock
from voxrelay_server.scheduler import DeadlineScheduler
from voxrelay_server.settings import AudioEncoding, OutputFormat


def make_dispatcher(
    tone: ToneEngine,
    *,
    max_inflight: int = 4,
    min_chars: int = 1,
    chunk_ms: int = 0,
    limits: SessionLimits | None = None,
    synthesis_slot: SlotFactory | None = None,
    paused_segment_bytes: int = 0,
    first_clause_words: int = 0,
    stall_s: float = 0.0,
    stagger_while: Callable[[], bool] | None = None,
    log: list[str] | None = None,
) -> SessionDispatcher:
    voice = tone.voices()[0]

    async def synthesize(text: str) -> AsyncIterator[bytes]:
        if log is not None:
            log.append(f"start {text}")
        async for chunk in tone.synthesize(voice, text, SynthesisOptions()):
            if log is not None and f"audio {text}" not in log:
                log.append(f"audio {text}")
            yield chunk

    return SessionDispatcher(
        synthesize,
        native_rate_hz=SAMPLE_RATE_HZ,
        output=OutputFormat(AudioEncoding.PCM_S16LE, SAMPLE_RATE_HZ, chunk_ms),
        min_sentence_chars=min_chars,
        max_inflight_segments=max_inflight,
        first_clause_words=first_clause_words,
        stall_s=stall_s,
        limits=limits,
        synthesis_slot=synthesis_slot,
        paused_segment_bytes=paused_segment_bytes,
        stagger_while=stagger_while,
    )


async def drain(events: AsyncIterator[SessionEvent]) -> list[SessionEvent]:
    return [event async for event in events]


def amplitudes(event: AudioOut) -> set[int]:
    return set(np.abs(np.frombuffer(event.data, dtype="<i2")).tolist())


def check_wire_order(events: list[SessionEvent], segments: dict[int, list[str]]) -> None:
    """Turns in order, each: started, its segments' audio in order and contiguous, ended."""
    position = 0
    for turn, texts in segments.items():
        assert events[position] == TurnStarted(turn)
        position += 1
        offset = 0
        for number, text in enumerate(texts, start=1):
            expected = ToneEngine.amplitude_for(text)
            while isinstance(events[position], AudioOut):
                audio = events[position]
                assert isinstance(audio, AudioOut)
                if audio.segment != number:
                    break
                assert audio.turn == turn
                assert audio.offset_samples == offset
                assert amplitudes(audio) == {expected}
                offset += len(audio.data) // 2
                position += 1
        assert events[position] == TurnEnded(turn, cancelled=False)
        position += 1
    assert events[position:] == [SessionEnded()]


async def test_audio_goes_out_in_order_when_later_segments_finish_first() -> None:
    rng = random.Random(7)
    tone = ToneEngine(ms_per_char=2)
    dispatcher = make_dispatcher(tone, max_inflight=6)
    sent: dict[int, list[str]] = {}
    for turn in (1, 2, 3):
        sent[turn] = []
        for index in range(6):
            # Earlier segments get the longer latencies, so later ones finish first.
            latency = (6 - index) * 15 + rng.randint(0, 10)
            sentence = f"[[latency_ms={latency}]]Turn {turn} sentence {index}."
            sent[turn].append(sentence)
            dispatcher.send_text(sentence + " ")
        dispatcher.turn_done()
    dispatcher.close()
    events = await drain(dispatcher.events())
    check_wire_order(events, sent)
    assert tone.stats.finished == 18


async def test_a_later_segment_that_finishes_first_waits_its_turn() -> None:
    # Each makes ~0.2 s of audio in real time; the first starts 0.3 s late.
    tone = ToneEngine(ms_per_char=10, realtime_factor=1.0)
    dispatcher = make_dispatcher(tone)
    dispatcher.send_text("[[latency_ms=300]]Slow first segment. ")
    dispatcher.send_text("[[latency_ms=0]]Fast second segment. ")
    dispatcher.close()
    seen_first_audio_after: int | None = None
    order = []
    async for event in dispatcher.events():
        if isinstance(event, AudioOut):
            if seen_first_audio_after is None:
                seen_first_audio_after = tone.stats.finished
            order.append(event.segment)
    assert seen_first_audio_after == 1  # the fast one was done before the slow one spoke
    assert order == sorted(order) and set(order) == {1, 2}


async def test_the_head_segment_streams_before_it_is_complete() -> None:
    tone = ToneEngine(ms_per_char=40, realtime_factor=1.0)  # ~2 s of audio made in real time
    dispatcher = make_dispatcher(tone)
    dispatcher.send_text("A long sentence that takes a while to say.")
    dispatcher.close()
    events = dispatcher.events()
    assert await anext(events) == TurnStarted(1)
    first = await anext(events)
    assert isinstance(first, AudioOut)
    assert tone.stats.active == 1 and tone.stats.finished == 0
    await dispatcher.aclose()


async def test_segments_are_synthesized_concurrently() -> None:
    segments, latency_s = 8, 0.2
    timings = {}
    for limit in (segments, 1):
        tone = ToneEngine(first_audio_ms=latency_s * 1000, ms_per_char=1)
        dispatcher = make_dispatcher(tone, max_inflight=limit)
        for index in range(segments):
            dispatcher.send_text(f"Segment number {index}. ")
        dispatcher.close()
        started = time.perf_counter()
        await drain(dispatcher.events())
        timings[limit] = time.perf_counter() - started
        assert tone.stats.peak_active == limit
    assert timings[segments] < 0.3 * segments * latency_s  # far less than K x L
    assert timings[1] >= segments * latency_s  # the limit really bounds concurrency


async def test_in_flight_segments_never_exceed_the_limit() -> None:
    tone = ToneEngine(first_audio_ms=5, ms_per_char=1)
    dispatcher = make_dispatcher(tone, max_inflight=2)
    for turn in range(3):
        for index in range(4):
            dispatcher.send_text(f"Turn {turn} segment {index}. ")
        dispatcher.turn_done()
    dispatcher.close()
    events = await drain(dispatcher.events())
    assert tone.stats.peak_active == 2
    assert tone.stats.finished == 12
    assert events[-1] == SessionEnded()


async def test_turn_done_without_text_does_nothing() -> None:
    dispatcher = make_dispatcher(ToneEngine())
    dispatcher.turn_done()
    dispatcher.send_text("Hello.")
    dispatcher.turn_done()
    dispatcher.turn_done()
    dispatcher.close()
    events = [e for e in await drain(dispatcher.events()) if not isinstance(e, AudioOut)]
    assert events == [TurnStarted(1), TurnEnded(1), SessionEnded()]


async def test_a_whitespace_turn_starts_and_ends_without_audio() -> None:
    tone = ToneEngine()
    dispatcher = make_dispatcher(tone)
    dispatcher.send_text("  \n ")
    dispatcher.turn_done()
    dispatcher.close()
    assert await drain(dispatcher.events()) == [TurnStarted(1), TurnEnded(1), SessionEnded()]
    assert tone.stats.started == 0


async def test_close_speaks_buffered_text() -> None:
    tone = ToneEngine(ms_per_char=5)
    dispatcher = make_dispatcher(tone, min_chars=20)
    dispatcher.send_text("no sentence end ")
    dispatcher.send_text("at all")
    dispatcher.close()
    events = await drain(dispatcher.events())
    audio = [e for e in events if isinstance(e, AudioOut)]
    assert sum(len(a.data) // 2 for a in audio) == tone.samples_for("no sentence end at all")
    assert {ToneEngine.amplitude_for("no sentence end at all")} == set().union(
        *(amplitudes(a) for a in audio)
    )
    assert events[-2:] == [TurnEnded(1), SessionEnded()]


async def test_cancel_mid_turn_drops_undelivered_audio_and_queued_turns() -> None:
    tone = ToneEngine(ms_per_char=30, realtime_factor=1.0)
    dispatcher = make_dispatcher(tone)
    dispatcher.send_text("The first turn is long enough to interrupt. ")
    dispatcher.send_text("It has a second sentence too. ")
    dispatcher.turn_done()
    dispatcher.send_text("A queued second turn. ")
    dispatcher.turn_done()
    dispatcher.send_text("An open third turn")
    events = dispatcher.events()
    assert await anext(events) == TurnStarted(1)
    assert isinstance(await anext(events), AudioOut)

    dispatcher.cancel()
    after_cancel = []
    async for event in events:
        after_cancel.append(event)
        if event == TurnEnded(3, cancelled=True):
            break
    assert after_cancel == [
        TurnEnded(1, cancelled=True),
        TurnStarted(2),
        TurnEnded(2, cancelled=True),
        TurnStarted(3),
        TurnEnded(3, cancelled=True),
    ]
    await asyncio.wait_for(tone.idle.wait(), timeout=1.0)
    assert tone.stats.cancelled >= 1
    assert tone.stats.finished == 0

    dispatcher.send_text("After the barge-in.")
    dispatcher.close()
    rest = await drain(events)
    assert rest[0] == TurnStarted(4)
    assert any(isinstance(e, AudioOut) and e.turn == 4 for e in rest)
    assert rest[-2:] == [TurnEnded(4, cancelled=False), SessionEnded()]


async def test_cancel_between_turns_changes_nothing() -> None:
    tone = ToneEngine()
    dispatcher = make_dispatcher(tone)
    dispatcher.send_text("First turn.")
    dispatcher.turn_done()
    events = dispatcher.events()
    async for event in events:
        if isinstance(event, TurnEnded):
            assert not event.cancelled
            break
    dispatcher.cancel()
    dispatcher.send_text("Second turn.")
    dispatcher.close()
    rest = await drain(events)
    assert rest[0] == TurnStarted(2)
    assert rest[-2:] == [TurnEnded(2, cancelled=False), SessionEnded()]


async def test_engine_failure_names_the_segment_and_ends_the_session() -> None:
    tone = ToneEngine(ms_per_char=5)
    dispatcher = make_dispatcher(tone)
    dispatcher.send_text("A fine first segment. ")
    dispatcher.send_text("[[fail]] A broken second segment. ")
    dispatcher.send_text("[[latency_ms=2000]] A third that never plays. ")
    dispatcher.close()
    events = await drain(dispatcher.events())
    failure = events[-2]
    assert isinstance(failure, SessionFailed)
    assert (failure.turn, failure.segment) == (1, 2)
    assert failure.error.code is ErrorCode.INTERNAL
    assert events[-1] == SessionEnded()
    assert {e.segment for e in events if isinstance(e, AudioOut)} <= {1, 2}
    await asyncio.wait_for(tone.idle.wait(), timeout=1.0)  # the third was stopped


async def test_aclose_stops_every_synthesis() -> None:
    tone = ToneEngine(ms_per_char=50, realtime_factor=1.0)
    dispatcher = make_dispatcher(tone)
    for index in range(3):
        dispatcher.send_text(f"Segment {index} speaks for a long while. ")
    assert tone.stats.started == 0  # tasks are created, not yet run
    await asyncio.sleep(0)
    assert tone.stats.active == 3
    await dispatcher.aclose()
    assert tone.stats.active == 0
    assert tone.stats.cancelled == 3


async def test_fail_reports_the_error_for_the_turn_in_progress_and_stops_synthesis() -> None:
    tone = ToneEngine(ms_per_char=50, realtime_factor=1.0)
    dispatcher = make_dispatcher(tone)
    dispatcher.send_text("Something long to say here. ")
    events = dispatcher.events()
    assert await anext(events) == TurnStarted(1)
    error = InvalidInput("bad request")
    dispatcher.fail(error)
    # The error takes the place of the started turn's TURN_ENDED; nothing follows the end.
    assert await drain(events) == [SessionFailed(error, turn=1), SessionEnded()]
    assert dispatcher.state is SessionState.ENDED
    await asyncio.wait_for(tone.idle.wait(), timeout=1.0)


async def test_a_failure_before_any_turn_started_names_no_turn() -> None:
    dispatcher = make_dispatcher(ToneEngine())
    error = InvalidInput("bad request")
    dispatcher.fail(error)
    dispatcher.fail(InvalidInput("a second failure is ignored"))
    assert await drain(dispatcher.events()) == [SessionFailed(error), SessionEnded()]


async def test_the_state_moves_from_open_to_closed() -> None:
    dispatcher = make_dispatcher(ToneEngine())
    assert dispatcher.state is SessionState.OPEN
    dispatcher.send_text("One sentence.")
    dispatcher.close()
    assert dispatcher.state is SessionState.FINISHING  # type: ignore[comparison-overlap]
    dispatcher.send_text("Ignored: the caller said it was done.")
    events = await drain(dispatcher.events())
    assert dispatcher.state is SessionState.ENDED
    await dispatcher.aclose()
    assert dispatcher.state is SessionState.CLOSED
    assert events[-2:] == [TurnEnded(1), SessionEnded()]


def test_bad_text_chunks_are_rejected() -> None:
    dispatcher = make_dispatcher(ToneEngine())
    with pytest.raises(InvalidInput, match="must not be empty"):
        dispatcher.send_text("")
    with pytest.raises(InvalidInput, match="over the limit of 16384"):
        dispatcher.send_text("x" * 16385)


class RecordingObserver(SessionObserver):
    """Keeps every hook call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.samples_reported: list[tuple[int, int]] = []

    def turn_started(self, turn: int) -> None:
        self.calls.append(("turn_started", turn))

    def segment_released(self, turn: int, segment: int, text: str) -> None:
        self.calls.append(("released", turn, segment))

    def segment_started(self, turn: int, segment: int) -> None:
        self.calls.append(("started", turn, segment))

    def audio_sent(self, turn: int, segment: int, *, samples: int, first: bool) -> None:
        self.calls.append(("audio", turn, segment, first, samples))
        self.samples_reported.append((segment, samples))

    def turn_ended(self, turn: int, *, cancelled: bool) -> None:
        self.calls.append(("turn_ended", turn, cancelled))

    def session_ended(self, error: SpeechError | None) -> None:
        self.calls.append(("session_ended", error))


async def test_the_observer_sees_each_step_once_and_first_audio_once_per_segment() -> None:
    tone = ToneEngine(ms_per_char=5)
    observer = RecordingObserver()
    voice = tone.voices()[0]
    dispatcher = SessionDispatcher(
        lambda text: tone.synthesize(voice, text, SynthesisOptions()),
        native_rate_hz=SAMPLE_RATE_HZ,
        output=OutputFormat(AudioEncoding.PCM_S16LE, SAMPLE_RATE_HZ, chunk_ms=20),
        min_sentence_chars=1,
        max_inflight_segments=4,
        observer=observer,
    )
    dispatcher.send_text("First segment here. ")
    dispatcher.send_text("Second segment here.")
    dispatcher.close()
    events = await drain(dispatcher.events())
    await dispatcher.aclose()
    audio = [call for call in observer.calls if call[0] == "audio"]
    messages = [event for event in events if isinstance(event, AudioOut)]
    # The first message of each segment is reported alone, the same instant it is sent.
    first_messages = [next(m for m in messages if m.segment == n) for n in (1, 2)]
    assert [call for call in audio if call[3]] == [
        ("audio", 1, m.segment, True, len(m.data) // 2) for m in first_messages
    ]
    # Later messages may be reported together; every sample is reported once.
    for segment in (1, 2):
        sent = sum(len(m.data) // 2 for m in messages if m.segment == segment)
        assert sum(n for seg, n in observer.samples_reported if seg == segment) == sent
    kinds = [call[0] for call in observer.calls]
    assert kinds.count("released") == 2 and kinds.count("started") == 2
    assert observer.calls[0] == ("released", 1, 1)
    assert observer.calls[-2:] == [("turn_ended", 1, False), ("session_ended", None)]


async def test_a_session_abandoned_by_its_consumer_ends_as_cancelled() -> None:
    tone = ToneEngine(ms_per_char=50, realtime_factor=1.0)
    observer = RecordingObserver()
    voice = tone.voices()[0]
    dispatcher = SessionDispatcher(
        lambda text: tone.synthesize(voice, text, SynthesisOptions()),
        native_rate_hz=SAMPLE_RATE_HZ,
        output=OutputFormat(AudioEncoding.PCM_S16LE, SAMPLE_RATE_HZ),
        min_sentence_chars=1,
        max_inflight_segments=4,
        observer=observer,
    )
    dispatcher.send_text("Long enough to still be speaking. ")
    events = dispatcher.events()
    assert await anext(events) == TurnStarted(1)
    await dispatcher.aclose()
    ended = observer.calls[-1]
    assert ended[0] == "session_ended"
    assert isinstance(ended[1], SpeechError) and ended[1].code is ErrorCode.CANCELLED


async def test_requests_keep_a_session_from_going_idle_and_silence_ends_it() -> None:
    timeout_s = 0.3
    dispatcher = make_dispatcher(ToneEngine(), limits=SessionLimits(idle_timeout_s=timeout_s))
    events = dispatcher.events()
    consumer = asyncio.create_task(drain(events))
    started = time.monotonic()
    # Text without a sentence end: nothing to speak, but each chunk is a request.
    while time.monotonic() - started < 3 * timeout_s:
        dispatcher.send_text("still typing ")
        quiet_since = time.monotonic()
        await asyncio.sleep(timeout_s / 3)  # pacing the input, not waiting for the server
        assert not consumer.done()
    ended = await asyncio.wait_for(consumer, 10 * timeout_s)
    quiet_for = time.monotonic() - quiet_since
    await dispatcher.aclose()
    failure = ended[-2]
    assert isinstance(failure, SessionFailed)
    assert failure.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert failure.turn == 1  # the turn of the unfinished text had started
    assert timeout_s * 0.9 <= quiet_for < timeout_s * 4


async def test_the_audio_sent_moves_the_sessions_playback_clock() -> None:
    scheduler = DeadlineScheduler(1)
    clocks: list[PlaybackClock] = []

    def slot(clock: PlaybackClock, estimate_s: float) -> AbstractAsyncContextManager[None]:
        clocks.append(clock)
        return scheduler.slot(clock, estimate_s)

    dispatcher = make_dispatcher(ToneEngine(ms_per_char=20), synthesis_slot=slot)
    started = time.monotonic()
    dispatcher.send_text("The first sentence. And a second one.")
    dispatcher.close()
    events = await drain(dispatcher.events())

    audio_s = sum(len(e.data) // 2 for e in events if isinstance(e, AudioOut)) / SAMPLE_RATE_HZ
    assert audio_s > 0.5
    assert len(clocks) == 2 and clocks[0] is clocks[1]  # one clock per session
    # Sent faster than real time, so it plays back to back from the first audio.
    assert started + audio_s <= clocks[0].runs_out_at <= time.monotonic() + audio_s


async def test_segments_that_waited_for_a_slot_add_nothing_to_audio_not_yet_read() -> None:
    tone = ToneEngine(ms_per_char=20)
    scheduler = DeadlineScheduler(1)
    dispatcher = make_dispatcher(
        tone,
        max_inflight=8,
        limits=SessionLimits(audio_buffer_bytes=1000),
        synthesis_slot=scheduler.slot,
    )
    sentences = [f"Segment number {index} is here." for index in range(8)]
    for sentence in sentences:
        dispatcher.send_text(sentence + " ")
    dispatcher.close()
    # Nobody reads. The head segment fills the buffer past its ceiling and pauses,
    # giving its slot back; the seven that queued for the one slot while the buffer was
    # empty find it full when they get the slot, and give it back too.
    await wait_for(lambda: tone.stats.active == 1 and scheduler.in_use == 0)
    await wait_for(lambda: scheduler.queued == 0)
    assert tone.stats.started == 1
    assert dispatcher.buffered_audio_bytes == 2 * tone.samples_for(sentences[0])

    events = await drain(dispatcher.events())  # reading lets every segment through
    check_wire_order(events, {1: sentences})


async def test_a_segment_pauses_while_its_client_is_behind_and_lends_its_slot() -> None:
    """A long segment stops taking its engine's audio once its session's buffer is
    full, holding no synthesis slot meanwhile, and goes on where it stopped."""
    tone = ToneEngine(ms_per_char=200)  # 1 s chunks: 350 characters make 70 s
    scheduler = DeadlineScheduler(1)
    second = SAMPLE_RATE_HZ * 2
    behind = make_dispatcher(
        tone, limits=SessionLimits(audio_buffer_bytes=3 * second), synthesis_slot=scheduler.slot
    )
    reader = make_dispatcher(tone, synthesis_slot=scheduler.slot)
    long_text = " ".join(["word"] * 70) + "."
    behind.send_text(long_text)
    behind.turn_done()
    await wait_for(lambda: scheduler.in_use == 0 and tone.stats.active == 1)
    # Paused at its ceiling: it holds its buffer and no more, and the only slot is free.
    assert behind.buffered_audio_bytes == 3 * second

    reader.send_text("Another session speaks meanwhile.")
    reader.close()
    spoken = await asyncio.wait_for(drain(reader.events()), timeout=10)
    check_wire_order(spoken, {1: ["Another session speaks meanwhile."]})
    assert behind.buffered_audio_bytes == 3 * second

    behind.close()
    events = await drain(behind.events())  # reading lets it go on to its end
    check_wire_order(events, {1: [long_text]})
    sent = sum(len(e.data) for e in events if isinstance(e, AudioOut))
    assert sent == 2 * tone.samples_for(long_text)


@pytest.mark.parametrize("staggered", [True, False])
async def test_with_an_engine_faster_alone_a_segment_starts_once_the_one_before_sounds(
    staggered: bool,
) -> None:
    """piper makes a lone segment's audio on every core: on an idle server the head
    segment of a turn sent whole is made alone until its first audio, the next one
    starting then; under load (the engine making others) they start as they can."""
    tone = ToneEngine(first_audio_ms=30)
    log: list[str] = []
    dispatcher = make_dispatcher(tone, stagger_while=lambda: staggered, log=log)
    for sentence in ("First one here. ", "Second one here. ", "Third one here. "):
        dispatcher.send_text(sentence)  # each a segment, all released at once
    dispatcher.close()
    events = await drain(dispatcher.events())
    check_wire_order(events, {1: ["First one here.", "Second one here.", "Third one here."]})
    if staggered:
        assert log == [
            "start First one here.",
            "audio First one here.",
            "start Second one here.",
            "audio Second one here.",
            "start Third one here.",
            "audio Third one here.",
        ]
    else:  # all at once
        assert log[:3] == [f"start {n} one here." for n in ("First", "Second", "Third")]


async def test_what_an_engine_keeps_for_paused_segments_counts_against_the_buffer() -> None:
    """An engine with look-ahead keeps audio for each paused segment outside the buffer,
    so paused segments count as that much: a client reading slowly, each read making a
    little room, does not get segment after segment started and paused."""
    tone = ToneEngine(ms_per_char=100)  # 1 s chunks; each segment makes 20 s
    slots = 2
    scheduler = DeadlineScheduler(slots)
    buffer = 8 * SAMPLE_RATE_HZ * 2
    dispatcher = make_dispatcher(
        tone,
        max_inflight=8,
        limits=SessionLimits(audio_buffer_bytes=buffer),
        synthesis_slot=scheduler.slot,
        paused_segment_bytes=buffer,
    )
    sentences = [" ".join(["Long"] * 39) + f" {n}." for n in range(8)]
    for sentence in sentences:
        dispatcher.send_text(sentence + " ")
    dispatcher.close()

    events = []
    async for event in dispatcher.events():
        events.append(event)
        for _ in range(10):  # reading slowly: what the read woke runs before the next
            await asyncio.sleep(0)
    check_wire_order(events, {1: sentences})
    # Segments made at once: those holding a slot and the head (which may be paused).
    assert tone.stats.peak_active <= slots + 1


@pytest.mark.parametrize("first_clause_words", [2, 0])
async def test_words_waiting_mid_turn_are_spoken_before_the_listener_runs_out(
    first_clause_words: int,
) -> None:
    """The dry rule (first-clause mode): after a short first clause, a long sentence
    still being written would leave the listener without audio; the complete words
    waiting are spoken before the first clause has played. Sentence mode waits."""
    tone = ToneEngine(ms_per_char=30.0)  # "Okay then," is 0.3 s of audio
    dispatcher = make_dispatcher(tone, first_clause_words=first_clause_words, stall_s=0.02)
    dispatcher.send_text(
        "Okay then. I will look" if not first_clause_words else "Okay then, I will look"
    )
    events = dispatcher.events()
    assert await anext(events) == TurnStarted(1)
    first = await anext(events)
    assert isinstance(first, AudioOut) and first.segment == 1
    if not first_clause_words:
        # Its 0.3 s play out and nothing follows: the sentence is not complete.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(events), timeout=1.0)
        await dispatcher.aclose()
        return
    assert amplitudes(first) == {ToneEngine.amplitude_for("Okay then,")}
    second = await anext(events)  # no more text, no turn_done: the dry rule released it
    assert isinstance(second, AudioOut) and second.segment == 2
    assert amplitudes(second) == {ToneEngine.amplitude_for("I will")}  # "look" may grow
    dispatcher.send_text("ing into it.")
    dispatcher.close()
    rest = [event async for event in events]
    third = [e for e in rest if isinstance(e, AudioOut)]
    assert {e.segment for e in third} == {3}
    assert amplitudes(third[0]) == {ToneEngine.amplitude_for("looking into it.")}


async def test_the_dry_rule_allows_longer_words_waiting_more_time_to_their_first_audio() -> None:
    """An engine that makes a run whole (piper) takes longer to the first audio of a
    longer text: the dry rule reckons the words waiting by the session's first-audio
    time per character, so a long run of words after a short first clause is
    released early enough that its audio comes before the first clause has played."""
    per_char_s = 0.012
    tone = ToneEngine(ms_per_char=100.0)  # "Okay then," is 1 s of audio
    voice = tone.voices()[0]
    arrivals: list[tuple[int, float]] = []

    async def synthesize(text: str) -> AsyncIterator[bytes]:
        await asyncio.sleep(per_char_s * len(text))  # "Okay then," 0.12 s, the rest 0.76 s
        async for chunk in tone.synthesize(voice, text, SynthesisOptions()):
            yield chunk

    dispatcher = SessionDispatcher(
        synthesize,
        native_rate_hz=SAMPLE_RATE_HZ,
        output=OutputFormat(AudioEncoding.PCM_S16LE, SAMPLE_RATE_HZ, 0),
        min_sentence_chars=1,
        max_inflight_segments=4,
        first_clause_words=2,
        stall_s=0.02,
    )
    dispatcher.send_text(
        "Okay then, I will look into the matter of your order and the delivery date right"
    )
    events = dispatcher.events()
    assert await anext(events) == TurnStarted(1)
    async for event in events:
        if isinstance(event, AudioOut) and event.segment not in dict(arrivals):
            arrivals.append((event.segment, time.monotonic()))
            if len(arrivals) == 2:
                break
    (first, started), (second, came) = arrivals
    assert (first, second) == (1, 2)
    # Reckoned by the first clause's 0.12 s alone (a lead of 0.47 s), the rest would be
    # released with 0.47 s of the clause left to play and come 0.29 s after it ran out;
    # reckoned per character, it is released at once and comes 0.24 s before.
    assert came - started < 1.0, "the listener ran out of audio before the second segment"
    await dispatcher.aclose()


async def test_a_stalled_turn_start_speaks_its_complete_words() -> None:
    """No clause mark yet and no new text: the words waiting at the start of the turn
    are spoken after the stall time, the word still being written waits for more."""
    tone = ToneEngine()
    dispatcher = make_dispatcher(tone, min_chars=20, first_clause_words=4, stall_s=0.02)
    dispatcher.send_text("Let me check")
    events = dispatcher.events()
    assert await anext(events) == TurnStarted(1)
    audio = await anext(events)  # comes with no turn_done: the stall released it
    assert isinstance(audio, AudioOut) and audio.segment == 1
    assert amplitudes(audio) == {ToneEngine.amplitude_for("Let me")}
    dispatcher.send_text("ing on that.")
    dispatcher.close()
    rest = [event async for event in events]
    second = [e for e in rest if isinstance(e, AudioOut)]
    assert second[-1].segment == 2
    assert amplitudes(second[-1]) == {ToneEngine.amplitude_for("checking on that.")}
