"""Word timing: how close the engines' word starts are to an independent reference, and
what asking for them costs.

Accuracy: each sentence is spoken by a `voxrelay serve` process (piper and espeak
loaded) with `word_timestamps` on, at 16000 Hz (resampled by the server, the rate
pocketsphinx takes), and the same audio is force-aligned to the sentence's words by
pocketsphinx (its bundled en-US acoustic model and dictionary, `set_align_text`): the
absolute difference of each word's start, voxrelay's against pocketsphinx's (10 ms
frames), over every word of every sentence. Cost: one-sentence turns on one open
session, alternately with and without `word_timestamps`, each going first in turn:
the time from the turn's last request to its first audio message, and the messages a
turn takes per second of its audio.

`python -m bench.word_timing [--quick]` runs it alone; the suite runs it as a section.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.real_voice import ESPEAK, PIPER, SENTENCES, SHORT_SENTENCES
from bench.report import Goal, Section, median, percentile, run_alone
from bench.servers import start_server_process, stop_server_process
from voxrelay import AsyncClient, Audio, SessionOptions, TurnEnded, Words

ALIGN_RATE_HZ = 16000
ACCURACY_GOAL_MS = 50.0
"""Median absolute start error, per engine."""
TTFA_COST_GOAL_MS = 5.0
"""First audio added by `word_timestamps`, per engine (difference of medians)."""
TURNS, QUICK_TURNS = 16, 2
"""Turns each way for the cost."""


@dataclass
class Result:
    """One voice's figures."""

    voice: str
    errors_ms: list[float] = field(default_factory=list)
    first_audio_s: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    messages: dict[bool, int] = field(default_factory=lambda: {False: 0, True: 0})
    audio_s: dict[bool, float] = field(default_factory=lambda: {False: 0.0, True: 0.0})

    @property
    def added_ms(self) -> float:
        return (median(self.first_audio_s[True]) - median(self.first_audio_s[False])) * 1000

    def rate(self, timed: bool) -> float:
        """Messages per second of audio."""
        return self.messages[timed] / self.audio_s[timed]


def align_words(sentence: str) -> list[str]:
    """The sentence's words as pocketsphinx's dictionary spells them."""
    return [w for w in re.sub(r"[^\w' ]", " ", sentence).lower().split() if w]


def reference_starts_ms(audio: np.ndarray, sentence: str) -> list[float]:
    """Where pocketsphinx's forced alignment starts each word of `sentence`."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=ALIGN_RATE_HZ, logfn="/dev/null")
    decoder.set_align_text(" ".join(align_words(sentence)))
    decoder.start_utt()
    decoder.process_raw(np.asarray(audio, dtype="<i2").tobytes(), full_utt=True)
    decoder.end_utt()
    frame_ms = 1000 / decoder.config["frate"]
    segments = decoder.seg()
    if segments is None:  # no alignment found: the caller skips the sentence
        return []
    return [
        segment.start_frame * frame_ms
        for segment in segments
        if segment.word not in ("<s>", "</s>", "<sil>")
    ]


async def measure_accuracy(client: AsyncClient, result: Result, sentences: Sequence[str]) -> None:
    options = SessionOptions(voice=result.voice, word_timestamps=True, sample_rate_hz=ALIGN_RATE_HZ)
    for sentence in sentences:
        spoken = await client.synthesize(sentence, options)
        reference = await asyncio.to_thread(reference_starts_ms, spoken.samples, sentence)
        ours = [w.start_samples * 1000 / ALIGN_RATE_HZ for w in spoken.words]
        if len(reference) != len(ours):  # the alignment failed: say so, do not guess
            print(f"   {result.voice}: no alignment of {sentence!r}", file=sys.stderr)
            continue
        result.errors_ms += [abs(a - b) for a, b in zip(ours, reference, strict=True)]


async def one_turn(
    client: AsyncClient, voice: str, sentence: str, timed: bool
) -> tuple[float, int, float]:
    """(first audio s, messages, audio s) of one turn on a new session."""
    options = SessionOptions(voice=voice, word_timestamps=timed)
    messages, audio_s, first = 0, 0.0, 0.0
    async with client.session(options) as session:
        await session.send_text(sentence)
        sent_at = time.perf_counter()
        await session.turn_done()
        async for event in session:
            if isinstance(event, Audio):
                if not first:
                    first = time.perf_counter() - sent_at
                audio_s += event.duration_s
                messages += 1
            elif isinstance(event, Words):
                messages += 1
            elif isinstance(event, TurnEnded):
                break
        await session.close()
    return first, messages, audio_s


async def measure_cost(
    client: AsyncClient, result: Result, sentences: Sequence[str], turns: int
) -> None:
    await one_turn(client, result.voice, sentences[0], True)  # warm: the voice and its words
    for index in range(turns):
        sentence = sentences[index % len(sentences)]
        for timed in (index % 2 == 0, index % 2 == 1):
            first, messages, audio_s = await one_turn(client, result.voice, sentence, timed)
            result.first_audio_s[timed].append(first)
            result.messages[timed] += messages
            result.audio_s[timed] += audio_s


def section(results: Sequence[Result], turns: int, sentences: int) -> Section:
    rows: list[Sequence[str]] = []
    goals = []
    for result in results:
        rows.append(
            [
                result.voice,
                str(len(result.errors_ms)),
                f"{median(result.errors_ms):.1f}",
                f"{percentile(result.errors_ms, 90):.1f}",
                f"{median(result.first_audio_s[False]) * 1000:.1f} → "
                f"{median(result.first_audio_s[True]) * 1000:.1f}",
                f"{result.added_ms:+.1f}",
                f"{result.rate(False):.1f} → {result.rate(True):.1f}",
            ]
        )
        goals.append(
            Goal(
                f"{result.voice}: median word start error < {ACCURACY_GOAL_MS:.0f} ms",
                f"{median(result.errors_ms):.1f} ms",
                median(result.errors_ms) < ACCURACY_GOAL_MS,
            )
        )
        goals.append(
            Goal(
                f"{result.voice}: word_timestamps adds < {TTFA_COST_GOAL_MS:.0f} ms to first audio",
                f"{result.added_ms:+.1f} ms",
                result.added_ms < TTFA_COST_GOAL_MS,
            )
        )
    return Section(
        title="Word timing",
        method=(
            f"{sentences} sentences per voice spoken with `word_timestamps` at {ALIGN_RATE_HZ} Hz, "
            "each word's start against pocketsphinx's forced alignment of the same audio "
            "(bundled en-US model, 10 ms frames); then "
            f"{turns} one-sentence turns each way, with and without `word_timestamps`, "
            "alternating, on one `voxrelay serve` process (piper and espeak loaded)."
        ),
        header=[
            "voice",
            "words",
            "median |start error| ms",
            "p90 ms",
            "first audio ms, off → on",
            "added ms",
            "messages per audio s, off → on",
        ],
        rows=rows,
        goals=goals,
        notes=[
            "pocketsphinx is a reference, not the truth: its frames are 10 ms and its "
            "model was not trained on these voices.",
            "A turn's `words` messages add one message per audio message that holds the "
            "first sample of a word not yet sent (piper: one per sentence run; espeak-ng: "
            "one per chunk of about a clause).",
        ],
    )


async def run(quick: bool) -> Section:
    turns = QUICK_TURNS if quick else TURNS
    sentences = SHORT_SENTENCES[:2] if quick else (*SENTENCES, *SHORT_SENTENCES)
    server = await asyncio.to_thread(start_server_process, ["--engines", "piper,espeak"])
    results = []
    try:
        async with AsyncClient(server.target) as client:
            for voice in (PIPER, ESPEAK):
                result = Result(voice)
                await measure_accuracy(client, result, sentences)
                await measure_cost(client, result, SHORT_SENTENCES, turns)
                print(
                    f"   {voice}: median error {median(result.errors_ms):.1f} ms, "
                    f"first audio {result.added_ms:+.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(result)
    finally:
        await asyncio.to_thread(stop_server_process, server)
    return section(results, turns, len(sentences))


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run,
        argv,
        prog="python -m bench.word_timing",
        description=__doc__,
        quick_help="fewer sentences and turns",
    )


if __name__ == "__main__":
    sys.exit(main())
