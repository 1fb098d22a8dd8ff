"""First audio through the OpenAI-compatible HTTP endpoint against the gRPC Synthesize
call, on the same server, with the same texts.

One `voxrelay serve` process with piper and espeak and `--http-listen`. Each text is
asked for both ways, alternating which goes first: `POST /v1/audio/speech`
(`response_format: pcm`, 24 kHz 16-bit, over one kept-alive aiohttp connection), timed
from sending the request to the first byte of the body; and `Synthesize` with
PCM_S16LE at 24000 Hz (the same audio), over one gRPC channel, timed from the call to
its first audio message. Both then read the rest, timed to the last byte.

`python -m bench.http_speech [--quick]` runs it alone; the suite runs it as a section.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import grpc

from bench.real_voice import ESPEAK, PIPER, SENTENCES, SHORT_SENTENCES
from bench.report import Section, median, percentile, run_alone
from bench.servers import free_port, start_server_process, stop_server_process
from voxrelay.v1 import speech_pb2, speech_pb2_grpc

RATE_HZ = 24000
TURNS, QUICK_TURNS = 24, 6


@dataclass
class Timings:
    """One voice's requests, in seconds, both ways: (first audio, last byte)."""

    voice: str
    http: list[tuple[float, float]] = field(default_factory=list)
    grpc: list[tuple[float, float]] = field(default_factory=list)

    def first(self, side: str) -> list[float]:
        return [first for first, _ in getattr(self, side)]

    def last(self, side: str) -> list[float]:
        return [last for _, last in getattr(self, side)]

    @property
    def ratio(self) -> float:
        return median(self.first("http")) / median(self.first("grpc"))


async def over_http(
    client: aiohttp.ClientSession, url: str, voice: str, text: str
) -> tuple[float, float]:
    body = {"model": "tts-1", "input": text, "voice": voice, "response_format": "pcm"}
    started = time.perf_counter()
    async with client.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        first_chunk = await response.content.readany()
        first = time.perf_counter() - started
        rest = await response.read()
    assert first_chunk and len(first_chunk + rest) > RATE_HZ // 10
    return first, time.perf_counter() - started


async def over_grpc(
    stub: speech_pb2_grpc.SpeechAsyncStub, voice: str, text: str
) -> tuple[float, float]:
    config = speech_pb2.SessionConfig(voice=voice)
    config.audio_format.encoding = speech_pb2.AUDIO_ENCODING_PCM_S16LE
    config.audio_format.sample_rate_hz = RATE_HZ
    started = time.perf_counter()
    first = None
    call = stub.Synthesize(speech_pb2.SynthesizeRequest(config=config, text=text))
    async for response in call:
        if first is None and response.WhichOneof("response") == "audio":
            first = time.perf_counter() - started
    assert first is not None, f"no audio for {text!r}"
    return first, time.perf_counter() - started


async def measure(
    client: aiohttp.ClientSession,
    url: str,
    stub: speech_pb2_grpc.SpeechAsyncStub,
    voice: str,
    texts: Sequence[str],
) -> Timings:
    timings = Timings(voice)
    for text in texts[:2]:  # warm-up: piper's first inferences are slow
        await over_http(client, url, voice, text)
        await over_grpc(stub, voice, text)
    for turn, text in enumerate(texts):
        if turn % 2:
            timings.grpc.append(await over_grpc(stub, voice, text))
            timings.http.append(await over_http(client, url, voice, text))
        else:
            timings.http.append(await over_http(client, url, voice, text))
            timings.grpc.append(await over_grpc(stub, voice, text))
    return timings


def _ms(values: Sequence[float]) -> str:
    return f"{median(values) * 1000:.1f} / {percentile(values, 90) * 1000:.1f}"


def section(results: Sequence[Timings], turns: int) -> Section:
    rows: list[Sequence[str]] = []
    for timings in results:
        for side, name in (("grpc", "gRPC Synthesize"), ("http", "HTTP /v1/audio/speech")):
            ratio = median(timings.first(side)) / median(timings.first("grpc"))
            rows.append(
                (
                    timings.voice,
                    name,
                    str(len(timings.first(side))),
                    _ms(timings.first(side)),
                    _ms(timings.last(side)),
                    f"{ratio:.2f}",
                )
            )
    notes = [
        f"{t.voice}: HTTP's first audio {median(t.first('http')) * 1000:.1f} ms against "
        f"gRPC's {median(t.first('grpc')) * 1000:.1f} ms (ratio of medians {t.ratio:.2f}, "
        f"{(median(t.first('http')) - median(t.first('grpc'))) * 1000:+.1f} ms)."
        for t in results
    ]
    return Section(
        title="OpenAI-compatible HTTP: first audio against gRPC",
        method=(
            f"{turns} texts per voice on one `voxrelay serve --engines piper,espeak "
            "--http-listen` process, each asked for both ways in alternating order: "
            "`POST /v1/audio/speech` (`response_format: pcm`, 24 kHz, one kept-alive "
            "aiohttp connection), from sending the request to the body's first byte; and "
            "the gRPC `Synthesize` call (PCM_S16LE at 24000 Hz: the same audio, one "
            "channel), from the call to its first audio message. Both read on to the last "
            "byte. Times in ms, p50 / p90."
        ),
        header=(
            "voice",
            "transport",
            "requests",
            "first audio p50 / p90",
            "last byte p50 / p90",
            "first audio vs gRPC",
        ),
        rows=rows,
        notes=notes,
    )


async def run(quick: bool) -> Section:
    turns = QUICK_TURNS if quick else TURNS
    http_port = free_port()
    server = await asyncio.to_thread(
        start_server_process,
        ["--engines", "piper,espeak", "--http-listen", f"127.0.0.1:{http_port}"],
    )
    url = f"http://127.0.0.1:{http_port}/v1/audio/speech"
    try:
        async with (
            aiohttp.ClientSession() as client,
            grpc.aio.insecure_channel(server.target) as channel,
        ):
            stub: speech_pb2_grpc.SpeechAsyncStub = speech_pb2_grpc.SpeechStub(channel)
            results = []
            for voice, sentences in ((PIPER, SENTENCES), (ESPEAK, SHORT_SENTENCES)):
                chosen = [sentences[i % len(sentences)] for i in range(turns)]
                results.append(await measure(client, url, stub, voice, chosen))
                print(f"   {voice}: ratio {results[-1].ratio:.2f}", file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(stop_server_process, server)
    return section(results, turns)


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run, argv, prog="python -m bench.http_speech", description=__doc__, quick_help="fewer texts"
    )


if __name__ == "__main__":
    sys.exit(main())
