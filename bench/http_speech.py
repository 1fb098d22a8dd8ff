"""First audio through the OpenAI-compatible HTTP endpoint and the WebSocket stream
against the gRPC Synthesize call, on the same server, with the same texts.

One `voxrelay serve` process with piper and espeak and `--http-listen`. Each text is
asked for three ways, the order turning round from text to text: `POST
/v1/audio/speech` (`response_format: pcm`, 24 kHz 16-bit, over one kept-alive aiohttp
connection), timed from sending the request to the first byte of the body; a new
socket on `/v1/stream` (config, the text, `turn_done`, `end`; PCM_S16LE at 24000 Hz),
timed from opening it to its first audio frame; and `Synthesize` with PCM_S16LE at
24000 Hz (the same audio), over one gRPC channel, timed from the call to its first
audio message. Each then reads the rest, timed to the last byte.

`python -m bench.http_speech [--quick]` runs it alone; the suite runs it as a section.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import grpc

from bench.real_voice import ESPEAK, PIPER, SENTENCES, SHORT_SENTENCES
from bench.report import Section, median, percentile, run_alone
from bench.servers import free_port, start_server_process, stop_server_process
from voxrelay.v1 import speech_pb2, speech_pb2_grpc

RATE_HZ = 24000
TURNS, QUICK_TURNS = 24, 6


WAYS = {"grpc": "gRPC Synthesize", "http": "HTTP /v1/audio/speech", "ws": "WebSocket /v1/stream"}
"""Each transport measured, by its key, and its name in the table."""


@dataclass
class Timings:
    """One voice's requests, in seconds, each way: (first audio, last byte)."""

    voice: str
    ways: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {way: [] for way in WAYS}
    )

    def first(self, way: str) -> list[float]:
        return [first for first, _ in self.ways[way]]

    def last(self, way: str) -> list[float]:
        return [last for _, last in self.ways[way]]

    def ratio(self, way: str) -> float:
        """`way`'s median first audio over gRPC's."""
        return median(self.first(way)) / median(self.first("grpc"))


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


async def over_websocket(
    client: aiohttp.ClientSession, url: str, voice: str, text: str
) -> tuple[float, float]:
    config: dict[str, object] = {
        "voice": voice,
        "audio_format": {"encoding": "AUDIO_ENCODING_PCM_S16LE", "sample_rate_hz": RATE_HZ},
    }
    started = time.perf_counter()
    first = None
    received = 0
    async with client.ws_connect(url) as socket:
        requests: list[dict[str, object]] = [
            {"config": config},
            {"text": text},
            {"turn_done": {}},
            {"end": {}},
        ]
        for request in requests:
            await socket.send_json(request)
        async for message in socket:
            if message.type is aiohttp.WSMsgType.BINARY:
                first = first if first is not None else time.perf_counter() - started
                received += len(message.data)
            elif message.type is aiohttp.WSMsgType.TEXT:
                assert "error" not in message.json(), message.data
    assert first is not None and received > RATE_HZ // 10, f"no audio for {text!r}"
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
    base_url: str,
    stub: speech_pb2_grpc.SpeechAsyncStub,
    voice: str,
    texts: Sequence[str],
) -> Timings:
    ways: dict[str, Callable[[str], Awaitable[tuple[float, float]]]] = {
        "grpc": lambda text: over_grpc(stub, voice, text),
        "http": lambda text: over_http(client, f"http://{base_url}/v1/audio/speech", voice, text),
        "ws": lambda text: over_websocket(client, f"ws://{base_url}/v1/stream", voice, text),
    }
    order = list(ways)
    timings = Timings(voice)
    for text in texts[:2]:  # warm-up: piper's first inferences are slow
        for way in order:
            await ways[way](text)
    for turn, text in enumerate(texts):
        for way in order[turn % 3 :] + order[: turn % 3]:  # each goes first in turn
            timings.ways[way].append(await ways[way](text))
    return timings


def _ms(values: Sequence[float]) -> str:
    return f"{median(values) * 1000:.1f} / {percentile(values, 90) * 1000:.1f}"


def section(results: Sequence[Timings], turns: int) -> Section:
    rows: list[Sequence[str]] = []
    for timings in results:
        for way, name in WAYS.items():
            rows.append(
                (
                    timings.voice,
                    name,
                    str(len(timings.first(way))),
                    _ms(timings.first(way)),
                    _ms(timings.last(way)),
                    f"{timings.ratio(way):.2f}",
                )
            )
    notes = [
        f"{t.voice}: {WAYS[way]}'s first audio {median(t.first(way)) * 1000:.1f} ms against "
        f"gRPC's {median(t.first('grpc')) * 1000:.1f} ms (ratio of medians "
        f"{t.ratio(way):.2f}, {(median(t.first(way)) - median(t.first('grpc'))) * 1000:+.1f} ms)."
        for t in results
        for way in ("http", "ws")
    ]
    return Section(
        title="OpenAI-compatible HTTP and WebSocket: first audio against gRPC",
        method=(
            f"{turns} texts per voice on one `voxrelay serve --engines piper,espeak "
            "--http-listen` process, each asked for three ways, each going first in turn: "
            "`POST /v1/audio/speech` (`response_format: pcm`, 24 kHz, one kept-alive "
            "aiohttp connection), from sending the request to the body's first byte; a new "
            "WebSocket on `/v1/stream` (config, text, `turn_done`, `end`; PCM_S16LE at "
            "24000 Hz), from opening it to its first audio frame; and the gRPC `Synthesize` "
            "call (PCM_S16LE at 24000 Hz: the same audio, one channel), from the call to its "
            "first audio message. Each reads on to the last byte. Times in ms, p50 / p90."
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
    base_url = f"127.0.0.1:{http_port}"
    try:
        async with (
            aiohttp.ClientSession() as client,
            grpc.aio.insecure_channel(server.target) as channel,
        ):
            stub: speech_pb2_grpc.SpeechAsyncStub = speech_pb2_grpc.SpeechStub(channel)
            results = []
            for voice, sentences in ((PIPER, SENTENCES), (ESPEAK, SHORT_SENTENCES)):
                chosen = [sentences[i % len(sentences)] for i in range(turns)]
                results.append(await measure(client, base_url, stub, voice, chosen))
                ratios = ", ".join(f"{way} {results[-1].ratio(way):.2f}" for way in ("http", "ws"))
                print(f"   {voice}: {ratios}", file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(stop_server_process, server)
    return section(results, turns)


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run, argv, prog="python -m bench.http_speech", description=__doc__, quick_help="fewer texts"
    )


if __name__ == "__main__":
    sys.exit(main())
