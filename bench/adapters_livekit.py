"""Time to first audio through LiveKit Agents' TTS with voxrelay (`voxrelay.adapters.livekit`),
against the voxrelay client called directly, with the same voices and options.

One sentence a reply, as LiveKit's `AgentSession` speaks a reply: through the adapter,
from `tts.stream()` (a new stream, so a new `Stream` call, per reply) with the text
pushed, flushed and the input ended, to the stream's first `SynthesizedAudio`; and from
`tts.synthesize(text)` to its first frame (the `Synthesize` rpc). Beside each, the
voxrelay client on its own: a new `AsyncClient.session` with the same options (24000 Hz,
word timing on), the text and `turn_done` sent, to its first `Audio`; and
`AsyncClient.synthesize_events` to its first `Audio`. The two alternate reply by reply,
each going first in turn, after a 0.2 s pause, on one `voxrelay serve` process (piper
and espeak loaded) on loopback.

LiveKit Agents has no TTS of its own that runs offline: its TTS plugins call hosted
services, and its default (LiveKit Inference) is hosted too, so there is no default
LiveKit path for a local voice to set beside these figures.

`python -m bench.adapters_livekit [--quick]` runs it alone; `rows()` is what a section
comparing several frameworks' adapters puts in its table (under `HEADER`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bench.real_voice import ESPEAK, PIPER, SENTENCES, SHORT_SENTENCES
from bench.report import Section, median, percentile, run_alone
from bench.servers import start_server_process, stop_server_process
from voxrelay import AsyncClient, Audio, SessionOptions
from voxrelay.adapters.livekit import TTS

TURNS, QUICK_TURNS = 24, 4
WARM_UP = 2
"""Replies each way before any is timed (piper's first inferences are slow)."""
SETTLE_S = 0.2
"""The pause before each timed reply: onnxruntime's thread pools spin for a while after
a run, so a reply right after another would share the CPU with them."""
HEADER = (
    "adapter",
    "voice",
    "voxrelay client p50 / p90 (ms)",
    "through the framework p50 / p90 (ms)",
    "ratio of medians",
)


@dataclass
class Timings:
    """First audio of one path's replies, seconds, both ways."""

    path: str
    voice: str
    direct: list[float] = field(default_factory=list)
    adapter: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return median(self.adapter) / median(self.direct)

    def row(self) -> tuple[str, ...]:
        def cell(values: list[float]) -> str:
            return f"{median(values) * 1000:.1f} / {percentile(values, 90) * 1000:.1f}"

        return (self.path, self.voice, cell(self.direct), cell(self.adapter), f"{self.ratio:.2f}")


FirstAudio = Callable[[str], Awaitable[float]]


def paths(client: AsyncClient, tts: TTS, voice: str) -> dict[str, tuple[FirstAudio, FirstAudio]]:
    """Per path: (the client directly, through LiveKit), each timing one reply."""
    options = SessionOptions(voice=voice, sample_rate_hz=tts.sample_rate, word_timestamps=True)

    async def client_stream(text: str) -> float:
        started = time.perf_counter()
        async with client.session(options) as session:
            await session.send_text(text)
            await session.turn_done()
            await session.close()
            first = None
            async for event in session:
                if first is None and isinstance(event, Audio):
                    first = time.perf_counter() - started
        assert first is not None, f"no audio for {text!r}"
        return first

    async def livekit_stream(text: str) -> float:
        started = time.perf_counter()
        async with tts.stream() as stream:
            stream.push_text(text)
            stream.flush()
            stream.end_input()
            await anext(stream)
            first = time.perf_counter() - started
            async for _ in stream:
                pass
        return first

    async def client_synthesize(text: str) -> float:
        started = time.perf_counter()
        first = None
        async for event in client.synthesize_events(text, options):
            if first is None and isinstance(event, Audio):
                first = time.perf_counter() - started
        assert first is not None, f"no audio for {text!r}"
        return first

    async def livekit_synthesize(text: str) -> float:
        started = time.perf_counter()
        async with tts.synthesize(text) as chunked:
            await anext(chunked)
            first = time.perf_counter() - started
            async for _ in chunked:
                pass
        return first

    return {
        "LiveKit `stream()`": (client_stream, livekit_stream),
        "LiveKit `synthesize()`": (client_synthesize, livekit_synthesize),
    }


async def measure(target: str, turns: int) -> list[Timings]:
    """Every path with piper and espeak, `turns` timed replies each way."""
    results = []
    async with AsyncClient(target) as client:
        for voice, sentences in ((PIPER, SENTENCES), (ESPEAK, SHORT_SENTENCES)):
            async with TTS(target=target, voice=voice) as tts:
                for path, (direct, adapter) in paths(client, tts, voice).items():
                    timings = Timings(path, voice)
                    for text in sentences[:WARM_UP]:
                        await direct(text)
                        await adapter(text)
                    for turn in range(turns):
                        text = sentences[turn % len(sentences)]
                        first, second = (direct, adapter) if turn % 2 else (adapter, direct)
                        await asyncio.sleep(SETTLE_S)
                        one = await first(text)
                        await asyncio.sleep(SETTLE_S)
                        other = await second(text)
                        timings.direct.append(one if first is direct else other)
                        timings.adapter.append(other if first is direct else one)
                    print(f"   {path} {voice}: ratio {timings.ratio:.2f}", file=sys.stderr)
                    results.append(timings)
    return results


async def rows(target: str, quick: bool) -> list[Sequence[str]]:
    """The table rows (under `HEADER`) for a voxrelay server at `target` with the
    piper and espeak voices."""
    return [timings.row() for timings in await measure(target, QUICK_TURNS if quick else TURNS)]


async def run(quick: bool) -> Section:
    server = await asyncio.to_thread(start_server_process, ["--engines", "piper,espeak"])
    try:
        table = await rows(server.target, quick)
    finally:
        await asyncio.to_thread(stop_server_process, server)
    turns = QUICK_TURNS if quick else TURNS
    return Section(
        title="Framework adapters: LiveKit Agents",
        method=(
            f"{turns} one-sentence replies per voice and path on one `voxrelay serve` "
            "(piper and espeak), time to first audio through LiveKit Agents' TTS with "
            "voxrelay (`voxrelay.adapters.livekit`) against the voxrelay client called "
            "directly with the same options (24000 Hz, word timing), alternating reply by "
            "reply: `stream()` (a new stream per reply, pushed, flushed, ended) against a new "
            "client session, and `synthesize()` against `AsyncClient.synthesize_events`."
        ),
        header=HEADER,
        rows=list(table),
        notes=[
            "LiveKit Agents has no TTS of its own that runs offline (its TTS plugins and "
            "LiveKit Inference are hosted services), so no default LiveKit path for a local "
            "voice stands beside these figures.",
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run,
        argv,
        prog="python -m bench.adapters_livekit",
        description=__doc__,
        quick_help="fewer replies",
    )


if __name__ == "__main__":
    sys.exit(main())
