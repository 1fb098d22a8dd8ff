"""Property tests: random sequences of requests, and the wire invariants they must keep.

Hypothesis drives the dispatcher on its own (many examples) and a real server over
gRPC (fewer) with config, text of any kind (any Unicode, whitespace only, control
characters, long runs without a sentence end), turn_done, cancel, half-close and
the client going away at random moments. Whatever happens, the stream a caller
receives keeps every rule of the contract:

- turns numbered from 1 in order, each TURN_STARTED, its audio, then TURN_ENDED,
  or the error in its place; exactly one SESSION_ENDED, last;
- audio segments numbered from 1 within a turn, in order, offsets contiguous from 0,
  whole samples, each segment's audio that of its text (the tone engine's amplitude
  names the text);
- an error only right before SESSION_ENDED, naming the turn left open, with the code
  the call ends with;
- no text dropped or repeated: a turn that ended normally spoke, in its segments,
  exactly the text sent for it (whitespace aside, control characters as spaces);
  a cancelled one a prefix of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.app import create_server
from voxrelay_server.config import ServerSettings
from voxrelay_server.dispatcher import SessionDispatcher, SessionLimits
from voxrelay_server.engines.base import SynthesisOptions
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ, VOICE_NAME, ToneEngine
from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.events import (
    AudioOut,
    SessionEnded,
    SessionEvent,
    SessionFailed,
    TurnEnded,
    TurnStarted,
)
from voxrelay_server.observer import SessionObserver
from voxrelay_server.service import SpeechService
from voxrelay_server.settings import AudioEncoding, OutputFormat
from voxrelay_server.textclean import clean_text, without_markup
from voxrelay_server.voices import VoiceCatalog

MAX_SEGMENT_CHARS = 40
"""Small, so that long runs are cut often."""

TEXTS = st.one_of(
    st.text(max_size=30),  # any Unicode but lone surrogates (gRPC cannot carry those)
    st.text(alphabet=st.characters(codec="ascii"), max_size=30),  # control characters too
    st.sampled_from(["Hello there. ", "A short one! ", "Is it? ", "  ", "\n\t", "\x00", "x"]),
    st.text(alphabet="ab ,;.", min_size=40, max_size=120),  # runs, some without a sentence end
)
INPUT = st.one_of(
    st.tuples(st.just("text"), TEXTS),
    st.tuples(st.just("turn_done"), st.none()),
    st.tuples(st.just("cancel"), st.none()),
    st.tuples(st.just("pause"), st.integers(1, 20)),  # lets the engine and consumer run
)


def squash(text: str) -> str:
    """`text` as the splitter keeps it, without the whitespace it may leave out."""
    return "".join(clean_text(text).split())


@dataclass
class Recorder(SessionObserver):
    """The text of every segment released, by (turn, segment)."""

    segments: dict[tuple[int, int], str] = field(default_factory=dict)

    def segment_released(self, turn: int, segment: int, text: str) -> None:
        self.segments[(turn, segment)] = text


@dataclass
class Sent:
    """What a caller sent, turn by turn, as the contract numbers turns."""

    turns: dict[int, str] = field(default_factory=dict)
    turn_open: bool = False

    def text(self, value: str) -> None:
        if not self.turn_open:
            self.turns[len(self.turns) + 1] = ""
            self.turn_open = True
        self.turns[len(self.turns)] += value

    def end_turn(self) -> None:
        self.turn_open = False


def check_stream(
    events: list[SessionEvent],
    segments: dict[tuple[int, int], str],
    sent: Sent,
    tone: ToneEngine,
    *,
    complete: bool = True,
) -> SessionFailed | None:
    """Assert the contract's rules on `events`; `complete` when the stream was read to
    its end (else it may stop anywhere). Returns the failure, if the session failed."""
    if complete:
        assert events and events[-1] == SessionEnded(), events[-3:]
    assert events.count(SessionEnded()) <= 1
    open_turn = 0
    last_turn = 0
    segment = 0
    offset = 0
    spoken: dict[int, list[str]] = {}
    samples_of: dict[tuple[int, int], int] = {}
    failure = None
    for index, event in enumerate(events):
        if isinstance(event, TurnStarted):
            assert open_turn == 0 and event.turn == last_turn + 1
            open_turn = last_turn = event.turn
            segment = offset = 0
            spoken[event.turn] = []
        elif isinstance(event, AudioOut):
            assert event.turn == open_turn != 0
            if event.segment != segment:
                assert event.segment == segment + 1
                segment = event.segment
                spoken[open_turn].append(segments[(open_turn, segment)])
            assert event.offset_samples == offset and len(event.data) % 2 == 0
            offset += len(event.data) // 2
            samples_of[(event.turn, segment)] = samples_of.get((event.turn, segment), 0) + (
                len(event.data) // 2
            )
            text = segments[(open_turn, segment)]
            levels = set(np.abs(np.frombuffer(event.data, dtype="<i2")).tolist())
            # The engine reads the segment without its markdown marks (a lone "`" is a space).
            assert levels == {ToneEngine.amplitude_for(without_markup(text))}
        elif isinstance(event, TurnEnded):
            assert event.turn == open_turn != 0
            # Whatever was sent and not dropped by a cancel was spoken, once, in order.
            said = "".join(squash(t) for t in spoken[event.turn])
            whole = squash(sent.turns[event.turn])
            if event.cancelled:
                assert whole.startswith(said)
            else:
                assert said == whole
                for number in range(1, segment + 1):
                    text = segments[(event.turn, number)]
                    assert samples_of.get((event.turn, number), 0) == tone.samples_for(text)
            open_turn = 0
        elif isinstance(event, SessionFailed):
            after = events[index + 1 :]
            # Only SESSION_ENDED follows, unless the client stopped reading before it.
            assert after == [SessionEnded()] or (not complete and not after)
            assert event.turn == open_turn
            failure = event
        else:
            assert index == len(events) - 1
    return failure


# The dispatcher on its own.


def make_dispatcher(tone: ToneEngine, recorder: Recorder, min_chars: int) -> SessionDispatcher:
    voice = tone.voices()[0]
    return SessionDispatcher(
        # The segment without its markdown marks, as SpeechService hands it to an engine.
        lambda text: tone.synthesize(voice, without_markup(text), SynthesisOptions()),
        native_rate_hz=SAMPLE_RATE_HZ,
        output=OutputFormat(AudioEncoding.PCM_S16LE, SAMPLE_RATE_HZ),
        min_sentence_chars=min_chars,
        max_inflight_segments=3,
        limits=SessionLimits(max_buffered_text_chars=500, max_segment_chars=MAX_SEGMENT_CHARS),
        observer=recorder,
    )


async def drive_dispatcher(
    inputs: list[tuple[str, object]], min_chars: int, fail_at: int | None
) -> None:
    tone = ToneEngine(ms_per_char=1)
    recorder = Recorder()
    dispatcher = make_dispatcher(tone, recorder, min_chars)
    sent = Sent()
    received: list[SessionEvent] = []

    async def consume() -> None:
        async for event in dispatcher.events():
            received.append(event)

    consumer = asyncio.create_task(consume())
    failed_with: SpeechError | None = None
    for step, (kind, value) in enumerate(inputs):
        if step == fail_at and failed_with is None:
            failed_with = SpeechError(ErrorCode.UNAVAILABLE, "failed on purpose")
            dispatcher.fail(failed_with)
        if kind == "pause":
            assert isinstance(value, int)
            for _ in range(value):
                await asyncio.sleep(0)
            continue
        if failed_with is not None:
            continue  # the servicer stops feeding a failed session
        if kind == "text":
            assert isinstance(value, str)
            try:
                dispatcher.send_text(value)
            except SpeechError as error:  # what the servicer does with a bad request
                failed_with = error
                dispatcher.fail(error)
                continue
            sent.text(value)
        elif kind == "turn_done":
            dispatcher.turn_done()
            sent.end_turn()
        else:
            dispatcher.cancel()
            sent.end_turn()
    dispatcher.close()
    await consumer
    await dispatcher.aclose()
    failure = check_stream(received, recorder.segments, sent, tone)
    assert (failure is None) == (failed_with is None)
    if failure is not None:
        assert failure.error is failed_with
    assert tone.stats.active == 0  # nothing runs on after the session


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=st.lists(INPUT, max_size=25),
    min_chars=st.integers(0, 60),
    fail_at=st.one_of(st.none(), st.integers(0, 25)),
)
def test_the_dispatcher_keeps_the_wire_invariants(
    inputs: list[tuple[str, object]], min_chars: int, fail_at: int | None
) -> None:
    asyncio.run(drive_dispatcher(inputs, min_chars, fail_at))


# A real server over gRPC.

CALL_INPUT = st.one_of(
    st.tuples(st.just("text"), TEXTS),
    st.tuples(st.just("turn_done"), st.none()),
    st.tuples(st.just("cancel"), st.none()),
    st.tuples(st.just("config"), st.none()),  # allowed only first: INVALID_ARGUMENT later
    st.tuples(st.just("empty"), st.none()),  # a request with nothing set: INVALID_ARGUMENT
)
ENDINGS = st.sampled_from(["half_close", "client_cancel", "keep_open"])


@dataclass
class Served:
    target: str
    service: SpeechService
    tone: ToneEngine
    recorders: list[Recorder]


def recorded_tone_service(
    limits: SessionLimits,
) -> tuple[SpeechService, ToneEngine, list[Recorder]]:
    """A service of the tone voice whose sessions each record their segments' text, in
    the list returned beside it (one `Recorder` per session, in the order they opened)."""
    tone = ToneEngine(ms_per_char=1)
    recorders: list[Recorder] = []

    def observer(_id: str, _settings: object) -> SessionObserver:
        recorders.append(Recorder())
        return recorders[-1]

    service = SpeechService(
        VoiceCatalog([tone], VOICE_NAME),
        default_max_inflight_segments=3,
        limits=limits,
        observer_factory=observer,
    )
    return service, tone, recorders


@contextlib.asynccontextmanager
async def tone_server() -> AsyncIterator[Served]:
    service, tone, recorders = recorded_tone_service(
        SessionLimits(max_buffered_text_chars=500, max_segment_chars=MAX_SEGMENT_CHARS)
    )
    settings_ = ServerSettings(listen="127.0.0.1:0", start_timeout_s=5.0, send_timeout_s=5.0)
    server, port = create_server(service, settings_)
    await server.start()
    try:
        yield Served(f"127.0.0.1:{port}", service, tone, recorders)
    finally:
        await server.stop(None)


def domain_event(response: speech_pb2.StreamResponse) -> SessionEvent:
    """The session event a response carries (so one checker serves both tests)."""
    kind = response.WhichOneof("response")
    if kind == "audio":
        audio = response.audio
        assert audio.encoding == speech_pb2.AUDIO_ENCODING_PCM_S16LE
        assert audio.sample_rate_hz == SAMPLE_RATE_HZ
        return AudioOut(audio.turn, audio.segment, audio.data, audio.offset_samples)
    if kind == "error":
        error = response.error
        return SessionFailed(SpeechError(ErrorCode(error.code), error.message), error.turn)
    lifecycle = response.lifecycle
    if lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_STARTED:
        return TurnStarted(lifecycle.turn)
    if lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_ENDED:
        return TurnEnded(lifecycle.turn, cancelled=lifecycle.cancelled)
    assert lifecycle.event == speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED
    return SessionEnded()


def request_for(kind: str, value: object) -> speech_pb2.StreamRequest:
    if kind == "text":
        assert isinstance(value, str)
        return speech_pb2.StreamRequest(text=value)
    if kind == "turn_done":
        return speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone())
    if kind == "cancel":
        return speech_pb2.StreamRequest(cancel=speech_pb2.Cancel())
    if kind == "config":
        return speech_pb2.StreamRequest(config=speech_pb2.SessionConfig())
    return speech_pb2.StreamRequest()


async def drive_server(inputs: list[tuple[str, object]], ending: str) -> None:
    async with tone_server() as served, grpc.aio.insecure_channel(served.target) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Stream()
        sent = Sent()
        bad = False
        await call.write(speech_pb2.StreamRequest(config=speech_pb2.SessionConfig()))
        responses: list[speech_pb2.StreamResponse] = []

        async def read_all() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                while (response := await call.read()) is not grpc.aio.EOF:
                    assert isinstance(response, speech_pb2.StreamResponse)
                    responses.append(response)

        reader = asyncio.create_task(read_all())
        for kind, value in inputs:
            request = request_for(kind, value)
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                break  # the server ended the call (its reason is in the responses)
            if bad:
                continue
            if kind in ("config", "empty") or (kind == "text" and not value):
                bad = True
            elif kind == "text":
                assert isinstance(value, str)
                sent.text(value)
            else:
                sent.end_turn()
        if ending == "client_cancel":
            call.cancel()
        elif ending == "half_close":
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.done_writing()
        else:  # keep the call open: the session stays, waiting for more
            await asyncio.sleep(0.05)
            call.cancel()
        await reader
        # session_started: the call's first message, once; none for a call refused
        # before its session opened (its error comes first) or cancelled before it.
        started = [i for i, r in enumerate(responses) if r.HasField("session_started")]
        assert started == [0] or (started == [] and (not responses or responses[0].error.code))
        events = [domain_event(response) for response in responses[len(started) :]]
        # A call the client cancels at once may end before the server opened its session.
        segments = served.recorders[0].segments if served.recorders else {}
        complete = ending == "half_close"  # else the client ended the call itself
        failure = check_stream(events, segments, sent, served.tone, complete=complete)
        if complete:
            code = await call.code()
            assert (failure is None) == (code is grpc.StatusCode.OK) == (not bad)
            if failure is not None:
                assert failure.error.code.value == code.value[0]
        # Whatever the ending, the server lets go of the session and stops its synthesis.
        await wait_until(lambda: served.service.active_sessions == 0)
        await asyncio.wait_for(served.tone.idle.wait(), 5)


async def wait_until(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "the server did not let go of the session"
        await asyncio.sleep(0.005)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=st.lists(CALL_INPUT, max_size=15), ending=ENDINGS)
@example(inputs=[("text", "`")], ending="half_close")  # a segment that is only a mark
def test_a_real_server_keeps_the_wire_invariants(
    inputs: list[tuple[str, object]], ending: str
) -> None:
    asyncio.run(drive_server(inputs, ending))
