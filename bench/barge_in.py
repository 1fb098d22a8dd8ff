"""Barge-in: how fast `cancel` ends a speaking turn, and how much synthesis runs on after it.

A turn of six sentences is sent to a `tone` engine that speaks in real time
(realtime_factor 1.0, 50 ms first-audio latency, 10 ms of audio per character,
so each segment takes about 0.45 s to synthesize). Once the first audio has
played for `SPEAKING_S`, the client sends `cancel` and times the cancelled
TURN_ENDED; the engine records when each segment's synthesis stopped, so the
synthesis time spent after the cancel is summed directly.

The reference (`StreamedAudioResult`) is driven as VoicePipeline drives it: a
producer task adds the text and awaits `_turn_done()`; barge-in cancels that
task, whose handler awaits `_cancel()` (as VoicePipeline's does), and the
reference then ends its stream with `session_ended`.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from bench.reference import reference_result
from bench.report import Goal, Section, median, percentile, spread
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
from voxrelay_server.engines.tone import VOICE_NAME

FIRST_AUDIO_MS = 50
MS_PER_CHAR = 10.0
SENTENCES = (
    "The first sentence is being spoken right now.",
    "A second sentence waits for its turn to play.",
    "The third one is already being synthesized.",
    "A fourth sentence fills the last free slot.",
    "The fifth sentence is queued behind them all.",
    "And the sixth one should never be spoken at all.",
)
SEGMENT_S = FIRST_AUDIO_MS / 1000 + max(map(len, SENTENCES)) * MS_PER_CHAR / 1000
"""One segment's whole synthesis at realtime_factor 1: latency plus its audio."""
SPEAKING_S = 0.1
"""How long the first segment has been playing when the caller barges in."""
REPEATS_FULL, REPEATS_QUICK = 100, 15
WARMUP = 2
TIMEOUT_S = 10.0


@dataclass
class Interruption:
    """One barge-in (seconds, from the moment the cancel was sent)."""

    ended: float
    """To the cancelled TURN_ENDED (voxrelay) or `session_ended` (reference)."""
    idle: float
    """To the last synthesis stopping."""
    synthesis_after: float
    """Synthesis time spent after the cancel, summed over segments."""
    running: int
    """Segments synthesizing when the cancel was sent."""
    started_after: int
    """Segments whose synthesis started after the cancel."""
    audio_after: float
    """Seconds of audio the engine still produced after the cancel, over all segments."""
    cpu: float
    """CPU time this process (all threads) used from the cancel to the end event."""
    preempted: int
    """Involuntary context switches in that window: other processes took the CPU."""


@dataclass
class Side:
    name: str
    runs: list[Interruption] = field(default_factory=list)

    def values(self, what: str) -> list[float]:
        return [float(getattr(run, what)) for run in self.runs]


def _interruption(
    records: Sequence[SynthesisRecord],
    cancelled_at: float,
    ended_at: float,
    usage: resource.struct_rusage,
    usage_at_end: resource.struct_rusage,
) -> Interruption:
    """What the engine records say about one barge-in."""
    now = time.perf_counter()
    spans = [(r.started, r.stopped if r.stopped is not None else now) for r in records]
    after = sum(max(0.0, stop - max(start, cancelled_at)) for start, stop in spans)
    running = sum(1 for start, stop in spans if start < cancelled_at < stop)
    started_after = sum(1 for start, _ in spans if start >= cancelled_at)
    last_stop = max((stop for _, stop in spans), default=cancelled_at)
    return Interruption(
        ended=ended_at - cancelled_at,
        idle=last_stop - cancelled_at,
        synthesis_after=after,
        running=running,
        started_after=started_after,
        audio_after=sum(r.audio_after(cancelled_at) for r in records),
        cpu=usage_at_end.ru_utime + usage_at_end.ru_stime - usage.ru_utime - usage.ru_stime,
        preempted=usage_at_end.ru_nivcsw - usage.ru_nivcsw,
    )


async def voxrelay_barge_in(session: RawSession, engine: TimedToneEngine) -> Interruption:
    """Speak a turn, cancel it while it speaks, time the cancelled TURN_ENDED."""
    first_audio = asyncio.Event()
    turn_ended: list[tuple[float, Response]] = []

    async def read_turn() -> None:
        while True:
            response = await session.read()
            if response.WhichOneof("response") == "audio":
                first_audio.set()
            if is_lifecycle(response, TURN_ENDED):
                turn_ended.append((time.perf_counter(), response))
                return

    calls = len(engine.records)
    reader = asyncio.create_task(read_turn())
    for sentence in SENTENCES:
        await session.send_text(sentence + " ")
    await session.turn_done()
    await asyncio.wait_for(first_audio.wait(), TIMEOUT_S)
    await asyncio.sleep(SPEAKING_S)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cancelled_at = time.perf_counter()
    await session.cancel()
    await asyncio.wait_for(reader, TIMEOUT_S)
    usage_at_end = resource.getrusage(resource.RUSAGE_SELF)
    ended_at, response = turn_ended[0]
    if not response.lifecycle.cancelled:
        raise RuntimeError("the turn ended normally: the cancel came too late")
    await asyncio.wait_for(engine.idle.wait(), TIMEOUT_S)
    return _interruption(engine.records[calls:], cancelled_at, ended_at, usage, usage_at_end)


async def reference_barge_in(model: TimedLatencyModel) -> Interruption:
    """The same turn through the reference; barge-in cancels its producer task."""
    result = reference_result(model)
    consumer = ReferenceConsumer(result)

    async def produce() -> None:
        try:
            for sentence in SENTENCES:
                await result._add_text(sentence + " ")
            await result._turn_done()  # type: ignore[no-untyped-call]
            await result._done()  # type: ignore[no-untyped-call]
        except asyncio.CancelledError:
            await result._cancel()
            raise

    calls = len(model.records)
    producer = asyncio.create_task(produce())
    result._set_task(producer)
    await asyncio.wait_for(consumer.wait_audio(0), TIMEOUT_S)
    await asyncio.sleep(SPEAKING_S)
    _, lifecycle = consumer.mark()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cancelled_at = time.perf_counter()
    producer.cancel()
    ended_at = await asyncio.wait_for(
        consumer.wait_lifecycle("session_ended", lifecycle), TIMEOUT_S
    )
    usage_at_end = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(producer, return_exceptions=True)
    await asyncio.gather(consumer.task, return_exceptions=True)
    records = model.records[calls:]
    if any(record.stopped is None for record in records):
        raise RuntimeError("a reference synthesis is still running after its session ended")
    return _interruption(records, cancelled_at, ended_at, usage, usage_at_end)


def _slow_interruptions(sides: Sequence[Side], threshold: float = 0.010) -> str:
    """Where the tails come from: slow barge-ins, and whether the process was computing."""
    parts = []
    for side in sides:
        slow = [run for run in side.runs if run.ended > threshold]
        if not slow:
            parts.append(f"{side.name} 0 of {len(side.runs)}")
            continue
        parts.append(
            f"{side.name} {len(slow)} of {len(side.runs)} (median "
            f"{_ms(median([run.ended for run in slow]))} ms to the end event with "
            f"{_ms(median([run.cpu for run in slow]))} ms of process CPU; "
            f"{sum(1 for run in slow if run.preempted)} preempted)"
        )
    return (
        f"Barge-ins slower than {threshold * 1000:g} ms: "
        + "; ".join(parts)
        + ". Little CPU and involuntary context switches mean the time went to other "
        "processes on the machine."
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


async def run(quick: bool) -> Section:
    """Barge in on a speaking turn, repeatedly, on voxrelay and on the reference."""
    repeats = REPEATS_QUICK if quick else REPEATS_FULL
    load_before = os.getloadavg()[0]
    engine = TimedToneEngine(
        first_audio_ms=FIRST_AUDIO_MS, ms_per_char=MS_PER_CHAR, realtime_factor=1.0
    )
    model = TimedLatencyModel(FIRST_AUDIO_MS / 1000, ms_per_char=MS_PER_CHAR, realtime_factor=1.0)
    voxrelay, reference = Side("voxrelay"), Side("reference")
    async with (
        in_process_server([engine], VOICE_NAME) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        session = await RawSession.open(channel)
        for index in range(WARMUP + repeats):
            # Alternating, so both see the same machine.
            measured = (
                await voxrelay_barge_in(session, engine),
                await reference_barge_in(model),
            )
            if index >= WARMUP:
                voxrelay.runs.append(measured[0])
                reference.runs.append(measured[1])
        await session.close()
    load_after = os.getloadavg()[0]

    section = Section(
        title="Barge-in",
        method=(
            f"A turn of {len(SENTENCES)} sentences and `turn_done` is sent to an engine that "
            f"speaks in real time (`tone` / `LatencyTTSModel`: {FIRST_AUDIO_MS} ms first-audio "
            f"latency, {MS_PER_CHAR:g} ms of audio per character at realtime_factor 1.0, so one "
            f"segment takes up to {SEGMENT_S * 1000:.0f} ms to synthesize). "
            f"{SPEAKING_S * 1000:.0f} ms after the first audio arrives the caller barges in. "
            "voxrelay (one session over gRPC on loopback, max_inflight_segments 4, so 4 "
            "segments synthesize and 2 wait): `cancel` is written and timed to the "
            "TURN_ENDED(cancelled) message at the client. Reference (in-process, no in-flight "
            "limit, so all 6 synthesize): its producer task, awaiting `_turn_done()` as "
            "VoicePipeline's does, is cancelled; its handler awaits `_cancel()`; timed to the "
            "`session_ended` event from `stream()` (the reference has no per-turn cancel: it "
            "ends the session). Both engines record when each synthesis stopped: *synthesis "
            "after the cancel* sums, over segments, the synthesis time past the cancel. "
            f"{repeats} barge-ins per side, alternating, after {WARMUP} warm-ups; "
            "times in ms, p50 ± spread."
        ),
        header=(
            "system",
            "to the end event p50",
            "p99",
            "max",
            "until synthesis stopped p50",
            "p99",
            "synthesis after the cancel p50",
            "p99",
            "max",
            "audio produced after the cancel p50 / max (ms of audio)",
            "syntheses running at the cancel",
            "started after it",
        ),
    )
    for side in (voxrelay, reference):
        ended, idle, after = (side.values(what) for what in ("ended", "idle", "synthesis_after"))
        audio = side.values("audio_after")
        section.rows.append(
            (
                side.name,
                f"{_ms(median(ended))} ± {_ms(spread(ended))}",
                _ms(percentile(ended, 99)),
                _ms(max(ended)),
                f"{_ms(median(idle))} ± {_ms(spread(idle))}",
                _ms(percentile(idle, 99)),
                f"{_ms(median(after))} ± {_ms(spread(after))}",
                _ms(percentile(after, 99)),
                _ms(max(after)),
                f"{_ms(median(audio))} / {_ms(max(audio))}",
                f"{median(side.values('running')):.0f}",
                f"{max(side.values('started_after')):.0f}",
            )
        )
    ended = voxrelay.values("ended")
    after = voxrelay.values("synthesis_after")
    started_after = max(voxrelay.values("started_after"))
    section.goals += [
        Goal(
            "cancelled TURN_ENDED within 10 ms of the cancel (p99)",
            f"p50 {_ms(median(ended))} ms, p99 {_ms(percentile(ended, 99))} ms, "
            f"max {_ms(max(ended))} ms",
            percentile(ended, 99) <= 0.010,
        ),
        Goal(
            "no more than one segment's synthesis after the cancel (p99; one segment: "
            f"{SEGMENT_S * 1000:.0f} ms)",
            f"p99 {_ms(percentile(after, 99))} ms, max {_ms(max(after))} ms summed over "
            f"segments; {started_after:.0f} started after it",
            percentile(after, 99) <= SEGMENT_S and started_after == 0,
        ),
    ]
    section.notes += [
        _slow_interruptions((voxrelay, reference)),
        "*synthesis after the cancel* is wall time during which a segment's synthesis was "
        "still open; *audio produced after the cancel* is the work it actually did then.",
        "The reference delivers audio its segments had already produced before its "
        "`session_ended` (it drains each segment's queue); voxrelay drops undelivered audio.",
        f"1-minute load average {load_before:.2f} before, {load_after:.2f} after, on "
        f"{os.cpu_count()} cores.",
    ]
    return section
