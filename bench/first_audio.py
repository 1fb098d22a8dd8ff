"""Real voices' first audio on an idle server, against each engine called directly at its
fastest.

A one-sentence turn: the time from the caller's last request of the turn (its text and
`turn_done`, sent together) to its first audio message, on one open session of a
`voxrelay serve` process with its default settings (piper and espeak loaded, `--workers`
one per core), on loopback. Beside it, in this process, the engine as its own API runs
it at its fastest: piper's `PiperVoice` loaded with onnxruntime's default threading (a
thread per core), timed from `synthesize()` to its first chunk; and espeak-ng's library
(`EspeakLibrary`) from `espeak_Synth` to its first chunk. The two alternate turn by turn,
each going first in turn, over the same sentences.

`python -m bench.first_audio [--quick]` runs it alone; the suite runs it as a section.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.real_voice import ESPEAK, PIPER, SENTENCES, SHORT_SENTENCES
from bench.report import Goal, Section, median, percentile, run_alone
from bench.servers import start_server_process, stop_server_process
from voxrelay import AsyncClient, Audio, TurnEnded
from voxrelay_server.engines.espeak_engine import NORMAL_WORDS_PER_MINUTE
from voxrelay_server.engines.espeak_library import EspeakLibrary
from voxrelay_server.engines.piper_engine import bundled_joe_voice

GOAL = 1.05
"""The default voice's first audio through voxrelay, at most this many times direct."""
TURNS, QUICK_TURNS = 24, 6


@dataclass
class Timings:
    """First audio of one voice's turns, seconds, both ways."""

    voice: str
    direct: list[float] = field(default_factory=list)
    voxrelay: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return median(self.voxrelay) / median(self.direct)


def piper_direct() -> Callable[[str], float]:
    """First audio of piper's own API, onnxruntime threading as it comes."""
    from piper import PiperVoice

    model, config = bundled_joe_voice()
    voice = PiperVoice.load(model, config_path=config)

    def first_audio(text: str) -> float:
        started = time.perf_counter()
        for _chunk in voice.synthesize(text):
            return time.perf_counter() - started
        raise RuntimeError(f"piper said nothing for {text!r}")

    return first_audio


def espeak_direct() -> Callable[[str], float]:
    """First audio of espeak-ng's library, in this process."""
    library = EspeakLibrary()
    identifier = library.languages()["en-us"]

    def first_audio(text: str) -> float:
        first: list[float] = []
        started = time.perf_counter()

        def on_audio(_pcm: bytes) -> bool:
            first.append(time.perf_counter() - started)
            return False  # the first chunk is all that is timed

        library.synthesize(identifier, text, NORMAL_WORDS_PER_MINUTE, on_audio)
        return first[0]

    return first_audio


async def measure(
    client: AsyncClient, voice: str, direct: Callable[[str], float], sentences: Sequence[str]
) -> Timings:
    timings = Timings(voice)
    async with client.session(voice=voice) as session:
        events = session.events()

        async def through_voxrelay(text: str) -> float:
            started = time.perf_counter()
            await session.send_text(text)
            await session.turn_done()
            first = None
            async for event in events:
                if first is None and isinstance(event, Audio):
                    first = time.perf_counter() - started
                if isinstance(event, TurnEnded):
                    break
            assert first is not None, f"no audio for {text!r}"
            return first

        for text in sentences[:2]:  # warm-up: piper's first inferences are slow
            direct(text)
            await through_voxrelay(text)
        for turn, text in enumerate(sentences):
            if turn % 2:
                timings.voxrelay.append(await through_voxrelay(text))
                timings.direct.append(direct(text))
            else:
                timings.direct.append(direct(text))
                timings.voxrelay.append(await through_voxrelay(text))
    return timings


def section(results: Sequence[Timings], turns: int) -> Section:
    rows: list[Sequence[str]] = [
        (
            timings.voice,
            f"{median(timings.direct) * 1000:.0f} / {percentile(timings.direct, 90) * 1000:.0f}",
            f"{median(timings.voxrelay) * 1000:.0f} / "
            f"{percentile(timings.voxrelay, 90) * 1000:.0f}",
            f"{timings.ratio:.2f}",
        )
        for timings in results
    ]
    piper = next(t for t in results if t.voice == PIPER)
    espeak = next(t for t in results if t.voice == ESPEAK)
    goals = [
        Goal(
            f"{PIPER}: first audio of a one-sentence turn on an idle server at most {GOAL} x "
            "piper called directly at its fastest (median)",
            f"{median(piper.voxrelay) * 1000:.0f} ms against {median(piper.direct) * 1000:.0f}"
            f" ms: {piper.ratio:.2f}",
            piper.ratio <= GOAL,
        )
    ]
    notes = [
        f"espeak-ng makes its first chunk (2 s of speech) in {median(espeak.direct) * 1000:.1f}"
        f" ms; through voxrelay the first audio takes {median(espeak.voxrelay) * 1000:.1f} ms "
        "more or less all of it the call's round trip and the server's handling, so its ratio "
        "says little and it has no goal.",
    ]
    return Section(
        title="Real voices: first audio on an idle server",
        method=(
            f"{turns} one-sentence turns per voice on one open session of `voxrelay serve` "
            "(default settings), from the turn's text and `turn_done` to its first audio "
            "message, alternating turn by turn with the engine called directly in the "
            "benchmark process at its fastest: piper's own `PiperVoice` with onnxruntime's "
            "default threading, and espeak-ng's library (`EspeakLibrary`), each to its first "
            "chunk."
        ),
        header=("voice", "direct p50 / p90 (ms)", "voxrelay p50 / p90 (ms)", "ratio of medians"),
        rows=rows,
        goals=goals,
        notes=notes,
    )


async def run(quick: bool) -> Section:
    turns = QUICK_TURNS if quick else TURNS
    server = await asyncio.to_thread(start_server_process, ["--engines", "piper,espeak"])
    try:
        async with AsyncClient(server.target) as client:
            results = []
            for voice, direct, sentences in (
                (PIPER, piper_direct(), SENTENCES),
                (ESPEAK, espeak_direct(), SHORT_SENTENCES),
            ):
                chosen = [sentences[i % len(sentences)] for i in range(turns)]
                results.append(await measure(client, voice, direct, chosen))
                print(f"   {voice}: ratio {results[-1].ratio:.2f}", file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(stop_server_process, server)
    return section(results, turns)


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run, argv, prog="python -m bench.first_audio", description=__doc__, quick_help="fewer turns"
    )


if __name__ == "__main__":
    sys.exit(main())
