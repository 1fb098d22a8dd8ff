"""voxrelay's own CPU per audio message, without sockets: `python -m bench.pipeline`.

Opens tone sessions on a `SpeechService` in this process (the settings `voxrelay
serve --engines tone` uses, so the same observers run), feeds each one turn as
the messages section does (`chunk_ms=20`, 100 to 500 characters), drains its
events and builds each gRPC response, and divides the CPU time by the messages
built. What is left out is exactly what the bare grpcio baseline also pays:
the transport. The optimisation log's "pipeline CPU per message" is this figure.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence

from bench.messages import CHUNK_MS, TURN_CHARS
from bench.report import median
from voxrelay.v1 import speech_pb2
from voxrelay_server.app import build_service
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.tone import VOICE_NAME
from voxrelay_server.grpc_service import response_for
from voxrelay_server.service import SpeechService
from voxrelay_server.settings import AudioEncoding, SessionRequest


async def _session(service: SpeechService, characters: int) -> int:
    session = service.open_session(
        SessionRequest(
            voice=VOICE_NAME,
            encoding=AudioEncoding.PCM_S16LE,
            sample_rate_hz=0,
            speed=0.0,
            instructions="",
            min_sentence_chars=0,
            chunk_ms=CHUNK_MS,
            max_inflight_segments=0,
        )
    )
    session.send_text("a" * characters)
    session.turn_done()
    session.close()
    messages = 0
    try:
        async for event in session.events():
            response_for(event, speech_pb2.AUDIO_ENCODING_PCM_S16LE, 16000)
            messages += 1
    finally:
        await session.aclose()
    return messages


async def measure(concurrent: int, batches: int, repeats: int) -> list[float]:
    """Microseconds of CPU per message, one figure per repeat."""
    service = build_service(ServerSettings(engines=("tone",), default_voice=VOICE_NAME))
    lengths = random.Random(1)
    figures = []
    for _ in range(repeats):
        started, messages = time.process_time(), 0
        for _ in range(batches):
            counts = await asyncio.gather(
                *(_session(service, lengths.randint(*TURN_CHARS)) for _ in range(concurrent))
            )
            messages += sum(counts)
        figures.append(1e6 * (time.process_time() - started) / messages)
    await service.aclose()
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--sessions", type=int, default=50, help="sessions at a time")
    parser.add_argument("--batches", type=int, default=20, help="rounds of sessions per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args.sessions, args.batches, args.repeats))
    print(
        f"pipeline CPU per message: median {median(figures):.2f} µs, "
        f"min {min(figures):.2f} µs ({args.repeats} repeats)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
