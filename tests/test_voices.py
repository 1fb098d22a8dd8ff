"""The real voices: the piper neural voice and espeak-ng, called directly and over gRPC.

Nothing is mocked: piper runs its onnx model, espeak-ng runs through its shared
library, and the gRPC tests talk to a real server on a loopback socket.

espeak-ng is not bit-for-bit reproducible from call to call (its pitch flutter
keeps a phase, a C `static`, across utterances), so espeak results are compared
by duration and by their loudness envelope rather than byte for byte.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import re
import signal
import sys
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import contextmanager

import grpc
import numpy as np
import numpy.typing as npt
import psutil  # type: ignore[import-untyped]
import pytest

from tests.conftest import (
    StartServer,
    audio_of,
    collect,
    config,
    lifecycle_of,
    text,
    turn_done,
    wait_for,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server import memory
from voxrelay_server.engines import espeak_engine
from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.engines.espeak_engine import AHEAD_BYTES, EspeakEngine
from voxrelay_server.engines.espeak_library import PAUSE, EspeakLibrary
from voxrelay_server.engines.piper_engine import PiperEngine, bundled_joe_voice
from voxrelay_server.errors import EngineError, ErrorCode

PIPER_VOICE = "piper/en_US-joe-medium"
HELLO = "Hello there. How are you today?"
NATIVE_RATE_HZ = 22050
MIN_S_PER_CHAR = 0.03
MAX_S_PER_CHAR = 0.2
SILENCE_RMS = 200.0
"""RMS of int16 samples below which audio counts as silent (speech measures in thousands)."""
SAME_ENVELOPE = 0.85
"""Envelope correlation above which two espeak results count as the same speech."""

Samples = npt.NDArray[np.int16]


def voice_named(engine: SpeechEngine, name: str) -> VoiceInfo:
    """The engine's voice called `name`; fails the test if it does not offer it."""
    by_name = {voice.name: voice for voice in engine.voices()}
    assert name in by_name, f"{engine.name} offers no voice {name}"
    return by_name[name]


async def synthesize(
    engine: SpeechEngine, voice: VoiceInfo, words: str, speed: float = 1.0
) -> Samples:
    """All the int16 samples the engine produces for `words`."""
    chunks = [chunk async for chunk in engine.synthesize(voice, words, SynthesisOptions(speed))]
    return np.frombuffer(b"".join(chunks), dtype="<i2")


def rms(samples: npt.NDArray[np.int16] | npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))) if len(samples) else 0.0


def duration_s(samples: Samples, rate_hz: int = NATIVE_RATE_HZ) -> float:
    return len(samples) / rate_hz


def plausible_duration_s(words: str) -> tuple[float, float]:
    """Bounds on the length of speech for `words`, from its number of characters."""
    return len(words) * MIN_S_PER_CHAR, len(words) * MAX_S_PER_CHAR


def envelope_similarity(first: Samples, second: Samples) -> float:
    """Correlation, in [-1, 1], of the two 10 ms loudness envelopes stretched to one length.

    Stretching absorbs the small timing drift between two runs of one utterance.
    """
    frame = NATIVE_RATE_HZ // 100

    def envelope(samples: Samples, points: int) -> npt.NDArray[np.float64]:
        frames = len(samples) // frame
        blocks = samples[: frames * frame].astype(np.float64).reshape(frames, frame)
        loudness = np.sqrt(np.mean(np.square(blocks), axis=1))
        return np.interp(np.linspace(0, 1, points), np.linspace(0, 1, frames), loudness)

    points = max(len(first), len(second)) // frame
    return float(np.corrcoef(envelope(first, points), envelope(second, points))[0, 1])


def same_speech(first: Samples, second: Samples) -> bool:
    """Whether two espeak results are one utterance: same length (2%), same envelope."""
    lengths_match = abs(len(first) - len(second)) <= 0.02 * max(len(first), len(second))
    return lengths_match and envelope_similarity(first, second) > SAME_ENVELOPE


def assert_speech(samples: Samples, words: str) -> None:
    """Non-silent audio of a plausible length for `words`."""
    low, high = plausible_duration_s(words)
    assert rms(samples) > SILENCE_RMS, f"audio is near silent (RMS {rms(samples):.1f})"
    assert low < duration_s(samples) < high, (
        f"{duration_s(samples):.2f} s of audio for {len(words)} characters, "
        f"expected {low:.2f} to {high:.2f} s"
    )


# piper


async def test_piper_speaks_a_sentence(piper_engine: PiperEngine) -> None:
    voice = voice_named(piper_engine, PIPER_VOICE)
    assert voice.native_sample_rate_hz == NATIVE_RATE_HZ
    assert voice.language_codes == ("en-US",)

    assert_speech(await synthesize(piper_engine, voice, HELLO), HELLO)


async def test_piper_speaks_faster_at_speed_two(piper_engine: PiperEngine) -> None:
    voice = voice_named(piper_engine, PIPER_VOICE)

    normal = await synthesize(piper_engine, voice, HELLO, speed=1.0)
    fast = await synthesize(piper_engine, voice, HELLO, speed=2.0)

    assert rms(fast) > SILENCE_RMS
    assert duration_s(fast) < 0.8 * duration_s(normal)


async def test_piper_closing_a_synthesis_early_stops_it(piper_engine: PiperEngine) -> None:
    """aclose() returns at once and frees the workers: the next synthesis is not held up."""
    voice = voice_named(piper_engine, PIPER_VOICE)
    long_text = " ".join(f"Sentence {n} is here." for n in range(1, 17))
    started = time.monotonic()
    await synthesize(piper_engine, voice, long_text)
    whole_long_text_s = time.monotonic() - started

    # Occupy every worker of the pool (the fixture has one per core) with the long text.
    streams = [
        piper_engine.synthesize(voice, long_text, SynthesisOptions())
        for _ in range(os.cpu_count() or 1)
    ]
    for stream in streams:
        first_chunk = await anext(stream)
        assert len(first_chunk) > 0
    started = time.monotonic()
    for stream in streams:
        assert isinstance(stream, AsyncGenerator)  # closable, as the engine interface promises
        await stream.aclose()
    assert time.monotonic() - started < 0.5

    started = time.monotonic()
    after = await synthesize(piper_engine, voice, HELLO)
    after_s = time.monotonic() - started
    assert_speech(after, HELLO)
    # Had the closed syntheses gone on, this one would have waited for the rest of one.
    assert after_s < whole_long_text_s / 2, (
        f"synthesis after aclose() took {after_s:.2f} s; the long text takes "
        f"{whole_long_text_s:.2f} s"
    )


# espeak


async def test_espeak_speaks_a_sentence(espeak_engine: EspeakEngine) -> None:
    voice = voice_named(espeak_engine, "espeak/en-us")
    assert voice.native_sample_rate_hz == NATIVE_RATE_HZ
    assert voice.language_codes == ("en-US",)

    assert_speech(await synthesize(espeak_engine, voice, HELLO), HELLO)


async def test_espeak_speaks_faster_at_speed_two(espeak_engine: EspeakEngine) -> None:
    voice = voice_named(espeak_engine, "espeak/en-us")

    normal = await synthesize(espeak_engine, voice, HELLO, speed=1.0)
    fast = await synthesize(espeak_engine, voice, HELLO, speed=2.0)

    assert rms(fast) > SILENCE_RMS
    assert duration_s(fast) < 0.8 * duration_s(normal)


def test_espeak_offers_many_languages(espeak_engine: EspeakEngine) -> None:
    voices = espeak_engine.voices()
    names = {voice.name for voice in voices}

    assert len(voices) > 50
    assert {"espeak/en-us", "espeak/en-gb", "espeak/de", "espeak/fr-fr"} <= names
    assert all(voice.engine == "espeak" for voice in voices)
    assert all(voice.native_sample_rate_hz == NATIVE_RATE_HZ for voice in voices)


async def test_espeak_speaks_every_listed_major_language(espeak_engine: EspeakEngine) -> None:
    """Listed voices must be usable: en-gb and fr-fr were listed but could not be selected."""
    for name, words in [
        ("espeak/en-gb", "Good morning, how are you?"),
        ("espeak/fr-fr", "Bonjour, comment allez-vous ?"),
        ("espeak/de", "Guten Morgen, wie geht es Ihnen?"),
    ]:
        assert_speech(
            await synthesize(espeak_engine, voice_named(espeak_engine, name), words), words
        )


async def test_espeak_languages_sound_different(espeak_engine: EspeakEngine) -> None:
    english = voice_named(espeak_engine, "espeak/en-us")
    german = voice_named(espeak_engine, "espeak/de")

    english_once = await synthesize(espeak_engine, english, HELLO)
    english_again = await synthesize(espeak_engine, english, HELLO)
    in_german = await synthesize(espeak_engine, german, HELLO)

    assert same_speech(english_once, english_again)  # the measure recognises a repeat...
    assert_speech(in_german, HELLO)
    assert not same_speech(english_once, in_german)  # ...and tells the languages apart


async def test_espeak_concurrent_syntheses_match_solo_ones(espeak_engine: EspeakEngine) -> None:
    """espeak-ng keeps global state; concurrent callers must not get each other's audio."""
    jobs: Sequence[tuple[str, str, float]] = [
        ("espeak/en-us", HELLO, 1.0),
        ("espeak/en-us", HELLO, 1.6),
        ("espeak/de", "Guten Morgen, wie geht es Ihnen heute?", 1.0),
        ("espeak/fr-fr", "Bonjour, comment allez-vous aujourd'hui ?", 1.0),
        ("espeak/es", "Buenos días, ¿cómo estás hoy?", 1.0),
        ("espeak/nl", "Goedemorgen, hoe gaat het vandaag met je?", 1.0),
    ]

    async def run(name: str, words: str, speed: float) -> Samples:
        return await synthesize(espeak_engine, voice_named(espeak_engine, name), words, speed)

    solo = [await run(*job) for job in jobs]
    together = await asyncio.gather(*(run(*job) for job in jobs))

    for index, (name, words, speed) in enumerate(jobs):
        result = together[index]
        assert rms(result) > SILENCE_RMS, f"{name} at speed {speed} was silent"
        assert same_speech(result, solo[index]), (
            f"{name} {words!r} at speed {speed}: {len(result)} samples together, "
            f"{len(solo[index])} alone, envelope similarity "
            f"{envelope_similarity(result, solo[index]):.3f}"
        )
        others = [other for i, other in enumerate(solo) if i != index]
        assert not any(same_speech(result, other) for other in others), (
            f"{name} at speed {speed} also matches another job: the comparison is meaningless"
        )


# over gRPC


async def test_list_voices_puts_the_piper_default_first(
    start_server: StartServer, piper_engine: PiperEngine, espeak_engine: EspeakEngine
) -> None:
    server = await start_server(
        extra_engines=[piper_engine, espeak_engine], default_voice=PIPER_VOICE
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        response = await stub.ListVoices(speech_pb2.ListVoicesRequest())

    voices = list(response.voices)
    first = voices[0]
    assert first.name == PIPER_VOICE
    assert first.engine == "piper"
    assert first.is_default
    assert first.native_sample_rate_hz == NATIVE_RATE_HZ
    assert list(first.language_codes) == ["en-US"]
    assert [voice.name for voice in voices if voice.is_default] == [PIPER_VOICE]
    espeak_names = {voice.name for voice in voices if voice.engine == "espeak"}
    assert len(espeak_names) > 50
    assert {"espeak/en-us", "espeak/de"} <= espeak_names
    english = next(voice for voice in voices if voice.name == "espeak/en-us")
    assert list(english.language_codes) == ["en-US"]
    assert english.native_sample_rate_hz == NATIVE_RATE_HZ


async def test_stream_without_a_voice_speaks_with_piper(
    start_server: StartServer, piper_engine: PiperEngine, espeak_engine: EspeakEngine
) -> None:
    server = await start_server(
        extra_engines=[piper_engine, espeak_engine], default_voice=PIPER_VOICE
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        responses = await collect(stub, [config(), text(HELLO), turn_done()])

    assert lifecycle_of(responses) == [
        ("started", 1, False),
        ("ended", 1, False),
        ("session_ended", 0, False),
    ]
    chunks = audio_of(responses)
    assert chunks
    assert {chunk.sample_rate_hz for chunk in chunks} == {NATIVE_RATE_HZ}
    assert {chunk.encoding for chunk in chunks} == {speech_pb2.AUDIO_ENCODING_PCM_S16LE}
    assert {chunk.turn for chunk in chunks} == {1}
    samples = np.frombuffer(b"".join(chunk.data for chunk in chunks), dtype="<i2")
    assert_speech(samples, HELLO)
    assert server.tone.stats.started == 0  # the server's other engine was not asked


async def test_espeak_closing_a_synthesis_early_stops_its_worker(
    espeak_engine: EspeakEngine,
) -> None:
    """aclose() stops the worker process within a chunk: the next segment is not held up."""
    voice = voice_named(espeak_engine, "espeak/en-us")
    long_text = " ".join(
        f"Sentence number {n} is a little longer than it needs to be." for n in range(300)
    )
    started = time.monotonic()
    await synthesize(espeak_engine, voice, long_text)
    whole_long_text_s = time.monotonic() - started
    hello_alone = await synthesize(espeak_engine, voice, HELLO)

    stream = espeak_engine.synthesize(voice, long_text, SynthesisOptions())
    assert len(await anext(stream)) > 0
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()
    started = time.monotonic()
    after = await synthesize(espeak_engine, voice, HELLO)
    after_s = time.monotonic() - started

    assert same_speech(after, hello_alone)  # its own audio, nothing left of the long text
    assert after_s < whole_long_text_s / 2, (
        f"the segment after a stopped one took {after_s:.3f} s; the stopped one takes "
        f"{whole_long_text_s:.3f} s whole"
    )


async def test_a_piper_segment_whose_consumer_stops_asking_holds_no_thread() -> None:
    """A segment's runs start only as its consumer asks for audio: one that stops
    asking (its client is behind) leaves the pool to other segments, and picks up
    where it stopped."""
    engine = PiperEngine([bundled_joe_voice()], workers=1)
    try:
        voice = voice_named(engine, PIPER_VOICE)
        sentences = [f"This is sentence number {n}, one run of the model." for n in range(4)]
        stream = engine.synthesize(voice, " ".join(sentences), SynthesisOptions())
        first = await anext(stream)

        # On a pool of one thread: were the paused segment holding it, this never ends.
        hello = await asyncio.wait_for(synthesize(engine, voice, HELLO), timeout=60)
        assert_speech(hello, HELLO)

        rest = [chunk async for chunk in stream]
        assert len(rest) == len(sentences) - 1  # one chunk a run, none lost in the pause
        whole = np.frombuffer(first + b"".join(rest), dtype="<i2")
        assert_speech(whole, " ".join(sentences))
    finally:
        await engine.aclose()


async def test_an_espeak_segment_not_taken_is_cut_at_a_word_and_goes_on(
    espeak_engine: EspeakEngine,
) -> None:
    """A consumer that stops taking audio holds at most `AHEAD_BYTES` and a word: the
    worker is stopped at a word, speaks other segments, and the rest follows later."""
    voice = voice_named(espeak_engine, "espeak/en-us")
    long_text = " ".join(f"Sentence number {n} goes on a little." for n in range(30))
    whole = await synthesize(espeak_engine, voice, long_text)
    assert duration_s(whole) > 4 * AHEAD_BYTES / 2 / NATIVE_RATE_HZ

    stream = espeak_engine.synthesize(voice, long_text, SynthesisOptions())
    taken = [await anext(stream)]
    # The worker takes segments in order: this one is done once the first is cut.
    assert_speech(await synthesize(espeak_engine, voice, HELLO), HELLO)
    longest_word = NATIVE_RATE_HZ * 2  # "Sentence", with room to spare
    assert 0 < espeak_engine.waiting_audio_bytes <= AHEAD_BYTES + 2 * longest_word

    taken += [chunk async for chunk in stream]
    assert espeak_engine.waiting_audio_bytes == 0
    spoken = np.frombuffer(b"".join(taken), dtype="<i2")
    assert_speech(spoken, long_text)
    # Nothing lost or said twice at the cut: its one word spoken again, at most.
    assert abs(duration_s(spoken) - duration_s(whole)) < 0.1 * duration_s(whole)


def test_espeak_reports_where_each_word_starts_in_the_text() -> None:
    """Word starts (where a segment may be cut) are code point indices in the text: each
    word after a space is reported, and some inside a run (a number's digit groups)."""
    library = EspeakLibrary()
    text = (
        "Héllo wörld, 日本 and 😀 emoji, ⠁⠃⠉⠙ braille 1234567890123456789 end; "
        "\U0001d518\U0001d52b test."  # letters outside the Basic Multilingual Plane
    )
    starts: list[tuple[int, int]] = []
    samples = 0

    def on_audio(pcm: bytes) -> bool:
        nonlocal samples
        samples += len(pcm) // 2
        return True

    library.synthesize(library.languages()["en-us"], text, 175, on_audio, starts.extend)
    starts = [start for start in starts if start[0] != PAUSE]  # pauses: word timing's
    characters = [character for character, _ in starts]
    words = [match.start() for match in re.finditer(r"\S+", text)]
    assert set(words) <= set(characters)  # every word: its own start
    assert characters == sorted(set(characters))
    assert characters[0] >= 0 and characters[-1] < len(text)
    first_samples = [sample for _, sample in starts]
    assert first_samples == sorted(first_samples) and first_samples[-1] < samples


@pytest.mark.parametrize(
    ("text", "character", "cut"),
    [
        ("Hello there", 6, True),  # after a space
        ("1,234,567 and", 2, False),  # a digit group of a number read whole
        ("10th", 2, False),  # a suffix of a number
        ("⠁⠃⠉⠙", 2, True),  # a braille pattern: read on its own
        ("a1b2", 2, False),
        ("1,2,3," * 10, 36, True),  # far into a run: no number is read whole
        ("Hello there", 5, False),  # the space itself
        ("Hello", 0, False),  # the start: nothing would be cut off
    ],
)
def test_an_espeak_segment_is_cut_only_where_the_rest_means_the_same(
    text: str, character: int, cut: bool
) -> None:
    assert espeak_engine._cut_point(text, character) is cut


async def test_a_killed_espeak_worker_fails_its_segment_and_is_replaced() -> None:
    engine = EspeakEngine(workers=1)
    try:
        voice = voice_named(engine, "espeak/en-us")
        long_text = " ".join(f"Sentence number {n} goes on and on." for n in range(400))
        (pid,) = engine.worker_pids
        assert pid is not None
        stream = engine.synthesize(voice, long_text, SynthesisOptions())
        received = len(await anext(stream))
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError) as failure:
            async for chunk in stream:
                received += len(chunk)
        assert failure.value.code is ErrorCode.UNAVAILABLE
        assert "worker process ended during synthesis" in failure.value.message
        assert received < len(await synthesize(engine, voice, long_text)) * 2

        assert_speech(await synthesize(engine, voice, HELLO), HELLO)  # a new worker speaks
        assert engine.worker_pids[0] not in (None, pid)
    finally:
        await engine.aclose()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_worker_that_dies_while_starting_is_a_transient_failure_and_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = EspeakEngine(workers=1)
    try:
        voice = voice_named(engine, "espeak/en-us")
        (pid,) = engine.worker_pids
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: engine.worker_pids == [None])
        # The replacement dies before it is ready, as a worker killed while starting does.
        dies = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        monkeypatch.setattr(espeak_engine, "WORKER_COMMAND", (sys.executable, "-c", dies))
        with pytest.raises(EngineError) as failure:
            await synthesize(engine, voice, HELLO)
        fds_before = open_fds()
        with gc_disabled(), pytest.raises(EngineError):
            await synthesize(engine, voice, HELLO)  # and again: each failed start...
        assert open_fds() == fds_before  # ...closes its pipes, not leaving them to the collector
        assert failure.value.code is ErrorCode.UNAVAILABLE  # the next segment may well work
        assert "did not start (it was killed by SIGKILL)" in failure.value.message
        assert "did not start: it was killed by SIGKILL" in caplog.text

        monkeypatch.undo()
        assert_speech(await synthesize(engine, voice, HELLO), HELLO)
    finally:
        await engine.aclose()


@contextmanager
def gc_disabled() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


CONTROLLED = "Hello\x00world, how\x07 are\x1b you\x7f today?\x85 Fine."
"""NUL, bell, escape, delete and next-line: piper refused the NUL outright and espeak-ng
stopped reading at it; each is now a space, for every engine alike."""


@pytest.mark.parametrize("voice", [PIPER_VOICE, "espeak/en-us"])
async def test_control_characters_are_spoken_as_spaces_by_every_engine(
    start_server: StartServer, piper_engine: PiperEngine, espeak_engine: EspeakEngine, voice: str
) -> None:
    server = await start_server(extra_engines=[piper_engine, espeak_engine])
    cleaned = "".join(" " if not c.isprintable() else c for c in CONTROLLED)
    spoken = [await speech_of(server.target, voice, t) for t in (CONTROLLED, cleaned)]
    assert_speech(spoken[0], cleaned)
    assert_same_speech(voice, spoken[0], spoken[1])


async def speech_of(target: str, voice: str, sent: str) -> npt.NDArray[np.int16]:
    """The audio of one session that sends `sent` and half-closes."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        responses = await collect(stub, [config(voice=voice), text(sent)])
    return np.frombuffer(b"".join(c.data for c in audio_of(responses)), dtype="<i2")


def assert_same_speech(
    voice: str, one: npt.NDArray[np.int16], other: npt.NDArray[np.int16]
) -> None:
    if voice == PIPER_VOICE:  # a neural voice's timing varies from run to run
        assert len(one) == pytest.approx(len(other), rel=0.35)
    else:
        assert same_speech(one, other)


MARKDOWN = "## Plan\n**Note:** the *first* step is `setup`.\n- See [the guide](https://x.y/guide)."
SAID = "Plan. Note: the first step is setup. See the guide."


@pytest.mark.parametrize("voice", [PIPER_VOICE, "espeak/en-us"])
async def test_markdown_is_not_read_aloud_as_symbols(
    start_server: StartServer, piper_engine: PiperEngine, espeak_engine: EspeakEngine, voice: str
) -> None:
    server = await start_server(extra_engines=[piper_engine, espeak_engine])
    spoken = await speech_of(server.target, voice, MARKDOWN)
    said = await speech_of(server.target, voice, SAID)
    # Read out, the marks ("asterisk asterisk", the address) made it half as long again.
    assert len(spoken) == pytest.approx(len(said), rel=0.2)


async def test_chinese_through_espeak_is_cut_into_its_sentences(
    start_server: StartServer, espeak_engine: EspeakEngine
) -> None:
    server = await start_server(extra_engines=[espeak_engine])
    sentences = ["今天天气很好。", "我们去公园吧！", "你想去吗？", "好的，我们走吧。"]  # noqa: RUF001
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        streamed = "".join(sentences)  # as an LLM streams it: a few characters at a time
        requests = [
            config(voice="espeak/cmn", min_sentence_chars=1),
            *(text(streamed[start : start + 3]) for start in range(0, len(streamed), 3)),
        ]
        chunks = audio_of(await collect(stub, requests))
    assert len({chunk.segment for chunk in chunks}) == len(sentences)


@pytest.mark.parametrize("engine_name", ["piper", "espeak"])
async def test_a_long_clause_of_numbers_is_spoken_to_its_end(
    piper_engine: PiperEngine, espeak_engine: EspeakEngine, engine_name: str
) -> None:
    """espeak-ng's phoneme list holds about a thousand phonemes a clause and drops the
    rest: two dozen long numbers in one clause lost half their speech, in both voices."""
    engine: SpeechEngine = piper_engine if engine_name == "piper" else espeak_engine
    voice = voice_named(engine, PIPER_VOICE if engine_name == "piper" else "espeak/en-us")
    numbers = [str(314159265358 + 9973 * n) for n in range(24)]
    whole = await synthesize(engine, voice, " ".join(numbers))
    quarters = [await synthesize(engine, voice, " ".join(numbers[q::4])) for q in range(4)]
    assert duration_s(whole) == pytest.approx(sum(map(duration_s, quarters)), rel=0.15)


@pytest.mark.parametrize("engine_name", ["piper", "espeak"])
@pytest.mark.parametrize("run", ["1234567890" * 20, "\U0001f600\U0001f389\U0001f680" * 30])
async def test_a_long_run_with_no_space_is_spoken_to_its_end(
    piper_engine: PiperEngine, espeak_engine: EspeakEngine, engine_name: str, run: str
) -> None:
    """espeak-ng speaks about 11 s of a run of more than 32 digits (or of 40 emoji) and
    drops the rest: 200 digits made 12 s of speech, in both voices, and 32 made 19 s."""
    engine: SpeechEngine = piper_engine if engine_name == "piper" else espeak_engine
    voice = voice_named(engine, PIPER_VOICE if engine_name == "piper" else "espeak/en-us")
    whole = await synthesize(engine, voice, run)
    eighths = [await synthesize(engine, voice, run[e::8]) for e in range(8)]
    assert duration_s(whole) == pytest.approx(sum(map(duration_s, eighths)), rel=0.3)


def given_back_times(engine: PiperEngine, times: int) -> bool:
    return engine.stats.memory_given_back >= times


async def test_piper_gives_its_memory_back_once_it_is_idle() -> None:
    """The arena of a run is freed by the next one; after the last segments of a burst
    the engine frees it itself, rather than keep hundreds of MiB until the next."""
    memory.tune_allocator()  # as the server does
    engine = PiperEngine([bundled_joe_voice()], workers=2)
    try:
        voice = voice_named(engine, PIPER_VOICE)
        await synthesize(engine, voice, HELLO)
        before = psutil.Process().memory_info().rss
        # Numbers at the slowest speed, two segments at once (sharing the voice's
        # arena): each run of the model takes about 300 MiB.
        # Which run's memory stays behind varies with their timing: a few bursts.
        kept = []
        for burst in range(4):
            numbers = [
                " ".join(str(314159265358 + 9973 * n) for n in range(k, k + 2 + burst % 2))
                for k in (0, 3)
            ]
            given_back = engine.stats.memory_given_back + 1
            spoken = await asyncio.gather(
                *(synthesize(engine, voice, t, speed=0.25) for t in numbers)
            )
            assert all(duration_s(samples) > 10 for samples in spoken)
            await wait_for(functools.partial(given_back_times, engine, given_back), 30)
            kept.append((psutil.Process().memory_info().rss - before) >> 20)
        assert max(kept) < 64, f"MiB kept after each burst: {kept}"
    finally:
        await engine.aclose()


async def test_a_lone_piper_run_uses_every_core_and_runs_side_by_side_do_not() -> None:
    """The runs of the only segment being spoken use the voice loaded with every core's
    threads; segments spoken side by side use one thread each, so the pool does not
    oversubscribe the machine."""
    engine = PiperEngine([bundled_joe_voice()], workers=2, lone_run_threads=2)
    try:
        voice = voice_named(engine, PIPER_VOICE)
        alone = await synthesize(engine, voice, HELLO)  # two sentences, one after the other
        assert_speech(alone, HELLO)
        assert engine.stats.runs == engine.stats.runs_alone == 2

        sentences = [f"Sentence number {n} is spoken beside another one." for n in range(2)]
        both = await asyncio.gather(*(synthesize(engine, voice, s) for s in sentences))
        for samples, sentence in zip(both, sentences, strict=True):
            assert_speech(samples, sentence)
        assert engine.stats.runs == 4
        assert engine.stats.runs_alone == 2  # none of the two side by side
    finally:
        await engine.aclose()
