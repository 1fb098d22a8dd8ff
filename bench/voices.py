"""Time to first audio and real-time factor of each real voice, direct and through voxrelay.

Run with `make bench` (or `.venv/bin/python -m bench.voices`). For each voice it
measures, side by side in one run and repeated `--repeats` times:

- the engine called directly in-process (the ceiling), and
- the same text through a voxrelay server over real gRPC on loopback,

and prints medians with their spread. Time to first audio is measured from the
moment the text is sent; the real-time factor is wall time / audio duration
(below 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from voxrelay import AsyncClient, Audio
from voxrelay_server.app import create_server
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.piper_engine import PiperEngine, bundled_joe_voice
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Streaming speech lets a voice agent answer before it has finished thinking. "
    "Every sentence is synthesized while the previous one is still playing."
)
VOICES = ("piper/en_US-joe-medium", "espeak/en-us")


@dataclass
class Run:
    first_audio_s: float
    total_s: float
    audio_s: float

    @property
    def rtf(self) -> float:
        return self.total_s / self.audio_s


async def timed(chunks: AsyncIterator[tuple[int, int]]) -> Run:
    """Consume (samples, rate) pairs, timing the first one and the whole."""
    started = time.perf_counter()
    first: float | None = None
    audio_s = 0.0
    async for count, rate in chunks:
        if first is None:
            first = time.perf_counter() - started
        audio_s += count / rate
    return Run(first or 0.0, time.perf_counter() - started, audio_s)


async def direct(engine: SpeechEngine, voice: VoiceInfo) -> Run:
    async def chunks() -> AsyncIterator[tuple[int, int]]:
        async for data in engine.synthesize(voice, TEXT, SynthesisOptions()):
            yield len(data) // 2, voice.native_sample_rate_hz

    return await timed(chunks())


async def through_voxrelay(client: AsyncClient, voice: str) -> Run:
    async def chunks() -> AsyncIterator[tuple[int, int]]:
        async with client.session(voice=voice) as session:
            await session.send_text(TEXT)
            await session.close()
            async for event in session:
                if isinstance(event, Audio):
                    yield len(event.samples), event.sample_rate_hz

    return await timed(chunks())


def summary(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    scaled = [v * scale for v in values]
    spread = (max(scaled) - min(scaled)) / 2
    return f"{statistics.median(scaled):.3f}{unit} ±{spread:.3f}"


async def main(repeats: int) -> list[str]:
    engines: list[SpeechEngine] = [
        PiperEngine([bundled_joe_voice()], workers=os.cpu_count() or 1),
        EspeakEngine(),
    ]
    service = SpeechService(VoiceCatalog(engines, VOICES[0]), default_max_inflight_segments=4)
    server, port = create_server(service, ServerSettings(listen="127.0.0.1:0"))
    await server.start()
    rows = [
        "| voice | path | time to first audio (s) | real-time factor | audio (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    try:
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            for name in VOICES:
                engine, voice = service.catalog.resolve(name)
                runs: dict[str, list[Run]] = {"direct": [], "voxrelay": []}
                await direct(engine, voice)  # warm-up
                await through_voxrelay(client, name)
                for _ in range(repeats):  # interleaved, so both see the same machine load
                    runs["direct"].append(await direct(engine, voice))
                    runs["voxrelay"].append(await through_voxrelay(client, name))
                for path, measured in runs.items():
                    rows.append(
                        f"| {name} | {path} | {summary([r.first_audio_s for r in measured])} "
                        f"| {summary([r.rtf for r in measured])} "
                        f"| {statistics.median(r.audio_s for r in measured):.2f} |"
                    )
    finally:
        await server.stop(None)
        await service.aclose()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs per voice and path")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"text: {len(TEXT)} characters, {args.repeats} runs each (median ±half range)")
    for row in asyncio.run(main(args.repeats)):
        print(row)
