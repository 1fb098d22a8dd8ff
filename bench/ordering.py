"""Ordered concurrency: a turn of ten sentences whose engine takes 200 ms per segment.

All ten sentences (one text chunk each, so each is its own segment) and
`turn_done` are sent at once. Synthesizing them concurrently, the turn's last
audio byte can arrive one segment latency plus the time to stream all the audio
after the start; one after the other it takes ten latencies. Measured for
voxrelay (over gRPC, `max_inflight_segments` 10, and the server default 4 and 1
for contrast) and for the in-process reference, beside each system's own
streaming time (the same turn with an instant engine).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from bench.reference import reference_result
from bench.report import Goal, Section, median, spread
from bench.servers import in_process_server
from bench.ttfa import (
    TURN_ENDED,
    RawSession,
    ReferenceConsumer,
    Response,
    SynthesisRecord,
    TimedLatencyModel,
    TimedToneEngine,
    is_lifecycle,
)
from voxrelay.v1 import speech_pb2
from voxrelay_server.engines.tone import VOICE_NAME

LATENCY_MS = 200
MS_PER_CHAR = 1.0
"""Short audio: about 35 ms per sentence, so latency dominates."""
WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SENTENCES = tuple(f"This is sentence number {word} of ten." for word in WORDS)
"""Ten sentences of 33 to 35 characters: each over both splitters' 20-character minimum."""
REPEATS_FULL, REPEATS_QUICK = 25, 5
SEQUENTIAL_REPEATS_FULL, SEQUENTIAL_REPEATS_QUICK = 3, 1
"""Repeats of the `max_inflight_segments=1` run, which takes ten latencies each."""
WARMUP = 1


@dataclass
class Runs:
    """Times to the last audio byte of the turn (seconds), with per-run details."""

    label: str
    times: list[float] = field(default_factory=list)
    start_spreads: list[float] = field(default_factory=list)
    """How far apart the ten segments' syntheses started, per run."""


def _start_spread(records: Sequence[SynthesisRecord], count: int) -> float:
    starts = [record.started for record in records[-count:]]
    return max(starts) - min(starts)


async def voxrelay_turn(session: RawSession, engine: TimedToneEngine) -> tuple[float, float]:
    """Send the ten sentences and `turn_done` at once; (time to last audio, start spread)."""

    async def read_turn() -> list[tuple[float, Response]]:
        arrived = []
        while True:
            response = await session.read()
            arrived.append((time.perf_counter(), response))
            if is_lifecycle(response, TURN_ENDED):
                return arrived

    calls = len(engine.records)
    reader = asyncio.create_task(read_turn())
    started = time.perf_counter()
    for sentence in SENTENCES:
        await session.send_text(sentence + " ")
    await session.turn_done()
    arrived = await reader
    audio = [(t, r.audio) for t, r in arrived if r.WhichOneof("response") == "audio"]
    _check_order([chunk for _, chunk in audio], engine)
    if len(engine.records) - calls != len(SENTENCES):
        raise RuntimeError("expected one segment per sentence")
    return audio[-1][0] - started, _start_spread(engine.records, len(SENTENCES))


def _check_order(chunks: Sequence[speech_pb2.AudioChunk], engine: TimedToneEngine) -> None:
    """Segments 1..10 in order, whole, at contiguous offsets, each from its own sentence."""
    offset, last = 0, 0
    samples: dict[int, int] = {}
    for chunk in chunks:
        if chunk.segment < last:
            raise RuntimeError(f"audio out of order: segment {chunk.segment} after {last}")
        if chunk.offset_samples != offset:
            raise RuntimeError("audio offsets are not contiguous")
        amplitude = abs(int.from_bytes(chunk.data[:2], "little", signed=True))
        if amplitude != engine.amplitude_for(SENTENCES[chunk.segment - 1]):
            raise RuntimeError(f"segment {chunk.segment} carries another sentence's audio")
        count = len(chunk.data) // 2
        samples[chunk.segment] = samples.get(chunk.segment, 0) + count
        offset += count
        last = chunk.segment
    expected = {i + 1: engine.samples_for(text) for i, text in enumerate(SENTENCES)}
    if samples != expected:
        raise RuntimeError(f"segments incomplete or missing: {samples} != {expected}")


async def reference_turn(
    consumer: ReferenceConsumer, model: TimedLatencyModel
) -> tuple[float, float]:
    """The same turn through the reference, driven as VoicePipeline does."""
    result = consumer.result
    calls = len(model.records)
    audio, lifecycle = consumer.mark()
    started = time.perf_counter()
    for sentence in SENTENCES:
        await result._add_text(sentence + " ")
    await result._turn_done()  # type: ignore[no-untyped-call]
    await consumer.wait_lifecycle("turn_ended", lifecycle)
    if len(model.records) - calls != len(SENTENCES):
        raise RuntimeError("expected one reference segment per sentence")
    if len(consumer.audio_times) <= audio:
        raise RuntimeError("the reference produced no audio")
    return consumer.audio_times[-1] - started, _start_spread(model.records, len(SENTENCES))


async def run(quick: bool) -> Section:
    """Time a ten-segment turn through each system and compare it with the ideal."""
    repeats = REPEATS_QUICK if quick else REPEATS_FULL
    sequential_repeats = SEQUENTIAL_REPEATS_QUICK if quick else SEQUENTIAL_REPEATS_FULL
    load_before = os.getloadavg()[0]
    slow = TimedToneEngine(first_audio_ms=LATENCY_MS, ms_per_char=MS_PER_CHAR)
    instant = TimedToneEngine(first_audio_ms=0, ms_per_char=MS_PER_CHAR)
    slow_model = TimedLatencyModel(LATENCY_MS / 1000, ms_per_char=MS_PER_CHAR)
    instant_model = TimedLatencyModel(0.0, ms_per_char=MS_PER_CHAR)
    runs = {
        key: Runs(label)
        for key, label in (
            ("vox10", "voxrelay, max_inflight_segments=10"),
            ("vox4", "voxrelay, max_inflight_segments=4 (server default)"),
            ("vox1", "voxrelay, max_inflight_segments=1 (sequential)"),
            ("ref", "reference (no in-flight limit)"),
            ("vox_stream", "voxrelay streaming part (same turn, L=0)"),
            ("ref_stream", "reference streaming part (same turn, L=0)"),
        )
    }
    async with (
        in_process_server([slow], VOICE_NAME) as server,
        in_process_server([instant], VOICE_NAME) as instant_server,
        grpc.aio.insecure_channel(server.target) as channel,
        grpc.aio.insecure_channel(instant_server.target) as instant_channel,
    ):
        sessions = {
            "vox10": await RawSession.open(channel, max_inflight_segments=10),
            "vox4": await RawSession.open(channel, max_inflight_segments=4),
            "vox1": await RawSession.open(channel, max_inflight_segments=1),
            "vox_stream": await RawSession.open(instant_channel, max_inflight_segments=10),
        }
        engines = {"vox10": slow, "vox4": slow, "vox1": slow, "vox_stream": instant}
        consumers = {
            "ref": (ReferenceConsumer(reference_result(slow_model)), slow_model),
            "ref_stream": (ReferenceConsumer(reference_result(instant_model)), instant_model),
        }
        for index in range(WARMUP + repeats):
            # Round-robin, so every configuration sees the same machine.
            for key in runs:
                if key == "vox1" and index >= WARMUP + sequential_repeats:
                    continue
                if key in sessions:
                    elapsed, starts = await voxrelay_turn(sessions[key], engines[key])
                else:
                    elapsed, starts = await reference_turn(*consumers[key])
                if index >= WARMUP:
                    runs[key].times.append(elapsed)
                    runs[key].start_spreads.append(starts)
        for session in sessions.values():
            await session.close()
        for consumer, _ in consumers.values():
            await consumer.result._done()  # type: ignore[no-untyped-call]
            await consumer.task
    load_after = os.getloadavg()[0]

    latency = LATENCY_MS / 1000
    streaming = {
        "vox": median(runs["vox_stream"].times),
        "ref": median(runs["ref_stream"].times),
    }
    ideal = {key: latency + value for key, value in streaming.items()}
    sequential = {key: len(SENTENCES) * latency + value for key, value in streaming.items()}
    section = Section(
        title="Ordered concurrency: ten 200 ms segments in one turn",
        method=(
            f"One turn of {len(SENTENCES)} sentences ({len(SENTENCES[0])}-"
            f"{max(map(len, SENTENCES))} characters, one text chunk each, so each is a segment "
            f"on both sides) and `turn_done`, sent at once; the engine (`tone` / "
            f"`LatencyTTSModel`) waits {LATENCY_MS} ms per segment, then yields "
            f"{MS_PER_CHAR:g} ms of audio per character at once. Timed from the first write to "
            "the turn's last audio message at the client (voxrelay: in-process server, gRPC over "
            "loopback, one session per configuration; reference: `_add_text` per sentence, "
            "`_turn_done`, last `VoiceStreamEventAudio` from `stream()`). *Streaming part*: the "
            "same turn with an instant engine, measured per system. *Ideal* = "
            f"{LATENCY_MS} ms + that system's streaming part; *sequential* = "
            f"{len(SENTENCES)} x {LATENCY_MS} ms + the same. The streaming part includes sending "
            "the requests, which at L=200 ms overlaps the latency, so this ideal is generous "
            f"(ratios just under 1 are possible); *vs {LATENCY_MS} ms alone* gives no allowance "
            "for streaming at all. Voxrelay checks every run's audio: "
            "segments 1-10 in order, contiguous offsets, each segment's samples from its own "
            f"sentence. {repeats} runs per configuration ({sequential_repeats} for "
            "max_inflight_segments=1), round-robin; median ± spread."
        ),
        header=(
            "system",
            "time to last audio byte",
            "ideal",
            "vs ideal",
            f"vs {LATENCY_MS} ms alone",
            "vs sequential",
            "syntheses started within",
        ),
    )
    for key, run_set in runs.items():
        system = "ref" if key.startswith("ref") else "vox"
        streaming_row = key.endswith("_stream")
        value = median(run_set.times)
        section.rows.append(
            (
                run_set.label,
                f"{value * 1000:.1f} ± {spread(run_set.times) * 1000:.1f} ms",
                "" if streaming_row else f"{ideal[system] * 1000:.1f} ms",
                "" if streaming_row else f"{value / ideal[system]:.3f}x",
                "" if streaming_row else f"{value / latency:.3f}x",
                "" if streaming_row else f"{value / sequential[system]:.3f}x",
                f"{median(run_set.start_spreads) * 1000:.2f} ms",
            )
        )
    ratio = median(runs["vox10"].times) / ideal["vox"]
    section.goals.append(
        Goal(
            "ten-segment turn, max_inflight_segments >= 10: last audio <= 1.05x the ideal",
            f"{ratio:.3f}x ({median(runs['vox10'].times) * 1000:.1f} ms vs "
            f"{ideal['vox'] * 1000:.1f} ms ideal; {median(runs['vox10'].times) / latency:.3f}x "
            f"{LATENCY_MS} ms alone)",
            ratio <= 1.05,
        )
    )
    section.notes += [
        f"Sequential synthesis would take {sequential['vox'] * 1000:.0f} ms (voxrelay) and "
        f"{sequential['ref'] * 1000:.0f} ms (reference); the measured max_inflight_segments=1 "
        "run shows what voxrelay does when told to synthesize one segment at a time.",
        "Against a bare 200 ms + the reference's streaming part, voxrelay's turn takes "
        f"{median(runs['vox10'].times) / ideal['ref']:.3f}x; the difference is its gRPC "
        "transport of the turn's requests and audio messages.",
        f"1-minute load average {load_before:.2f} before, {load_after:.2f} after, on "
        f"{os.cpu_count()} cores.",
    ]
    return section
