"""Word timing from the engines' own alignment, engine by engine, with real voices."""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxrelay_server.engines.base import SpeechEngine, SynthesisItem, SynthesisOptions, WordTiming
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.openai_engine import OpenAIEngine
from voxrelay_server.engines.piper_engine import PiperEngine
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ, ToneEngine
from voxrelay_server.engines.words import WordClock, spoken_words
from voxrelay_server.errors import EngineError

TEXTS = [
    "Hello there, my friend. How are you today?",
    "In the beginning of 2024 there were 1,234 cats -- and Dr. Smith's dog (at 5:30 p.m.).",
    '"Quoted," she said; e.g. the U.S. and IBM... Well!',
    "One.",
]


def check_items(text: str, items: list[SynthesisItem]) -> list[WordTiming]:
    """The engine's stream keeps the contract: every word of the text once, in order,
    with its offsets; timing monotonic and within the audio; each word before the audio
    chunk holding its first sample. Returns the timings."""
    words: list[WordTiming] = []
    samples = 0
    for item in items:
        if isinstance(item, tuple):
            for word in item:
                # Sent no later than the chunk holding its first sample.
                assert word.start_sample >= samples or word.start_sample == word.end_sample
            words += item
        else:
            samples += len(item) // 2
    assert [(w.text_offset, w.text_offset + w.text_length) for w in words] == spoken_words(text)
    starts = [w.start_sample for w in words]
    assert starts == sorted(starts)
    for before, after in itertools.pairwise(words):
        assert before.end_sample <= after.start_sample
    for word in words:
        assert 0 <= word.start_sample <= word.end_sample <= samples
    return words


def assert_scaled(text: str, normal: list[SynthesisItem], fast: list[SynthesisItem]) -> None:
    """At twice the speed, the audio is about half as long, and each word starts at
    about the same fraction of it."""

    def total(items: list[SynthesisItem]) -> int:
        return sum(len(item) // 2 for item in items if isinstance(item, bytes))

    assert 0.3 < total(fast) / total(normal) < 0.7
    for slow_word, fast_word in zip(
        check_items(text, normal), check_items(text, fast), strict=True
    ):
        slow_at = slow_word.start_sample / total(normal)
        fast_at = fast_word.start_sample / total(fast)
        assert abs(slow_at - fast_at) < 0.06


async def timed(
    engine: SpeechEngine, text: str, speed: float = 1.0, voice_name: str = ""
) -> list[SynthesisItem]:
    voice = next(v for v in engine.voices() if not voice_name or v.name == voice_name)
    return [item async for item in engine.synthesize_words(voice, text, SynthesisOptions(speed))]


def test_words_are_runs_without_whitespace_less_their_end_punctuation() -> None:
    text = '  "Hello," -- $5 and 5% (sure)... U.S. ⠁⠃ 日本語 … don\'t '
    assert [text[a:b] for a, b in spoken_words(text)] == [
        "Hello",
        "$5",
        "and",
        "5",
        "sure",
        "U.S",
        "⠁⠃",
        "日本語",
        "don't",
    ]


@given(st.text(max_size=60))
def test_words_cover_every_letter_digit_and_symbol_once(text: str) -> None:
    spans = spoken_words(text)
    assert spans == sorted(spans)
    covered = {i for start, end in spans for i in range(start, end)}
    for index, character in enumerate(text):
        if re.match(r"[^\W_]", character):  # a letter or digit is in exactly one word
            assert index in covered
    for start, end in spans:
        assert not any(c.isspace() for c in text[start:end])


@settings(max_examples=200)
@given(
    st.lists(st.integers(1, 400), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300)), max_size=12),
)
def test_the_clock_sends_each_word_before_the_audio_of_its_first_sample(
    chunks: list[int], events: list[tuple[int, int]]
) -> None:
    """Whatever the engine reports (words skipped, reported twice, out of reach), the
    clock gives every word once, in order, monotonic, within the audio, in time."""
    text = "alpha beta gamma delta"
    clock = WordClock(spoken_words(text))
    items: list[SynthesisItem] = []
    position = 0
    events = sorted(events, key=lambda e: e[1])
    for size in chunks:
        for index, sample in events:
            if position <= sample < position + size:
                clock.start(index, sample)
        position += size
        items += clock.audio(b"\0\0" * size)
    items += clock.finish()
    check_items(text, items)


async def test_tone_timing_is_exact() -> None:
    engine = ToneEngine(ms_per_char=10)
    text = "Hello, world. Two words. "
    words = check_items(text, await timed(engine, text))
    per_char = SAMPLE_RATE_HZ * 10 // 1000
    assert [(w.start_sample, w.end_sample) for w in words] == [
        (a * per_char, b * per_char) for a, b in spoken_words(text)
    ]
    half = check_items(text, await timed(engine, text, speed=2.0))
    assert [w.start_sample for w in half] == [w.start_sample // 2 for w in words]


async def test_tone_directives_are_not_words_and_a_failure_sends_no_timing_beyond() -> None:
    engine = ToneEngine(ms_per_char=10)
    text = "[[latency_ms=1]] first words here [[fail]] then the rest that is never said. "
    items: list[SynthesisItem] = []
    with pytest.raises(EngineError):
        async for item in engine.synthesize_words(engine.voices()[0], text, SynthesisOptions()):
            items.append(item)
    samples = sum(len(item) // 2 for item in items if isinstance(item, bytes))
    words = [w for item in items if isinstance(item, tuple) for w in item]
    assert words and all(w.start_sample < samples for w in words)
    assert [text[w.text_offset :][: w.text_length] for w in words][:3] == ["first", "words", "here"]


async def test_tone_hold_is_not_spoken_and_holds_the_loop() -> None:
    engine = ToneEngine(ms_per_char=10)
    text = "[[hold_ms=200]] held words. "
    assert engine.samples_for(text) == engine.samples_for(" held words. ")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # the ticker is running
    started = time.monotonic()
    items = await timed(engine, text)
    held_s = time.monotonic() - started
    ticker.cancel()
    # Nothing else ran while it held: at most a few ticks for 0.2 s of 10 ms ticks.
    assert held_s >= 0.2 and ticks < 5
    words = [w for item in items if isinstance(item, tuple) for w in item]
    assert [text[w.text_offset :][: w.text_length] for w in words] == ["held", "words"]


@pytest.mark.parametrize("text", TEXTS)
async def test_espeak_word_timing(espeak_engine: EspeakEngine, text: str) -> None:
    words = check_items(text, await timed(espeak_engine, text, voice_name="espeak/en-us"))
    assert all(w.end_sample > w.start_sample for w in words)  # espeak-ng says every word


async def test_espeak_word_timing_scales_with_speed(espeak_engine: EspeakEngine) -> None:
    text = TEXTS[0]
    normal = await timed(espeak_engine, text, 1.0, "espeak/en-us")
    fast = await timed(espeak_engine, text, 2.0, "espeak/en-us")
    assert_scaled(text, normal, fast)


async def test_espeak_word_timing_survives_a_cut_segment(espeak_engine: EspeakEngine) -> None:
    """A segment whose consumer stops taking audio is cut at a word and the rest spoken
    anew: the words keep their places in the whole segment's text and audio."""
    voice = next(v for v in espeak_engine.voices() if v.name == "espeak/en-us")
    text = " ".join(f"Sentence number {n} goes on a little." for n in range(30))
    stream = espeak_engine.synthesize_words(voice, text, SynthesisOptions())
    items = [await anext(stream)]
    voice_hello = [i async for i in espeak_engine.synthesize(voice, "Hello.", SynthesisOptions())]
    assert voice_hello
    items += [item async for item in stream]
    check_items(text, items)


@pytest.mark.parametrize("text", TEXTS)
async def test_piper_word_timing(piper_engine: PiperEngine, text: str) -> None:
    check_items(text, await timed(piper_engine, text))


async def test_piper_word_timing_scales_with_speed(piper_engine: PiperEngine) -> None:
    text = TEXTS[0]
    normal = await timed(piper_engine, text, 1.0)
    fast = await timed(piper_engine, text, 2.0)
    assert_scaled(text, normal, fast)


async def test_piper_word_timing_across_runs(piper_engine: PiperEngine) -> None:
    """A sentence longer than one run of the model: its words keep their order and
    places across the runs."""
    text = " ".join(["and then the cat sat on the mat with a hat"] * 12) + "."
    check_items(text, await timed(piper_engine, text))


def test_openai_gives_no_word_timing() -> None:
    assert not OpenAIEngine(base_url="http://127.0.0.1:9").word_timing
    assert ToneEngine.word_timing and EspeakEngine.word_timing and PiperEngine.word_timing
