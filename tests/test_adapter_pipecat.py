"""Pipecat pipelines speaking through voxrelay (voxrelay.adapters.pipecat).

Real pipecat (installed by `make install`): a `Pipeline` of `VoxrelayTTSService` and an
output transport, run by a `PipelineWorker` and a `WorkerRunner` (pipecat's names for
what were `PipelineTask` and `PipelineRunner`), against a real voxrelay server on a
loopback port with the real espeak-ng and piper voices. The output transport is a
`BaseOutputTransport` whose device is the test: it takes each chunk of audio in real
time, as a sound card would, so pipecat's own playback machinery (bot speaking
frames, word frames timed to the audio, dropping audio on interruption) runs as in a
call. LLM responses are the frames an LLM service would push, scripted.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import pytest
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

import voxrelay
from tests.conftest import StartServer
from voxrelay.adapters.pipecat import VoxrelayTTSService
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.piper_engine import PiperEngine

F = TypeVar("F", bound=Frame)
RATE_HZ = 16000
"""The pipeline's output rate: neither voice's own (piper 22050, espeak 22050), so the
server resamples."""
TIMEOUT_S = 60.0


class Speaker(BaseOutputTransport):
    """An output transport whose device plays each chunk in real time and keeps it."""

    def __init__(self) -> None:
        super().__init__(TransportParams(audio_out_enabled=True, audio_out_sample_rate=RATE_HZ))
        self.played = bytearray()
        self.played_waiters: list[tuple[int, asyncio.Event]] = []
        self._device_free_at = 0.0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        now = time.monotonic()
        self._device_free_at = max(self._device_free_at, now)
        await asyncio.sleep(self._device_free_at - now)
        self._device_free_at += len(frame.audio) / 2 / frame.sample_rate
        self.played += frame.audio
        for samples, event in self.played_waiters:
            if len(self.played) // 2 >= samples:
                event.set()
        return True

    async def played_at_least(self, seconds: float) -> None:
        event = asyncio.Event()
        self.played_waiters.append((round(seconds * RATE_HZ), event))
        await asyncio.wait_for(event.wait(), TIMEOUT_S)


class Sink(FrameProcessor):
    """Keeps every frame that comes out of the transport."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
        await self.push_frame(frame, direction)

    def of(self, kind: type[F]) -> list[F]:
        return [frame for frame in self.frames if isinstance(frame, kind)]


def response(text: str) -> list[Frame]:
    """An LLM response as an LLM service pushes it: start, the text token by token, end."""
    tokens = re.findall(r"\S+\s*", text)
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(t) for t in tokens),
        LLMFullResponseEndFrame(),
    ]


class Call:
    """A pipeline of the service, a `Sink` (the tap), a `Speaker` and a `Sink`, running."""

    def __init__(self, tts: VoxrelayTTSService) -> None:
        self.tts = tts
        self.speaker = Speaker()
        self.tap = Sink()
        """What the service pushes, before the transport re-cuts the audio."""
        self.sink = Sink()
        self.spoken: list[tuple[str, str, bool]] = []
        self.turn_spoken = asyncio.Event()

        @tts.event_handler("on_turn_spoken")  # type: ignore[untyped-decorator]
        async def on_turn_spoken(_: object, context_id: str, text: str, cancelled: bool) -> None:
            self.spoken.append((context_id, text, cancelled))
            self.turn_spoken.set()

        self.worker = PipelineWorker(
            Pipeline([tts, self.tap, self.speaker, self.sink]),
            params=PipelineParams(audio_out_sample_rate=RATE_HZ),
            cancel_on_idle_timeout=False,
        )
        self.runner = WorkerRunner(handle_sigint=False)
        self.running: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Call:
        started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")  # type: ignore[untyped-decorator]
        async def on_started(_: object, __: object) -> None:
            started.set()

        await self.runner.add_workers(self.worker)
        self.running = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(started.wait(), TIMEOUT_S)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.running is not None and not self.running.done():
            await self.worker.cancel()
            await asyncio.wait_for(self.running, TIMEOUT_S)

    async def send(self, frames: Sequence[Frame]) -> None:
        await self.worker.queue_frames(list(frames))

    async def spoken_turns(self, count: int) -> None:
        while len(self.spoken) < count:
            self.turn_spoken.clear()
            await asyncio.wait_for(self.turn_spoken.wait(), TIMEOUT_S)

    async def end(self) -> None:
        await self.worker.queue_frame(EndFrame())
        assert self.running is not None
        await asyncio.wait_for(self.running, TIMEOUT_S)


def words_of(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


async def test_a_response_is_spoken_with_its_words_timed(
    start_server: StartServer, espeak_engine: EspeakEngine
) -> None:
    server = await start_server(extra_engines=[espeak_engine])
    text = "Hello from the pipeline. Every word of this reply is timed. "
    tts = VoxrelayTTSService(target=server.target, voice="espeak/en-us")
    async with Call(tts) as call:
        await call.send(response(text))
        await call.spoken_turns(1)
        await call.end()

    assert tts.started is not None
    assert (tts.started.voice, tts.started.sample_rate_hz) == ("espeak/en-us", RATE_HZ)
    [(context_id, spoken_text, cancelled)] = call.spoken
    assert (spoken_text, cancelled) == (text, False)
    audio = call.tap.of(TTSAudioRawFrame)
    assert audio and all(f.sample_rate == RATE_HZ for f in audio)
    assert {f.context_id for f in audio} == {context_id}
    started, stopped = call.tap.of(TTSStartedFrame), call.tap.of(TTSStoppedFrame)
    assert len(started) == 1 and len(stopped) == 1
    order = call.tap.frames
    assert order.index(started[0]) < order.index(audio[0]) < order.index(stopped[0])
    # Every word, once, in order, each stamped with a later time than the one before.
    word_frames = [f for f in call.sink.of(TTSTextFrame) if f.text.strip()]
    assert words_of(" ".join(f.text for f in word_frames)) == words_of(text)
    stamps = [f.pts or 0 for f in word_frames]
    assert all(stamps) and stamps == sorted(stamps)
    # All of the turn's audio was played, as long as voxrelay makes it directly.
    async with voxrelay.AsyncClient(server.target) as client:
        direct = await client.synthesize(
            text, voxrelay.SessionOptions("espeak/en-us", sample_rate_hz=RATE_HZ)
        )
    sent = sum(len(f.audio) for f in audio) // 2
    assert sent == pytest.approx(len(direct.samples), rel=0.1)
    # (The speaker also played the silence a transport ends with.)
    assert len(call.speaker.played) // 2 >= sent


async def test_an_interruption_cancels_and_the_server_says_what_was_heard(
    start_server: StartServer, piper_engine: PiperEngine
) -> None:
    """piper, interrupted 2 s into a reply whose first sentence (one segment, no
    clause mark) lasts about 5 s: the turn ends cancelled, and its `spoken_text` is
    the words the speaker played, cut inside that sentence. Only the played position
    the service sends can say so: without it the server counts the segments it
    delivered whole, and would report nothing heard. The next response is spoken
    whole on the same call."""
    server = await start_server(extra_engines=[piper_engine])
    first_sentence = (
        "Let me tell you about the weather this week and what it will mean for the "
        "long walk in the hills that you are planning with your friends next month."
    )
    long_reply = f"{first_sentence} On Monday it will be sunny and warm. The rest looks dry. "
    after = "Sure, I will stop there. "
    tts = VoxrelayTTSService(target=server.target, voice="piper/en_US-joe-medium")
    async with Call(tts) as call:
        await call.send(response(long_reply))
        await call.speaker.played_at_least(2.0)
        await call.send([InterruptionFrame()])
        await call.spoken_turns(1)
        await call.send(response(after))
        await call.spoken_turns(2)
        await call.end()

    (first, heard, cancelled), (second, whole, second_cancelled) = call.spoken
    assert cancelled and not second_cancelled and first != second
    assert whole == after
    # Cut inside the first sentence, at a word's end.
    assert heard and first_sentence.startswith(heard) and len(heard) < len(first_sentence)
    assert re.match(r"[\w']", heard[-1])
    # The words pipecat let through are those played: the server's, give or take the
    # word being spoken when the interruption came.
    played_words = words_of(" ".join(f.text for f in call.sink.of(TTSTextFrame)))
    first_reply = played_words[: len(played_words) - len(words_of(after))]
    assert first_reply == words_of(long_reply)[: len(first_reply)]
    assert abs(len(first_reply) - len(words_of(heard))) <= 2
    # What played after the interruption is the second response.
    second_audio = [f for f in call.tap.of(TTSAudioRawFrame) if f.context_id == second]
    assert second_audio


async def test_a_speak_frame_is_a_turn_of_its_own(
    start_server: StartServer, espeak_engine: EspeakEngine
) -> None:
    """`TTSSpeakFrame` (a greeting, no LLM) is spoken and ended like a response."""
    server = await start_server(extra_engines=[espeak_engine])
    tts = VoxrelayTTSService(target=server.target, voice="espeak/en-us")
    async with Call(tts) as call:
        await call.send([TTSSpeakFrame("Welcome back. "), *response("How can I help? ")])
        await call.spoken_turns(2)
        await call.end()
    assert [(text, cancelled) for _, text, cancelled in call.spoken] == [
        ("Welcome back. ", False),
        ("How can I help? ", False),
    ]
    contexts = [f.context_id for f in call.tap.of(TTSAudioRawFrame)]
    assert [c for i, c in enumerate(contexts) if c not in contexts[:i]] == [
        context for context, _, _ in call.spoken
    ]
    assert words_of(" ".join(f.text for f in call.sink.of(TTSTextFrame))) == words_of(
        "Welcome back. How can I help?"
    )


async def test_a_bad_voice_is_reported_as_a_permanent_error(start_server: StartServer) -> None:
    server = await start_server()
    tts = VoxrelayTTSService(target=server.target, voice="piper/no-such-voice")
    errors: list[str] = []
    reported = asyncio.Event()

    class Errors(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if direction == FrameDirection.UPSTREAM and isinstance(frame, ErrorFrame):
                errors.append(frame.error)
                reported.set()
            await self.push_frame(frame, direction)

    worker = PipelineWorker(
        Pipeline([Errors(), tts]),
        params=PipelineParams(audio_out_sample_rate=RATE_HZ),
        cancel_on_idle_timeout=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(reported.wait(), TIMEOUT_S)
    finally:
        await worker.cancel()
        await asyncio.wait_for(running, TIMEOUT_S)
    assert "INVALID_ARGUMENT" in errors[0] or "unknown voice" in errors[0]
    assert "piper/no-such-voice" in errors[0]


def test_session_options_follow_the_settings() -> None:
    tts = VoxrelayTTSService(
        target="127.0.0.1:1",
        voice="espeak/de",
        options=voxrelay.SessionOptions(speed=1.25, voice="ignored", dtype="float32"),
    )
    options = tts.session_options()
    assert (
        options.voice,
        options.speed,
        options.dtype,
        options.word_timestamps,
        options.pace,
    ) == ("espeak/de", 1.25, "int16", True, "realtime")
    assert np.dtype(options.dtype) == np.int16
