"""Time to first audio through the voice-agent frameworks, with voxrelay and without.

One function per framework, each returning its rows of the section's table (LiveKit's
adapter has a section of its own, bench/adapters_livekit.py): for each voice, a reply
of two sentences is handed to the framework all at once, as an LLM's tokens, and the
time to the first audio the framework gives out is measured three ways, turn by turn
in alternation (each going first in turn) against one `voxrelay serve` process
(default settings, piper and espeak loaded):

- the framework's own path for a local voice, where it has one: openai-agents'
  in-process `StreamedAudioResult` with a `TTSModel` running the same piper voice
  (`PiperVoice`, bench/reference.py's driving, bench/voice_agent.py's model); Pipecat's
  own `PiperTTSService` with the same bundled voice file (nothing downloaded);
- the framework through voxrelay's adapter (`VoxrelayTTSModel` in the same
  `StreamedAudioResult`; `VoxrelayTTSService` in the same kind of pipeline);
- voxrelay's Python client directly (`synthesize_events` of the reply), the floor the
  adapter adds to.

Neither framework has an espeak-ng voice of its own, so espeak's rows compare the
framework through voxrelay with the client only.

`python -m bench.adapters [--quick]` runs it alone; the suite runs it as a section.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.real_voice import ESPEAK, PIPER, SENTENCES
from bench.reference import reference_result
from bench.report import Section, median, percentile, run_alone
from bench.servers import start_server_process, stop_server_process
from bench.ttfa import ReferenceConsumer
from voxrelay import AsyncClient, Audio, SessionOptions
from voxrelay_server.engines.piper_engine import bundled_joe_voice

TURNS, QUICK_TURNS = 16, 4
WARMUP = 2
"""Turns each way before the measured ones: piper's first runs are slow."""

Row = Sequence[str]
Measure = Callable[[str], Awaitable[float]]


@dataclass
class Ways:
    """One voice's first-audio times (seconds), each way measured."""

    voice: str
    times: dict[str, list[float]] = field(default_factory=dict)

    def p50(self, way: str) -> float:
        return median(self.times[way])

    def cell(self, way: str) -> str:
        if way not in self.times:
            return "none"
        values = self.times[way]
        return f"{median(values) * 1000:.0f} / {percentile(values, 90) * 1000:.0f}"


OWN, ADAPTER, DIRECT = "own", "adapter", "direct"


def replies(turns: int) -> list[str]:
    """Two sentences a reply, all different."""
    return [
        f"{SENTENCES[i % len(SENTENCES)]} {SENTENCES[(i + 1) % len(SENTENCES)]} "
        for i in range(turns + WARMUP)
    ]


def tokens(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


async def alternate(ways: dict[str, Measure], texts: Sequence[str], voice: str) -> Ways:
    """Every way on every text, the ways taking turns going first; warm-up not kept."""
    result = Ways(voice, {name: [] for name in ways})
    names = list(ways)
    for turn, text in enumerate(texts):
        order = names[turn % len(names) :] + names[: turn % len(names)]
        for name in order:
            first = await ways[name](text)
            if turn >= WARMUP:
                result.times[name].append(first)
    return result


def direct_way(client: AsyncClient, voice: str) -> Measure:
    """voxrelay's client alone: a `Synthesize` call of the reply to its first audio."""

    async def first_audio(text: str) -> float:
        started = time.perf_counter()
        first = None
        async for event in client.synthesize_events(text, SessionOptions(voice)):
            if isinstance(event, Audio) and first is None:
                first = time.perf_counter() - started
        assert first is not None, f"no audio for {text!r}"
        return first

    return first_audio


# openai-agents


async def openai_agents_rows(target: str, quick: bool) -> list[Row]:
    """`StreamedAudioResult` fed a reply's tokens as `VoicePipeline` feeds them."""
    from piper import PiperVoice

    from bench.voice_agent import PiperTTSModel
    from voxrelay.adapters.openai_agents import VoxrelayTTSModel

    model, config = bundled_joe_voice()
    own = PiperTTSModel(PiperVoice.load(model, config_path=config))
    texts = replies(QUICK_TURNS if quick else TURNS)
    results = []
    async with AsyncClient(target) as client:
        for voice in (PIPER, ESPEAK):
            # The voice's native rate, as the in-process model gives it.
            adapter = VoxrelayTTSModel(client=client, options=SessionOptions(voice))
            consumers = {OWN: ReferenceConsumer(reference_result(own))} if voice == PIPER else {}
            consumers[ADAPTER] = ReferenceConsumer(reference_result(adapter))

            def through(consumer: ReferenceConsumer) -> Measure:
                async def first_audio(text: str) -> float:
                    audio, lifecycle = consumer.mark()
                    started = time.perf_counter()
                    for token in tokens(text):
                        await consumer.result._add_text(token)
                    await consumer.result._turn_done()  # type: ignore[no-untyped-call]
                    first = await consumer.wait_audio(audio)
                    await consumer.wait_lifecycle("turn_ended", lifecycle)
                    return first - started

                return first_audio

            ways = {name: through(consumer) for name, consumer in consumers.items()}
            ways[DIRECT] = direct_way(client, voice)
            results.append(await alternate(ways, texts, voice))
            for consumer in consumers.values():
                await consumer.result._done()  # type: ignore[no-untyped-call]
                await consumer.task
            print(f"   openai-agents {voice}: done", file=sys.stderr, flush=True)
    return rows("openai-agents", "`StreamedAudioResult` + in-process piper `TTSModel`", results)


# Pipecat


async def pipecat_rows(target: str, quick: bool) -> list[Row]:
    """A pipeline of the TTS service and a tap, fed an LLM response's frames."""
    from pipecat.frames.frames import (
        Frame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.tts_service import TTSService
    from pipecat.workers.runner import WorkerRunner

    from voxrelay.adapters.pipecat import VoxrelayTTSService

    class Tap(FrameProcessor):
        """Times the first audio of a response and notes its end."""

        def __init__(self) -> None:
            super().__init__()
            self.first: float | None = None
            self.got_audio = asyncio.Event()
            self.stopped = asyncio.Event()

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame) and self.first is None:
                self.first = time.perf_counter()
                self.got_audio.set()
            elif isinstance(frame, TTSStoppedFrame):
                self.stopped.set()
            await self.push_frame(frame, direction)

    class Running:
        def __init__(self, tts: TTSService) -> None:
            self.tap = Tap()
            self.worker = PipelineWorker(
                Pipeline([tts, self.tap]),
                # A 22050 Hz output: piper's own rate, so neither side resamples it.
                params=PipelineParams(audio_out_sample_rate=22050),
                cancel_on_idle_timeout=False,
            )
            self.runner = WorkerRunner(handle_sigint=False)
            self.task: asyncio.Task[None] | None = None

        async def start(self) -> None:
            started = asyncio.Event()

            @self.worker.event_handler("on_pipeline_started")  # type: ignore[untyped-decorator]
            async def on_started(_: object, __: object) -> None:
                started.set()

            await self.runner.add_workers(self.worker)
            self.task = asyncio.create_task(self.runner.run())
            await asyncio.wait_for(started.wait(), 60)

        async def first_audio(self, text: str) -> float:
            tap = self.tap
            tap.first = None
            tap.got_audio.clear()
            tap.stopped.clear()
            frames = [
                LLMFullResponseStartFrame(),
                *(LLMTextFrame(t) for t in tokens(text)),
                LLMFullResponseEndFrame(),
            ]
            started = time.perf_counter()
            await self.worker.queue_frames(frames)
            await asyncio.wait_for(tap.got_audio.wait(), 60)
            await asyncio.wait_for(tap.stopped.wait(), 60)
            assert tap.first is not None
            return tap.first - started

        async def stop(self) -> None:
            await self.worker.cancel()
            if self.task is not None:
                await self.task

    model, config = bundled_joe_voice()
    texts = replies(QUICK_TURNS if quick else TURNS)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        # PiperTTSService loads `<voice>.onnx` (and its .json) from its folder, or
        # downloads it: the bundled files, linked under the names it looks for.
        voices = Path(folder)
        (voices / "en_US-joe-medium.onnx").symlink_to(model)
        (voices / "en_US-joe-medium.onnx.json").symlink_to(config)
        async with AsyncClient(target) as client:
            for voice in (PIPER, ESPEAK):
                pipelines = {}
                if voice == PIPER:
                    pipelines[OWN] = Running(
                        PiperTTSService(
                            settings=PiperTTSService.Settings(voice="en_US-joe-medium"),
                            download_dir=voices,
                        )
                    )
                # As made, not the service's real-time default: the first audio is the
                # same, and a turn's end then comes without waiting its audio's length.
                adapter = VoxrelayTTSService(
                    client=client, voice=voice, options=SessionOptions(pace="as_made")
                )
                pipelines[ADAPTER] = Running(adapter)
                for running in pipelines.values():
                    await running.start()
                ways: dict[str, Measure] = {
                    name: running.first_audio for name, running in pipelines.items()
                }
                ways[DIRECT] = direct_way(client, voice)
                try:
                    results.append(await alternate(ways, texts, voice))
                finally:
                    for running in pipelines.values():
                        await running.stop()
                print(f"   pipecat {voice}: done", file=sys.stderr, flush=True)
    return rows("Pipecat", "`PiperTTSService` (in-process piper)", results)


def rows(framework: str, own: str, results: Sequence[Ways]) -> list[Row]:
    table: list[Row] = []
    for ways in results:
        has_own = OWN in ways.times
        table.append(
            (
                framework,
                ways.voice,
                f"{own}: {ways.cell(OWN)}" if has_own else "none for this voice",
                ways.cell(ADAPTER),
                f"{ways.p50(ADAPTER) / ways.p50(OWN):.2f}" if has_own else "",
                ways.cell(DIRECT),
                f"{ways.p50(ADAPTER) / ways.p50(DIRECT):.2f}",
            )
        )
    return table


FRAMEWORKS: tuple[Callable[[str, bool], Awaitable[list[Row]]], ...] = (
    openai_agents_rows,
    pipecat_rows,
)
"""One function per framework: (server target, quick) -> its rows."""


async def run(quick: bool) -> Section:
    server = await asyncio.to_thread(start_server_process, ["--engines", "piper,espeak"])
    table: list[Row] = []
    try:
        for framework in FRAMEWORKS:
            table += await framework(server.target, quick)
    finally:
        await asyncio.to_thread(stop_server_process, server)
    turns = QUICK_TURNS if quick else TURNS
    return Section(
        title="Framework adapters: first audio through openai-agents and Pipecat",
        method=(
            f"{turns} replies of two sentences per voice (after {WARMUP} warm-up replies), "
            "each handed to the framework at once as an LLM's tokens; the time from the "
            "first token to the first audio the framework gives out (openai-agents: the "
            "first audio event of `StreamedAudioResult.stream()`, fed as `VoicePipeline` "
            "feeds it; Pipecat: the first `TTSAudioRawFrame` after the TTS service, in a "
            "pipeline fed `LLMFullResponseStartFrame`, `LLMTextFrame`s and "
            "`LLMFullResponseEndFrame`). Beside it, in the same run, turn by turn in "
            "alternation: the framework's own path for the same piper voice in-process, "
            "and voxrelay's Python client alone (`synthesize_events` of the reply). One "
            "`voxrelay serve` process (default settings, piper and espeak loaded), loopback."
        ),
        header=(
            "framework",
            "voice",
            "framework's own path p50 / p90 (ms)",
            "framework + voxrelay p50 / p90 (ms)",
            "ratio to own",
            "voxrelay client p50 / p90 (ms)",
            "ratio to client",
        ),
        rows=table,
        notes=[
            "openai-agents' splitter hands `run()` a chunk only once the next sentence "
            "has begun, so both openai-agents paths wait for the first sentence whole; "
            "voxrelay then cuts that chunk again and streams its first clause's audio.",
            "The adapter's Pipecat service sends text token by token on one `Stream` "
            "(voxrelay segments it); Pipecat's `PiperTTSService` aggregates sentences and "
            "synthesizes each in-process.",
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run, argv, prog="python -m bench.adapters", description=__doc__, quick_help="fewer replies"
    )


if __name__ == "__main__":
    sys.exit(main())
