"""The LiveKit Agents adapter (`voxrelay.adapters.livekit`) against the real
livekit-agents package and real voxrelay servers over loopback sockets.

No LiveKit room is needed: as LiveKit's own plugin tests do, the tests drive the TTS
object directly, `stream()` with `push_text`/`flush`/`end_input` and `synthesize()`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError
from livekit.agents.tts import SynthesizedAudio
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT
from livekit.agents.voice.io import TimedString

import voxrelay
from tests.conftest import RunningServer, StartServer, wait_for
from tests.processes import free_port
from voxrelay.adapters.livekit import TTS, _TurnText
from voxrelay_server.app import create_server
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.piper_engine import PiperEngine
from voxrelay_server.engines.tone import VOICE_NAME as TONE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.errors import SpeechError
from voxrelay_server.observer import SessionObserver
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog

PIPER = "piper/en_US-joe-medium"
ESPEAK = "espeak/en-us"
RATE = 24000
NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)
TEXT = "Hello there, how are you today? I hope you are well. "
CHUNKS = ["Hello", " there,", " how are", " you today?", " I hope", " you are", " well. "]

pytestmark = pytest.mark.timeout(120)


@dataclass
class Heard:
    """What one LiveKit stream yielded."""

    events: list[SynthesizedAudio]
    timed: list[TimedString] = field(default_factory=list)

    @property
    def samples(self) -> npt.NDArray[np.int16]:
        if not self.events:
            return np.zeros(0, np.int16)
        return np.concatenate([np.frombuffer(e.frame.data, np.int16) for e in self.events])


def heard(events: Sequence[SynthesizedAudio]) -> Heard:
    timed = [
        text
        for event in events
        for text in event.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])
        if isinstance(text, TimedString)
    ]
    return Heard(list(events), timed)


async def speak_through_livekit(tts: TTS, chunks: Sequence[str]) -> Heard:
    """push_text each chunk, flush, end_input, and every event the stream yields."""
    async with tts.stream(conn_options=NO_RETRY) as stream:
        for chunk in chunks:
            stream.push_text(chunk)
        stream.flush()
        stream.end_input()
        return heard([event async for event in stream])


async def speak_through_voxrelay(target: str, voice: str, chunks: Sequence[str]) -> np.ndarray:
    """The same chunks on a voxrelay session of the client, as one turn: its samples."""
    async with (
        voxrelay.AsyncClient(target) as client,
        client.session(voice=voice, sample_rate_hz=RATE, word_timestamps=True) as session,
    ):
        for chunk in chunks:
            await session.send_text(chunk)
        await session.turn_done()
        await session.close()
        audio = [event.samples async for event in session if isinstance(event, voxrelay.Audio)]
    return np.concatenate(audio)


@pytest_asyncio.fixture
async def voices_server(
    start_server: StartServer, piper_engine: PiperEngine, espeak_engine: EspeakEngine
) -> RunningServer:
    """The tone voice (default), piper and espeak."""
    return await start_server(extra_engines=[piper_engine, espeak_engine])


async def test_stream_gives_voxrelays_audio_in_order_as_one_segment(
    voices_server: RunningServer,
) -> None:
    async with TTS(target=voices_server.target, voice=TONE) as tts:
        assert tts.capabilities.streaming and tts.capabilities.aligned_transcript
        got = await speak_through_livekit(tts, CHUNKS)
    expected = await speak_through_voxrelay(voices_server.target, TONE, CHUNKS)

    assert np.array_equal(got.samples, expected)
    assert {(e.frame.sample_rate, e.frame.num_channels) for e in got.events} == {(RATE, 1)}
    # One flush, one voxrelay turn, one LiveKit segment, its last frame final.
    assert len({e.segment_id for e in got.events}) == 1
    assert len({e.request_id for e in got.events}) == 1
    assert [e.is_final for e in got.events] == [False] * (len(got.events) - 1) + [True]


async def test_synthesize_speaks_a_whole_text_by_the_synthesize_rpc(
    voices_server: RunningServer,
) -> None:
    async with TTS(target=voices_server.target, voice=TONE) as tts:
        frames = [event async for event in tts.synthesize(TEXT, conn_options=NO_RETRY)]
    async with voxrelay.AsyncClient(voices_server.target) as client:
        options = voxrelay.SessionOptions(voice=TONE, sample_rate_hz=RATE, word_timestamps=True)
        expected = await client.synthesize(TEXT, options)
    got = heard(frames)

    assert np.array_equal(got.samples, expected.samples)
    assert frames[-1].is_final
    assert "".join(got.timed) == TEXT


@pytest.mark.parametrize("voice", [PIPER, ESPEAK])
async def test_aligned_transcript_from_real_word_timing(
    voices_server: RunningServer, voice: str
) -> None:
    async with TTS(target=voices_server.target, voice=voice) as tts:
        got = await speak_through_livekit(tts, CHUNKS)
    duration_s = len(got.samples) / RATE

    # The timed pieces joined are the text as pushed, each ending at a word.
    assert "".join(got.timed) == "".join(CHUNKS)
    words = [piece.strip(" ,.?") for piece in got.timed]
    assert [w for w in words if w] == re.findall(r"\w+", TEXT)
    starts, ends = [], []
    for piece in got.timed:
        assert isinstance(piece.start_time, float) and isinstance(piece.end_time, float)
        starts.append(piece.start_time)
        ends.append(piece.end_time)
    assert starts == sorted(starts) and ends == sorted(ends)
    assert all(start <= end for start, end in zip(starts, ends, strict=True))
    assert starts[0] >= 0 and ends[-1] <= duration_s + 1e-6
    assert ends[-2] > duration_s / 2  # real timing spread over the audio, not all at 0


async def test_a_push_longer_than_a_stream_chunk_is_sent_in_pieces(
    voices_server: RunningServer,
) -> None:
    long_push = "Words. " * 3000  # 21000 characters, over the 16384 of one text message
    async with TTS(target=voices_server.target, voice=TONE) as tts:
        got = await speak_through_livekit(tts, [long_push])
    assert "".join(got.timed) == long_push
    assert len(got.timed) == 3000 + 1  # every word, then what follows the last


async def test_no_aligned_transcript_without_word_timestamps(
    voices_server: RunningServer,
) -> None:
    async with TTS(target=voices_server.target, voice=ESPEAK, word_timestamps=False) as tts:
        assert not tts.capabilities.aligned_transcript
        got = await speak_through_livekit(tts, CHUNKS)
    assert got.timed == [] and len(got.samples) > RATE


@dataclass
class Recorder(SessionObserver):
    """What the server's session did, in order."""

    steps: list[tuple[str, object]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def turn_started(self, turn: int) -> None:
        self.steps.append(("turn_started", turn))
        self.started.set()

    def audio_sent(self, turn: int, segment: int, *, samples: int, first: bool) -> None:
        self.steps.append(("audio", samples))

    def turn_ended(self, turn: int, *, cancelled: bool) -> None:
        self.steps.append(("turn_ended", cancelled))

    def session_ended(self, error: SpeechError | None) -> None:
        self.steps.append(("session_ended", error))
        self.ended.set()


async def test_closing_a_stream_mid_speech_cancels_on_the_server(
    start_server: StartServer,
) -> None:
    recorders: list[Recorder] = []

    def observe(_session_id: str, _settings: object) -> Recorder:
        recorders.append(Recorder())
        return recorders[-1]

    # Paced at real time: 20 s of audio, so the turn is mid-speech when LiveKit closes.
    server = await start_server(observer_factory=observe, realtime_factor=1.0, ms_per_char=50)
    long_text = "This reply goes on for a long while. " * 10
    async with TTS(target=server.target) as tts:
        stream = tts.stream(conn_options=NO_RETRY)
        stream.push_text(long_text)
        stream.flush()
        first = await anext(stream)
        assert first.frame.duration > 0
        await stream.aclose()  # what LiveKit does when the user barges in
        assert [event async for event in stream] == []

    (recorder,) = recorders
    await asyncio.wait_for(recorder.ended.wait(), 5)
    # The session saw the cancel: the turn ended cancelled and the session ended well,
    # with no audio sent after the cancel, far less than the reply's 20 s.
    ended = recorder.steps.index(("turn_ended", True))
    assert recorder.steps[ended + 1 :] == [("session_ended", None)]
    sent = [n for step, n in recorder.steps if step == "audio"]
    assert sum(n for n in sent if isinstance(n, int)) < 5 * RATE  # of 20 s


async def test_closing_a_stream_before_its_first_audio_cancels_on_the_server(
    start_server: StartServer,
) -> None:
    """A user may barge in while the reply's first audio is still being made."""
    recorders: list[Recorder] = []

    def observe(_session_id: str, _settings: object) -> Recorder:
        recorders.append(Recorder())
        return recorders[-1]

    server = await start_server(observer_factory=observe, first_audio_ms=5000)
    async with TTS(target=server.target) as tts:
        stream = tts.stream(conn_options=NO_RETRY)
        stream.push_text("This reply takes five seconds to start. ")
        stream.flush()
        await wait_for(lambda: bool(recorders))
        await asyncio.wait_for(recorders[0].started.wait(), 5)
        await stream.aclose()
        assert [event async for event in stream] == []

    (recorder,) = recorders
    await asyncio.wait_for(recorder.ended.wait(), 5)
    assert recorder.steps == [
        ("turn_started", 1),
        ("turn_ended", True),
        ("session_ended", None),
    ]


async def test_a_refused_stream_raises_an_api_status_error_with_the_servers_message(
    voices_server: RunningServer,
) -> None:
    async with TTS(target=voices_server.target, voice="espeak/no-such-voice") as tts:
        with pytest.raises(APIStatusError) as raised:
            await speak_through_livekit(tts, ["Hello. "])
        assert raised.value.status_code == 400 and not raised.value.retryable
        assert "unknown voice 'espeak/no-such-voice'" in raised.value.message
        assert raised.value.body == {"grpc_status": "INVALID_ARGUMENT", "turn": 0, "segment": 0}

        with pytest.raises(APIStatusError) as raised:
            await tts.synthesize("Hello. ", conn_options=NO_RETRY).collect()
        assert "unknown voice 'espeak/no-such-voice'" in raised.value.message


async def test_an_engine_failure_after_audio_is_an_api_status_error_not_retried(
    voices_server: RunningServer,
) -> None:
    errors: list[object] = []
    async with TTS(target=voices_server.target, voice=TONE) as tts:
        tts.on("error", errors.append)
        stream = tts.stream(conn_options=APIConnectOptions(max_retry=3, retry_interval=0))
        stream.push_text("This sentence is spoken whole. Then this one [[fail]] breaks. ")
        stream.end_input()
        frames: list[SynthesizedAudio] = []
        with pytest.raises(APIStatusError) as raised:
            async for event in stream:
                frames.append(event)
        await stream.aclose()
    assert frames, "the first sentence's audio came before the failure"
    assert raised.value.status_code == 500
    assert "tone engine: [[fail]] requested" in raised.value.message
    assert raised.value.body == {"grpc_status": "INTERNAL", "turn": 1, "segment": 2}
    # Audio had been passed on, so LiveKit reports it once and does not retry.
    assert len(errors) == 1


async def test_a_speed_out_of_range_is_a_400_too(voices_server: RunningServer) -> None:
    async with TTS(target=voices_server.target, speed=9.0) as tts:
        with pytest.raises(APIStatusError) as raised:
            await speak_through_livekit(tts, ["Hello. "])
    assert raised.value.status_code == 400 and "speed" in raised.value.message


async def test_a_token_the_server_refuses_is_a_401() -> None:
    service = SpeechService(VoiceCatalog([ToneEngine()], TONE), default_max_inflight_segments=4)
    settings = ServerSettings(listen="127.0.0.1:0", auth_tokens="right-token")
    server, port = create_server(service, settings)
    await server.start()
    try:
        async with TTS(target=f"127.0.0.1:{port}", token="wrong-token") as tts:
            with pytest.raises(APIStatusError) as raised:
                await speak_through_livekit(tts, ["Hello. "])
        assert raised.value.status_code == 401
        async with TTS(target=f"127.0.0.1:{port}", token="right-token") as tts:
            assert len((await speak_through_livekit(tts, ["Hello. "])).samples) > 0
    finally:
        await server.stop(grace=None)
        await service.aclose()


async def test_an_unreachable_server_is_an_api_connection_error() -> None:
    async with TTS(target=f"127.0.0.1:{free_port()}") as tts:
        with pytest.raises(APIConnectionError) as raised:
            await speak_through_livekit(tts, ["Hello. "])
    assert "cannot reach a voxrelay server" in str(raised.value)


def test_a_bad_client_setting_fails_when_the_tts_is_made() -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        TTS(tls_cert="client.pem")
    with pytest.raises(ValueError, match="sample_rate"):
        TTS(sample_rate=0)


@st.composite
def texts_and_words(draw: st.DrawFn) -> tuple[str, list[voxrelay.Word]]:
    """A text and some of its words in order, as voxrelay's word timing names them."""
    tokens = draw(st.lists(st.from_regex(r"[A-Za-z']{1,8}[,.?!]?", fullmatch=True), max_size=12))
    gaps = draw(st.lists(st.sampled_from([" ", "  ", "\n", " - "]), min_size=len(tokens) + 1))
    text, words, sample = gaps[0], [], 0
    for token, gap in zip(tokens, gaps[1:], strict=False):
        word = token.rstrip(",.?!")
        if draw(st.booleans()):  # some words have no timing (a cut segment)
            length = draw(st.integers(1, 5000))
            words.append(voxrelay.Word(word, len(text), sample, sample + length))
            sample += length + draw(st.integers(0, 2000))
        text += token + gap
    return text, words


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts_and_words())
def test_timed_pieces_join_into_the_text_and_keep_the_word_times(
    case: tuple[str, list[voxrelay.Word]],
) -> None:
    text, words = case
    turn = _TurnText(text)
    pieces = [turn.piece(word, RATE) for word in words]
    rest = turn.rest()
    if not words:
        assert pieces == [] and rest is None
        return
    assert "".join([*pieces, *([rest] if rest is not None else [])]) == text
    for piece, word in zip(pieces, words, strict=True):
        assert piece.endswith(word.text)
        assert (piece.start_time, piece.end_time) == (
            word.start_samples / RATE,
            word.end_samples / RATE,
        )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(1, len(TEXT) - 1), max_size=8, unique=True))
def test_any_pushes_of_a_text_give_one_segment_and_its_whole_timed_transcript(
    cuts: list[int],
) -> None:
    """Where voxrelay cuts segments depends on when text arrives, so this checks what
    does not: the tone voice's exact word timing (10 ms a character) comes through
    whole, in order, within the audio of one segment."""
    bounds = [0, *sorted(cuts), len(TEXT)]
    chunks = [TEXT[a:b] for a, b in itertools.pairwise(bounds)]

    async def speak() -> Heard:
        service = SpeechService(VoiceCatalog([ToneEngine()], TONE), default_max_inflight_segments=4)
        server, port = create_server(service, ServerSettings(listen="127.0.0.1:0"))
        await server.start()
        try:
            async with TTS(target=f"127.0.0.1:{port}") as tts:
                return await speak_through_livekit(tts, chunks)
        finally:
            await server.stop(grace=None)
            await service.aclose()

    got = asyncio.run(speak())
    assert "".join(got.timed) == TEXT
    words = [(piece, re.findall(r"\w+", piece)) for piece in got.timed]
    assert [found[-1] for _, found in words if found] == re.findall(r"\w+", TEXT)
    ends = [0.0]
    for piece, found in words[: len(re.findall(r"\w+", TEXT))]:
        assert isinstance(piece.start_time, float) and isinstance(piece.end_time, float)
        assert piece.start_time >= ends[-1] - 1e-9
        assert piece.end_time - piece.start_time == pytest.approx(0.010 * len(found[-1]))
        ends.append(piece.end_time)
    assert ends[-1] <= len(got.samples) / RATE
    assert len({e.segment_id for e in got.events}) == 1 and got.events[-1].is_final
